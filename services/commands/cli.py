"""``deepfactor`` command line: parse, load config, call into services, return an exit code.

Heavy libraries (numpy, pandas, torch) are imported inside the commands that use them, so
start-up stays fast and ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from services.commands.cli_common import (  # noqa: F401  (the exit codes, re-exported for scripts)
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    STRATEGIES,
)
from services.commands.cli_models import (
    cmd_backtest,
    cmd_data_fetch,
    cmd_evaluate,
    cmd_factors_report,
    cmd_replay,
    cmd_retrain,
    cmd_train,
)
from services.commands.cli_operate import cmd_config_check, cmd_operator, cmd_tail
from services.commands.cli_run import cmd_paper, cmd_run, cmd_up


def _version() -> str:
    from engine.version import package_version

    return package_version()


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every ``deepfactor`` command."""
    parser = argparse.ArgumentParser(
        prog="deepfactor",
        description="Deep-learning multi-factor strategy under hard risk limits.",
    )
    parser.add_argument("--version", action="version", version=f"deepfactor {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    paper = commands.add_parser(
        "paper", help="paper-trade every service over Redis against the simulated broker"
    )
    paper.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    source = paper.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        metavar="F",
        help="replay this market-data file (default: the bundled real sample, "
        "19 US stocks, daily closes 2014-2024)",
    )
    source.add_argument(
        "--synthetic",
        action="store_true",
        help="replay the seeded synthetic market of [market] instead",
    )
    source.add_argument(
        "--exchange",
        metavar="ID",
        help="live: poll closed candles of --symbols from this ccxt exchange",
    )
    paper.add_argument("--symbols", metavar="A/B,C/D", help="live: the universe")
    paper.add_argument(
        "--live",
        action="store_true",
        help='with --exchange: trade real money through [broker] kind = "ccxt" (also needs '
        "sandbox = false, live_confirm = true; keys from DEEPFACTOR_EXCHANGE_API_KEY and "
        "DEEPFACTOR_EXCHANGE_SECRET)",
    )
    paper.add_argument("--timeframe", default="1m", metavar="TF", help="live: bar length (1m)")
    paper.add_argument(
        "--warmup-bars",
        type=int,
        default=300,
        metavar="N",
        help="live: closed bars fetched first so factor windows start full",
    )
    paper.add_argument(
        "--bars",
        type=int,
        metavar="N",
        help="the account's bars in all, restarts included (0: all)",
    )
    paper.add_argument("--speed", metavar="X|max", help="bars per second; 0 or max: no cap")
    paper.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (default: [run] run_dir); a directory of an earlier run continues "
        "its account",
    )
    paper.add_argument(
        "--fresh",
        action="store_true",
        help="start a new account in --out, deleting the one there",
    )
    paper.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis to use instead of a private server in the run directory",
    )
    paper.set_defaults(run=cmd_paper)

    run_command = commands.add_parser(
        "run",
        help="run one service of a paper account as its own process, over a shared Redis",
        description="Run one service in the foreground. The market-data process (the replay) "
        "opens or continues the paper account in --out; every other service waits for it and "
        "joins it. One active process per service and account: a second one of a consuming "
        "service is a hot standby that takes over when the first stops or dies (one "
        "market-data per run directory). signal is stateless: any number of its processes, "
        "each with its own --instance, share the inference load. SIGTERM or SIGINT finishes and "
        "commits the message in hand and exits 0, a second signal exits 130. The recorder "
        "writes summary.json and equity.csv into --out at the end of the data and when it stops.",
    )
    run_command.add_argument(
        "service",
        choices=("market-data", "factor-update", "signal", "rebalance", "execution", "recorder"),
        metavar="SERVICE",
        help="market-data (the replay), factor-update, signal, rebalance, execution or recorder",
    )
    run_command.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    run_command.add_argument(
        "--out",
        metavar="DIR",
        help="the account's run directory, shared by its processes (default: [run] run_dir)",
    )
    run_command.add_argument(
        "--redis-url", metavar="URL", help="the Redis every process of the account uses"
    )
    run_command.add_argument(
        "--instance",
        metavar="NAME",
        help="consumer name {service}-{NAME}, stable across restarts (default: [run] "
        "instance, else the host name)",
    )
    run_command.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the account (a consumer) or for every consumer group "
        "(market-data) before giving up (default 60)",
    )
    run_source = run_command.add_mutually_exclusive_group()
    run_source.add_argument(
        "--data", metavar="F", help="market-data: replay this file (default: the bundled sample)"
    )
    run_source.add_argument(
        "--synthetic", action="store_true", help="market-data: replay the synthetic market"
    )
    run_command.add_argument(
        "--bars",
        type=int,
        metavar="N",
        help="market-data: the account's bars in all, restarts included (0: all)",
    )
    run_command.add_argument(
        "--speed", metavar="X|max", help="market-data: bars per second; 0 or max: no cap"
    )
    run_command.add_argument(
        "--fresh",
        action="store_true",
        help="market-data: start a new account in --out, deleting the one there",
    )
    run_command.set_defaults(run=cmd_run)

    up = commands.add_parser(
        "up",
        help="start every service of a paper account as its own process and keep them running",
        description="Start each service of [supervisor] services as a `deepfactor run SERVICE` "
        "child over one Redis (the run directory's private server unless a URL is given), "
        "restart one that dies (with backoff; gives up after [supervisor] max_restarts within "
        "restart_window_s and stops all, exit 1), and stop them all cleanly on SIGTERM or "
        "Ctrl-C (a second signal kills them). The replay (market-data) exiting at the end of "
        "its data is not restarted; the other services run until stopped.",
    )
    up.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    up.add_argument(
        "--out", metavar="DIR", help="the account's run directory (default: [run] run_dir)"
    )
    up.add_argument("--redis-url", metavar="URL", help="a Redis instead of the private server")
    up.add_argument("--instance", metavar="NAME", help="consumer instance name (see `run`)")
    up.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds each service waits for the account or the consumer groups (default 60)",
    )
    up_source = up.add_mutually_exclusive_group()
    up_source.add_argument("--data", metavar="F", help="replay this file (default: the sample)")
    up_source.add_argument("--synthetic", action="store_true", help="replay the synthetic market")
    up.add_argument("--bars", type=int, metavar="N", help="the account's bars in all (0: all)")
    up.add_argument("--speed", metavar="X|max", help="bars per second; 0 or max: no cap")
    up.add_argument(
        "--fresh",
        action="store_true",
        help="start a new account in --out (the first start of the replay only)",
    )
    up.set_defaults(run=cmd_up)

    backtest = commands.add_parser(
        "backtest",
        help="run the services in one process on a data file; write summary.json, equity.csv "
        "and the files `report` reads",
    )
    backtest.add_argument(
        "--data",
        metavar="F",
        required=True,
        help="long OHLCV or wide close-only file (CSV, CSV.gz, Parquet)",
    )
    backtest.add_argument("--out", metavar="DIR", required=True)
    backtest.add_argument("--config", metavar="F")
    backtest.add_argument(
        "--strategy",
        metavar="NAME",
        default=None,
        help=f"signal model: {', '.join(STRATEGIES)} (default: [strategy] name); lstm, "
        "asset-lstm and ridge serve the active checkpoint of the registry",
    )
    backtest.add_argument(
        "--registry", metavar="DIR", help="model registry (default: [model] registry)"
    )
    backtest.set_defaults(run=cmd_backtest)

    evaluate = commands.add_parser(
        "evaluate",
        help="test the paper's claim: every strategy walk-forward, limits on and off, with "
        "statistical tests and regimes; write results.json, table.md and pictures",
        description="Replays the factor-weight LSTM, the asset LSTM, equal factor weights, "
        "trailing-IC weights, the linear baseline and the equal-weight universe through the "
        "services, each with the risk limits on and off, the LSTMs over several seeds, the "
        "models fitted walk-forward; compares them overall and per market regime and ends "
        "table.md with a one-sentence verdict. Same data, config and seeds give the same "
        "results.json, whatever --jobs or --executor.",
    )
    evaluate.add_argument(
        "--data", metavar="F", help="long OHLCV or wide close-only file (CSV, CSV.gz, Parquet)"
    )
    evaluate.add_argument(
        "--synthetic-regimes",
        action="store_true",
        help="instead of --data: a seeded synthetic market with known bull, bear and "
        "high-volatility spells (its true regimes are written beside the results)",
    )
    evaluate.add_argument(
        "--regimes",
        metavar="F",
        help="known regimes of --data (timestamp,regime CSV of bar close times; regime: bull, "
        "bear or high-volatility): figures are split by them too",
    )
    evaluate.add_argument("--out", metavar="DIR", required=True)
    evaluate.add_argument("--config", metavar="F")
    evaluate.add_argument("--seeds", type=int, default=3, metavar="N", help="LSTM seeds (3)")
    evaluate.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="worker processes (1: in this one)"
    )
    evaluate.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local process pool, or Ray (pip install 'deepfactor[ray]')",
    )
    evaluate.add_argument(
        "--ray-address", metavar="ADDR", help="a running Ray cluster (default: start one here)"
    )
    evaluate.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="training device"
    )
    evaluate.add_argument(
        "--strategies",
        metavar="LIST",
        help="comma-separated subset (lstm and one classical baseline at least)",
    )
    evaluate.add_argument(
        "--no-progress", action="store_true", help="progress as log lines, never a bar"
    )
    evaluate.set_defaults(run=cmd_evaluate)

    train = commands.add_parser(
        "train",
        help="train a signal model walk-forward on a data file and save a checkpoint",
        description="Walk-forward training: refits every [model] retrain_every periods and "
        "scores each fit on the periods after it, next to the baselines; then fits once more "
        "on all the data and saves the checkpoint in the registry (active when there is none "
        "or when it validates better). Writes train.json into --out.",
    )
    train_source = train.add_mutually_exclusive_group()
    train_source.add_argument("--data", metavar="F", help="data file (default: the bundled sample)")
    train_source.add_argument(
        "--synthetic", action="store_true", help="train on the synthetic market"
    )
    train.add_argument("--bars", type=int, metavar="N", help="use the first N bars (0: all)")
    train.add_argument("--out", metavar="DIR", required=True, help="where train.json goes")
    train.add_argument("--config", metavar="F")
    train.add_argument(
        "--model", default="lstm", choices=("lstm", "asset-lstm", "ridge"), help="what to train"
    )
    train.add_argument(
        "--baselines",
        default="trailing-ic,equal-weight,ridge",
        metavar="LIST",
        help="models scored next to it, comma-separated (default trailing-ic,equal-weight,ridge)",
    )
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: [model] device")
    train.add_argument("--registry", metavar="DIR", help="default: [model] registry")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=cmd_train, bars=None)

    retrain = commands.add_parser(
        "retrain",
        help="the periodic retraining worker: refit on a schedule, activate only a better model",
        description="On each fire (--cron or --interval, APScheduler) re-read the data, fit the "
        "model on every labelled period, save it, and make it active only if it beats the "
        "active one on the same validation periods; with --out and a Redis, tell that paper "
        "account's signal service to reload. --once: one retraining now, then exit.",
    )
    retrain_source = retrain.add_mutually_exclusive_group()
    retrain_source.add_argument("--data", metavar="F", help="data file (default: the sample)")
    retrain_source.add_argument("--synthetic", action="store_true", help="the synthetic market")
    retrain.add_argument("--bars", type=int, metavar="N", help="use the first N bars (0: all)")
    retrain.add_argument("--config", metavar="F")
    retrain.add_argument("--model", default="lstm", choices=("lstm", "asset-lstm", "ridge"))
    retrain_when = retrain.add_mutually_exclusive_group(required=True)
    retrain_when.add_argument("--cron", default="", metavar="EXPR", help="crontab (UTC)")
    retrain_when.add_argument("--interval", default="", metavar="N[smhdw]", help="e.g. 7d")
    retrain_when.add_argument("--once", action="store_true", help="retrain once now and exit")
    retrain.add_argument("--out", metavar="DIR", help="paper account to send the reload to")
    retrain.add_argument("--redis-url", metavar="URL", help="that account's Redis")
    retrain.add_argument("--registry", metavar="DIR", help="default: [model] registry")
    retrain.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="default: [model] device"
    )
    retrain.set_defaults(run=cmd_retrain)

    factors = commands.add_parser("factors", help="factor research")
    factor_commands = factors.add_subparsers(dest="factors_command", required=True)
    report = factor_commands.add_parser(
        "report", help="rank IC and long-short return of every factor on a data file"
    )
    report.add_argument("--data", metavar="F", required=True)
    report.add_argument("--out", metavar="DIR", required=True)
    report.add_argument(
        "--horizon",
        type=int,
        default=7,
        metavar="BARS",
        help="period length in bars: returns over the next period (default 7)",
    )
    report.add_argument("--quantiles", type=int, default=5, help="long-short quantiles (default 5)")
    report.set_defaults(run=cmd_factors_report)

    data = commands.add_parser("data", help="market data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download OHLCV history through ccxt")
    fetch.add_argument(
        "--exchange", required=True, metavar="ID", help="ccxt exchange id, e.g. binance"
    )
    fetch.add_argument("--symbols", required=True, metavar="A/B,C/D")
    fetch.add_argument("--timeframe", required=True, metavar="TF", help="e.g. 1h, 1d")
    fetch.add_argument(
        "--since", required=True, metavar="DATE", help="UTC date or time, e.g. 2024-01-01"
    )
    fetch.add_argument("--until", metavar="DATE", help="UTC end (default: now)")
    fetch.add_argument("--out", required=True, metavar="F", help=".parquet, .csv or .csv.gz")
    fetch.set_defaults(run=cmd_data_fetch)

    replay = commands.add_parser(
        "replay",
        help="run a paper run's recorded bars, ticks and controls through the services again "
        "and compare its orders, fills and final equity with the run's event log",
    )
    replay.add_argument(
        "run_dir", metavar="RUN_DIR", help="a paper run's directory (events.jsonl, config.json)"
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(run=cmd_replay)

    for name, help_text in (
        ("halt", "kill switch: stop every new order of a paper account (--flatten: close all)"),
        ("resume", "lift the kill switch of a paper account"),
        ("status", "show a paper account's equity, drawdown, VaR and kill switch"),
    ):
        operator = commands.add_parser(name, help=help_text, description=help_text)
        operator.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
        operator.add_argument(
            "--out", metavar="DIR", help="the account's run directory (default: [run] run_dir)"
        )
        operator.add_argument("--redis-url", metavar="URL", help="the account's Redis")
        if name == "halt":
            operator.add_argument(
                "--flatten",
                action="store_true",
                help="also close every position, with reduce-only orders",
            )
        if name in ("halt", "resume"):
            operator.add_argument("--reason", default="", help="why, kept with the flag and logged")
        else:
            operator.add_argument("--json", action="store_true", help="print JSON")
            operator.add_argument(
                "--service",
                metavar="NAME",
                help="exit 1 unless an instance of this service is alive (a healthcheck)",
            )
        operator.set_defaults(run=cmd_operator, command_name=name)

    tail = commands.add_parser(
        "tail",
        help="follow a paper account's event streams, one readable line per event",
        description="Print each new event of the account's streams as it is published (all "
        "topics but heartbeat unless named), until Ctrl-C. Reads without a consumer group: "
        "it takes nothing from the services.",
    )
    tail.add_argument(
        "topics",
        nargs="*",
        metavar="TOPIC",
        help="bars, factors, signals, schedule, targets, orders, order_updates, fills, "
        "portfolio, risk, control, heartbeat",
    )
    tail.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    tail.add_argument(
        "--out", metavar="DIR", help="the account's run directory (default: [run] run_dir)"
    )
    tail.add_argument("--redis-url", metavar="URL", help="the account's Redis")
    tail.add_argument(
        "--last", type=int, default=0, metavar="N", help="first show the N newest of each topic"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(run=cmd_tail)

    from services.commands.report import add_report_command

    add_report_command(commands)

    config = commands.add_parser("config", help="inspect configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate a config file with environment overrides and print the result"
    )
    check.add_argument("--config", metavar="FILE", help="TOML config file (defaults if omitted)")
    check.set_defaults(run=cmd_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    arguments = build_parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except BrokenPipeError:
        # The reader went away (`deepfactor tail | head`): end quietly, as a shell tool
        # killed by SIGPIPE would, and keep the interpreter's final flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
