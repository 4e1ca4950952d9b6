"""``deepfactor report --run DIR``: one HTML page of pictures of a backtest or a paper account,
and a plain-text summary table in the terminal.

The page is one self-contained file (PNGs embedded as base64, no script, no link out), so it
travels with the run. The command line imports this module to build its parser, so pandas and
matplotlib load only when the command runs (``services.commands.report_data``, ``report_figures``,
``report_charts``).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas and matplotlib load when the command runs, not with the parser
    from services.commands.report_data import RunRecord
    from services.commands.report_figures import Turnover, VarCheck

EXIT_OK = 0
EXIT_USAGE = (
    2  # as services/commands/cli.py: bad arguments or an unreadable run: nothing was written
)
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class Picture:
    """One picture of the page: its heading, the PNG (None: nothing to draw) and a caption."""

    heading: str
    png: bytes | None
    caption: str


def add_report_command(commands: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``deepfactor`` sub-commands ``commands``."""
    report = commands.add_parser(
        "report",
        help="an HTML page of pictures of a backtest or paper run, and its summary table",
        description="Read a run directory (a backtest's --out, or a paper account's directory) "
        "and write one HTML page with the pictures embedded: equity against the equal-weight "
        "universe, drawdown with the stop level, VaR against realised losses with the breaches, "
        "the factor weights the model chose over time, exposure and turnover. Prints a summary "
        "table.",
    )
    # dest: `run` holds the command's function, as for every command.
    report.add_argument(
        "--run", dest="run_dir", metavar="DIR", required=True, help="the run directory"
    )
    report.add_argument("--out", metavar="FILE", help=f"the page (default: DIR/{REPORT_FILE})")
    report.add_argument(
        "--json", action="store_true", help="print the summary figures as JSON, not a table"
    )
    report.set_defaults(run=run_report)


def run_report(arguments: argparse.Namespace) -> int:
    """Write the page and print the summary; return the exit code."""
    from engine.errors import DataError, UsageError
    from engine.logging import configure_logging

    configure_logging("report", "warning", "auto")
    run_dir = Path(arguments.run_dir)
    out = Path(arguments.out) if arguments.out else run_dir / REPORT_FILE
    try:
        figures = write_report(run_dir, out)
    except (DataError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(figures, indent=2) if arguments.json else summary_table(figures))
    return EXIT_OK


def write_report(run_dir: Path, out: Path) -> dict[str, Any]:
    """Load ``run_dir``, write its page to ``out`` and return the summary figures.

    Raises
    ------
    UsageError
        ``run_dir`` is not a run directory, or ``out`` cannot be written.
    DataError
        A file of the run is malformed; the message names it.
    """
    from engine.errors import UsageError
    from services.commands import report_figures as numbers
    from services.commands.preflight import check_output_file
    from services.commands.report_data import load_run

    record = load_run(run_dir)
    check_output_file(out, "--out")
    var = numbers.var_check(record)
    traded = numbers.turnover(record)
    figures = numbers.summary_figures(record, var, traded)
    figures["report"] = str(out)
    page = render_page(figures, _pictures(record, var, traded))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--out {out}: cannot be written ({error.strerror or error})") from None
    return figures


