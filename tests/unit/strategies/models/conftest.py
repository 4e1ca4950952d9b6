"""One torch thread for these tests.

The networks here are tiny (hidden 8-16): torch's intra-op thread pool only costs them
synchronisation, and on a loaded two-core machine it made one LSTM forward pass take 37 ms
instead of 0.23 ms. The previous setting comes back after each module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
