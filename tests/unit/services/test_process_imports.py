"""Each ``deepfactor run SERVICE`` process loads only the heavy libraries its own service needs:
torch for the signal service's checkpoint models, scikit-learn and cvxpy for the rebalancer's
risk model and optimiser (loaded when it starts, not when it is built), scipy for the risk
measures, pandas for reading files, ccxt for an exchange. Each costs tens to hundreds of MB of
resident memory in every process that imports it.

Each check runs in a fresh interpreter, because this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "sklearn", "cvxpy", "scipy", "pandas", "ccxt")

# What a consumer process does before it consumes: the CLI validates the config
# (services.commands.cli._validated_config), then builds its one service
# (services.runtime.standalone).
CONSUMER = """
import json, sys, tempfile
from pathlib import Path
from engine.bus import MemoryBus
from engine.config import load_config
from services.runtime.assembly import validate
from services.runtime.standalone import EventTimeClock, build_service

config = load_config(None, environ={{}})
validate(config)
service = build_service({name!r}, config, MemoryBus(), EventTimeClock(), Path(tempfile.mkdtemp()))
assert service.name == {name!r}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""

# The replay process (services.commands.cli._run_service,
# services.runtime.feed.run_market_data): validates, makes the synthetic market, and builds every
# service to learn their groups and topics.
MARKET_DATA = """
import json, sys
from datetime import UTC, datetime
from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import load_config
from engine.data.sources import SyntheticSource
from services.runtime.assembly import build_services, validate
import services.runtime.feed

config = load_config(None, environ={{}})
validate(config)
market = config.market
SyntheticSource(market.symbols, 30, seed=market.seed, start=market.start).panel()
clock = SimulatedClock(datetime(2020, 1, 1, tzinfo=UTC))
groups = [(s.name, s.topics) for s in build_services(config, MemoryBus(), clock).all()]
assert len(groups) == 5
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def imported_heavy_libraries(script: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", script.format(heavy=HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("service", "allowed"),
    [
        ("factor-update", set()),
        ("signal", set()),  # the default strategy, equal-weight: no checkpoint, no torch
        ("rebalance", {"scipy"}),  # the risk measures; the solvers load in start()
        ("execution", set()),
        ("recorder", set()),  # scipy loads when it first writes the summary
    ],
)
def test_a_service_process_loads_only_its_own_heavy_libraries(service, allowed):
    script = CONSUMER.replace("{name!r}", repr(service))
    assert imported_heavy_libraries(script) <= allowed


def test_the_replay_of_the_synthetic_market_loads_no_model_solver_file_reader_or_exchange():
    # scipy: the feed builds every service to learn their consumer groups (the rebalancer's
    # module imports the risk measures).
    assert imported_heavy_libraries(MARKET_DATA) <= {"scipy"}


def test_the_rebalancer_loads_its_solvers_when_it_starts_not_at_its_first_rebalance():
    script = CONSUMER.replace("{name!r}", repr("rebalance")).replace(
        "print(", "service.start()\nprint("
    )
    loaded = imported_heavy_libraries(script)
    assert {"sklearn", "cvxpy"} <= loaded and "torch" not in loaded
