"""The pictures of ``deepfactor report``: each a matplotlib figure rendered to PNG bytes.

Figures are built with matplotlib's object API (``Figure``, drawn by the Agg canvas), never
pyplot: no global figure registry to leak memory, no GUI backend picked from the environment.
Each function takes plain pandas series on a UTC time index and returns the PNG; the page
embeds it as a base64 ``data:`` URI (``img_tag``), so the report is one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterator

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

WIDTH_INCHES = 10.0
DPI = 100  # 1000 pixels wide: readable on a laptop screen without scaling
RUN_COLOUR = "#1f4e79"
BENCHMARK_COLOUR = "#8c8c8c"
LOSS_COLOUR = "#b22222"
STOP_SHADE = "#f2c14e"


def _figure(height: float, rows: int = 1, ratios: list[float] | None = None) -> Figure:
    figure = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.subplots(rows, 1, sharex=True, height_ratios=ratios, squeeze=False)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _times(index: pd.Index) -> np.ndarray:
    # matplotlib's date numbers of a UTC index (tz-aware datetimes draw the same, more slowly).
    return mdates.date2num(pd.DatetimeIndex(index).tz_convert(None).to_pydatetime())


def _date_axis(axes: Axes) -> None:
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _spans(flags: pd.Series) -> Iterator[tuple[float, float]]:
    """The (start, end) date numbers of each run of True in ``flags``; a run ends at the next
    bar's time, or at its own last bar at the end."""
    times = _times(flags.index)
    values = flags.to_numpy(dtype=bool)
    edges = np.diff(np.concatenate([[0], values.astype(int), [0]]))
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        yield times[start], times[min(stop, len(times) - 1)]


def _thousands(value: float, _position: int) -> str:
    return f"{value:,.0f}"


def equity_chart(equity: pd.Series, benchmark: pd.Series | None) -> bytes:
    """The run's equity against the equal-weight universe's, both from the initial equity."""
    figure = _figure(3.6)
    axes = figure.axes[0]
    axes.plot(_times(equity.index), equity.to_numpy(), color=RUN_COLOUR, lw=1.4, label="run")
    if benchmark is None:
        axes.set_title("Equity (no prices recorded: no equal-weight universe to compare)")
    else:
        axes.plot(
            _times(benchmark.index),
            benchmark.to_numpy(),
            color=BENCHMARK_COLOUR,
            lw=1.2,
            label="equal-weight universe",
        )
        axes.set_title("Equity against the equal-weight universe (same initial equity)")
        axes.legend(loc="upper left", frameon=False)
    axes.yaxis.set_major_formatter(FuncFormatter(_thousands))
    axes.grid(alpha=0.3)
    _date_axis(axes)
    return _png(figure)