def _pictures(record: RunRecord, var: VarCheck, traded: Turnover) -> list[Picture]:
    from services.commands import report_charts as charts
    from services.commands import report_figures as numbers

    settings = record.risk_settings
    stop = numbers.stop_level(record)
    stopped = numbers.stopped(record)
    level = f"VaR {settings.var_confidence:.0%} over {settings.var_horizon} bar(s)"
    pictures = [
        Picture(
            "Equity",
            charts.equity_chart(record.equity["equity"], record.benchmark),
            "The run's equity at each bar's close. The equal-weight universe starts from the "
            "same equity and earns, each bar, the mean return of the assets priced on both bars."
            if record.benchmark is not None
            else "The run recorded no prices, so there is no equal-weight universe to compare.",
        ),
        Picture(
            "Drawdown",
            charts.drawdown_chart(
                numbers.underwater(record), stop, stopped, numbers.stop_drawdown(record, stopped)
            ),
            "Red: drawdown below the running peak of equity. The stop measures from the peak "
            "since its last re-entry (black, once the book has re-entered), so after a "
            "re-entry the red area can sink below the stop level without the stop acting."
            if stop is not None
            else "Drawdown below the running peak of equity. The run's drawdown stop was off "
            "([risk] drawdown_stop = 0 or enabled = false).",
        ),
        Picture(
            "VaR against realised losses",
            charts.var_chart(
                var.frame,
                f"Loss against {level}, "
                + ("risk model forecast" if var.source == "model" else "rolling historical")
                + f": {var.breaches} breaches in {var.checked} bars, "
                f"{var.expected_breaches:.1f} expected",
            ),
            f"Grey: each bar's loss over the last {var.horizon} bar(s) (below zero: a gain). "
            f"Blue: the VaR forecast made {var.horizon} bar(s) earlier, {var.describe()}; "
            "none where the book was flat (a forecast of 0). Red: a breach, a loss above the "
            "forecast made before it. A VaR that is right is breached on "
            f"{1 - var.confidence:.0%} of the bars it covers."
            + (
                ""
                if var.source == "model"
                else " The run recorded no forecast of its own (no expected_var in its "
                "snapshots), so the forecast is the equity's own trailing history."
            ),
        ),
        _heatmap(record),
        Picture(
            "Exposure and turnover",
            charts.exposure_turnover_chart(
                record.equity["gross_exposure"], traded.per_bar, traded.describe()
            ),
            "Gross exposure from equity.csv; turnover per bar "
            + (
                "from the fills: the notional traded on the bar over its equity."
                if traded.source == "fills"
                else "from the change of equity.csv's gross exposure, as the run recorded no "
                "fills: a proxy that misses trades swapping one asset for another and counts "
                "price drift as trading."
            ),
        ),
    ]
    return pictures


