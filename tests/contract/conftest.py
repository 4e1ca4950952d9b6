"""Every broker adapter runs the same contract: one venue fixture per adapter."""

from __future__ import annotations

import importlib

import pytest

from tests.contract.venue import Venue

VENUES = {
    "simulated": ("tests.contract.venue_simulated", "SimulatedVenue"),
    "ccxt": ("tests.contract.venue_ccxt", "CcxtVenue"),
}


@pytest.fixture(params=sorted(VENUES))
def venue(request) -> Venue:
    module, name = VENUES[request.param]
    return getattr(importlib.import_module(module), name)()