def drawdown_chart(
    underwater: pd.Series,
    stop: float | None,
    stopped: pd.Series | None,
    measured: pd.Series | None = None,
) -> bytes:
    """Drawdown below the running peak, the stop level, the bars the stop held the book, and
    (``measured``) the drawdown the stop measures, from its peak since the last re-entry."""
    figure = _figure(3.2)
    axes = figure.axes[0]
    times = _times(underwater.index)
    axes.fill_between(times, -underwater.to_numpy(), 0.0, color=LOSS_COLOUR, alpha=0.35, lw=0)
    axes.plot(
        times, -underwater.to_numpy(), color=LOSS_COLOUR, lw=1.0, label="from the running peak"
    )
    if measured is not None:
        axes.plot(
            _times(measured.index),
            -measured.to_numpy(),
            color="black",
            lw=0.7,
            label="from the peak since re-entry",
        )
    title = "Drawdown"
    if stop is not None:
        axes.axhline(-stop, color="black", ls="--", lw=1.0, label=f"drawdown stop {stop:.0%}")
        title += f" and the stop at {stop:.0%}"
    else:
        title += " (drawdown stop off)"
    if stopped is not None and stopped.any():
        for index, (start, end) in enumerate(_spans(stopped)):
            axes.axvspan(
                start,
                end,
                color=STOP_SHADE,
                alpha=0.4,
                lw=0,
                label="the stop held the book" if not index else None,
            )
    axes.set_title(title)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    low = max(float(underwater.max()), stop or 0.0)
    axes.set_ylim(-1.15 * low if low > 0 else -0.01, 0.0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes.grid(alpha=0.3)
    _date_axis(axes)
    return _png(figure)


def var_chart(check: pd.DataFrame, title: str) -> bytes:
    """Realised loss per bar (a gain is a negative loss), the VaR forecast it is checked
    against, and the breaches as red dots; ``check`` is ``VarCheck.frame``."""
    figure = _figure(3.4)
    axes = figure.axes[0]
    times = _times(check.index)
    loss = check["loss"].to_numpy(dtype=float)
    axes.vlines(times, 0.0, np.nan_to_num(loss), color=BENCHMARK_COLOUR, lw=0.8, label="loss")
    axes.plot(times, check["var"].to_numpy(dtype=float), color=RUN_COLOUR, lw=1.2, label="VaR")
    breach = check["breach"].to_numpy(dtype=bool)
    axes.scatter(times[breach], loss[breach], color=LOSS_COLOUR, s=18, zorder=3, label="breach")
    axes.axhline(0.0, color="black", lw=0.6)
    axes.set_title(title)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    axes.legend(loc="upper left", frameon=False, ncols=3)
    axes.grid(alpha=0.3)
    _date_axis(axes)
    return _png(figure)


def weights_heatmap(weights: pd.DataFrame, signals: pd.DataFrame, title: str) -> bytes:
    """Factor weights over time, one row per factor, each signal's weights in force until the
    next. A strip above marks the signals that were a fallback, not the model's; a dashed
    line marks each change of the model's version (a retrained model made active)."""
    figure = _figure(1.4 + 0.3 * weights.shape[1], rows=2, ratios=[1, max(3, weights.shape[1])])
    strip, axes = figure.axes
    times = _times(weights.index)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    edges = np.concatenate([times, [times[-1] + step]])
    values = weights.to_numpy(dtype=float).T
    limit = float(np.abs(values).max()) or 1.0
    mesh = axes.pcolormesh(
        edges,
        np.arange(weights.shape[1] + 1),
        values,
        cmap="RdBu",
        vmin=-limit,
        vmax=limit,
        shading="flat",
    )
    axes.set_yticks(np.arange(weights.shape[1]) + 0.5, labels=list(weights.columns), fontsize=8)
    axes.set_ylim(weights.shape[1], 0)  # the first factor on top
    figure.colorbar(mesh, ax=[strip, axes], label="weight", fraction=0.03, pad=0.01)
    served = signals.reindex(weights.index)
    fallback = served["fallback"].fillna(False).astype(bool).to_numpy(dtype=float)
    strip.fill_between(edges, 0.0, np.append(fallback, 0.0), step="post", color="#555555", lw=0)
    strip.set_yticks([0.5], labels=["fallback"], fontsize=8)
    strip.set_ylim(0, 1)
    strip.set_title(title)
    models = served.loc[~served["fallback"].fillna(False).astype(bool), "model"]
    changed = models.ne(models.shift()) & models.shift().notna()
    for time in _times(models.index[changed.to_numpy()]):
        axes.axvline(time, color="black", ls="--", lw=1.0)
    axes.set_xlim(edges[0], edges[-1])
    _date_axis(axes)
    return _png(figure)


def exposure_turnover_chart(gross: pd.Series, turnover: pd.Series, turnover_label: str) -> bytes:
    """Gross exposure (fraction of equity) above, turnover per bar below."""
    figure = _figure(4.4, rows=2, ratios=[1, 1])
    top, bottom = figure.axes
    times = _times(gross.index)
    top.fill_between(times, gross.to_numpy(), 0.0, color=RUN_COLOUR, alpha=0.25, lw=0)
    top.plot(times, gross.to_numpy(), color=RUN_COLOUR, lw=1.0)
    top.set_title("Gross exposure (fraction of equity)")
    top.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    top.set_ylim(bottom=0.0)
    top.grid(alpha=0.3)
    bottom.vlines(_times(turnover.index), 0.0, turnover.to_numpy(), color=RUN_COLOUR, lw=1.0)
    bottom.set_title(f"Turnover: {turnover_label}")
    bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    bottom.set_ylim(bottom=0.0)
    bottom.grid(alpha=0.3)
    _date_axis(bottom)
    return _png(figure)


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` itself, base64 in a data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