def _heatmap(record: RunRecord) -> Picture:
    from services.commands import report_charts as charts

    heading = "Factor weights chosen over time"
    if record.weights is None or record.weights.empty or record.weights.shape[1] == 0:
        return Picture(heading, None, "The run recorded no signal, so no factor weights.")
    signals = record.signals
    fallbacks = int(signals["fallback"].sum())
    models = list(dict.fromkeys(signals.loc[~signals["fallback"], "model"]))
    chosen = ", ".join(models) or "none (every signal was a fallback)"
    title = f"Factor weights by {chosen}; {fallbacks} of {len(signals)} signals a fallback"
    return Picture(
        heading,
        charts.weights_heatmap(record.weights, signals, title),
        "Each column is a signal: the weight of each factor in its scores (0: not used), in "
        "force until the next signal. Marked above: signals the model did not make (the "
        "trailing-IC fallback while the model warms up or cannot serve); dashed: a new "
        "model version.",
    )


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def table_rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary as (figure, run, equal-weight universe) rows, for the terminal and the page."""
    run, benchmark = figures["run"], figures["equal_weight"] or {}

    def both(name: str, show: Any) -> tuple[str, str]:
        return show(run[name]), show(benchmark[name]) if name in benchmark else ""

    var = figures["var_check"]
    model = str(figures["model"] or "n/a")
    if figures["signals"]:
        model += f" ({figures['fallback_signals']} of {figures['signals']} signals a fallback)"
    acted = figures["limits_acted"]
    stop = figures["drawdown_stop"]
    exposure = figures["gross_exposure"]
    per_year = figures["turnover_per_year"]
    orders = f"{figures['orders'] if figures['orders'] is not None else 'n/a'} / "
    orders += f"{figures['fills'] if figures['fills'] is not None else 'n/a'}"
    rows = [
        ("period", f"{figures['start']} .. {figures['end']}", ""),
        ("bars", str(figures["bars"]), ""),
        ("model", model, ""),
        ("final equity", *both("final_equity", lambda v: f"{v:,.2f}")),
        ("total return", *both("total_return", lambda v: _percent(v, signed=True))),
        ("CAGR", *both("cagr", lambda v: _percent(v, signed=True))),
        ("sharpe", *both("sharpe", lambda v: f"{v:.2f}")),
        ("max drawdown", *both("max_drawdown", _percent)),
        ("VaR 95", *both("var_95", _percent)),
        ("VaR 99", *both("var_99", _percent)),
        (
            "VaR breaches",
            f"{var['breaches']} in {var['bars_checked']} bars ({var['expected_breaches']:.1f} "
            f"expected at {var['confidence']:.0%}; "
            + ("risk model forecast)" if var["source"] == "model" else "rolling historical VaR)"),
            "",
        ),
        ("orders / fills", orders, ""),
        ("fees", "n/a" if figures["fees"] is None else f"{figures['fees']:,.2f}", ""),
        (
            "turnover",
            f"{figures['turnover']:.2f}x average equity"
            + ("" if per_year is None else f" ({per_year:.2f}x a year)"),
            "",
        ),
        ("gross exposure", f"average {exposure['average']:.0%}, max {exposure['max']:.0%}", ""),
        (
            "drawdown stop",
            "off" if stop is None else f"{stop:.0%}, acted {acted.get('drawdown_stop', 0)} time(s)",
            "",
        ),
        ("limits acted", ", ".join(f"{k} x{n}" for k, n in acted.items()) or "none", ""),
    ]
    return rows


def summary_table(figures: dict[str, Any]) -> str:
    """The summary as a plain-text table, ending with where the page was written."""
    rows = table_rows(figures)
    width = max([len(run) for _, run, benchmark in rows if benchmark] or [0])
    lines = [f"report {figures['run_dir']} ({figures['kind']})"]
    if figures["equal_weight"] is not None:
        lines.append(f"  {'':<15} {'run':<{width}}  equal-weight universe")
    for name, run, benchmark in rows:
        lines.append(f"  {name:<15} {run:<{width}}  {benchmark}".rstrip())
    lines.append(f"  {'written to':<15} {figures['report']}")
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1040px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.2em 1.2em 0.2em 0; border-bottom: 1px solid #e4e4e4; }
figure { margin: 0; } img { max-width: 100%; }
figcaption, .note { color: #555; font-size: 0.9em; }
"""


def render_page(figures: dict[str, Any], pictures: list[Picture]) -> str:
    """The report as one HTML document."""
    from services.commands.report_charts import img_tag

    escape = html.escape
    header = "<tr><th>figure</th><th>run</th>"
    header += "<th>equal-weight universe</th></tr>" if figures["equal_weight"] else "</tr>"
    cells = [
        f"<tr><td>{escape(name)}</td><td>{escape(run)}</td>"
        + (f"<td>{escape(benchmark)}</td></tr>" if figures["equal_weight"] else "</tr>")
        for name, run, benchmark in table_rows(figures)
    ]
    body = [
        f"<h1>deepfactor report: {escape(figures['run_dir'])}</h1>",
        f'<p class="note">A {escape(figures["kind"])} run, {figures["bars"]} bars from '
        f"{escape(figures['start'])} to {escape(figures['end'])}.</p>",
        "<h2>Summary</h2>",
        f"<table>{header}{''.join(cells)}</table>",
    ]
    for picture in pictures:
        body.append(f"<h2>{escape(picture.heading)}</h2>")
        if picture.png is None:
            body.append(f'<p class="note">{escape(picture.caption)}</p>')
        else:
            body.append(
                f"<figure>{img_tag(picture.png, picture.heading)}"
                f"<figcaption>{escape(picture.caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>deepfactor report: {escape(figures['run_dir'])}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
