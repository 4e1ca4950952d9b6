"""Market data as panels: file loading (long and wide shapes), a bundled real sample, and a
seeded synthetic market."""

from pathlib import Path

from engine.data.files import load_panel
from engine.data.panel import Panel
from engine.data.synthetic import synthetic_panel

SAMPLE_PATH = Path(__file__).parent / "sample" / "us_stocks_1d_2014-2024.csv.gz"


def sample_panel() -> Panel:
    """Return the bundled real sample: 19 US stocks, daily adjusted closes, 2014-2024."""
    return load_panel(SAMPLE_PATH)


__all__ = ["SAMPLE_PATH", "Panel", "load_panel", "sample_panel", "synthetic_panel"]
