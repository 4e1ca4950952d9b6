"""Market data as panels: file loading (long and wide shapes) and a seeded synthetic market."""

from engine.data.panel import Panel
from engine.data.files import load_panel
from engine.data.synthetic import synthetic_panel

__all__ = ["Panel", "load_panel", "synthetic_panel"]
