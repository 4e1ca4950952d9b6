"""Market data as panels: file loading (long and wide shapes), a bundled real sample, and a
seeded synthetic market.

``load_panel`` (``engine.data.files``) is imported on first use, not with the package: it loads
pandas (about 85 MB resident), which a process that only handles bars (``engine.data.fill``,
``Panel``) does not need."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data.panel import Panel
from engine.data.synthetic import synthetic_panel

if TYPE_CHECKING:
    from engine.data.files import load_panel

SAMPLE_PATH = Path(__file__).parent / "sample" / "us_stocks_1d_2014-2024.csv.gz"


def sample_panel() -> Panel:
    """Return the bundled real sample: 19 US stocks, daily adjusted closes, 2014-2024."""
    from engine.data.files import load_panel

    return load_panel(SAMPLE_PATH)


def __getattr__(name: str) -> Any:
    if name == "load_panel":
        from engine.data.files import load_panel

        return load_panel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SAMPLE_PATH", "Panel", "load_panel", "sample_panel", "synthetic_panel"]
