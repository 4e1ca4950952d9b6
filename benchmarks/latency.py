"""Tick to order over Redis: a rebalance bar's BarSet to its OrderRequests, services as processes.

Set-up, per universe size N (20 and 500): the seeded synthetic market of N assets (daily bars,
``[market] symbols = N``), the product's default factors, optimiser (its risk model set
explicitly: ``RISK_MODEL``, ``RISK_FACTORS``) and risk limits, and the
``lstm`` signal (the paper's factor-weight LSTM) served from a model registry. The LSTM is first
trained with ``deepfactor train --synthetic`` on the history bars only (``[model] epochs`` cut to
``--epochs`` and one walk-forward window, to keep set-up short; the network served, lookback 20,
hidden 32, one layer, one inference thread, is the default one). Then every service runs as its
own process, as a deployment runs them: ``deepfactor run factor-update|signal|rebalance|
execution|recorder`` and the replay producer ``deepfactor run market-data --synthetic --speed
X``, all on one Redis (``--redis-url``; default ``REDIS_URL``, else a private server on a unix
socket).

Schedule: ``cron = "0 0 * 1-3 *"`` with the market starting ``--history-bars`` days before
2021-01-01, so the first ``--history-bars`` bars (factor warm-up, the LSTM's 20 snapshots, and
the rebalancer's 250-bar VaR window) pass with no tick, and from then on every daily bar is a
rebalance bar. The first ``--warmup`` rebalances are not counted (the first buys the whole book
and builds the cvxpy problem); then ``--samples`` rebalances that sent orders.

What is measured, per rebalance bar, from the streams after the processes stopped (a Redis entry
id is the server's clock at XADD, 1 ms resolution): the replay publishes the bar's BarSet, waits
until every consumer group has caught up (its back-pressure,
``services/runtime/quiescence.py``), and only then the bar's RebalanceDue. That wait sits between
the bar and the tick, so BarSet-to-order read off the streams includes it: factor-update and signal
are done by then, but the replay also
waits for execution and the recorder and polls every millisecond. A live feed has no such wait:
the scheduler's tick is due at the bar's close and waits at the rebalancer, which decides once it
holds the bar's Signal and no order is open (the previous rebalance's orders fill at this bar's
open: execution fills them on this BarSet, in parallel with factor-update and signal, and the
rebalancer books them and publishes its post-trade PortfolioSnapshot). So the figure reported is

    ready         = max(Signal XADD, last PortfolioSnapshot XADD of the bar before the tick)
    tick_to_order = (ready - BarSet XADD) + (OrderRequest XADD - RebalanceDue XADD)

the bar's path through factor-update and signal (LSTM inference), or through the fills if they
are booked later, then the rebalancer's read of the tick, decision (risk model, optimiser,
limits, order plan) and commit; the replay's wait (RebalanceDue - ready) is left out and
reported apart as ``replay_wait``, and ``bar_to_order_replay`` is the raw BarSet-to-order figure
with it. One sample per OrderRequest (the issue's "each OrderRequest"; the orders of one
rebalance are appended by one MULTI, so they share their time); ``tick_to_last_order`` has one
per rebalance. Each difference of two entry ids is off by less than 1 ms (two of them here: less
than 2 ms, zero on average).

Breakdown, per rebalance, means (they add up to the mean of ``tick_to_last_order``):
``factor_compute`` (FactorUpdateService.handle on the same BarSet events, timed in this process
after the run, on a quiet process: the compute part of the factor-update hop), ``lstm_inference``
(Signal.latency_ms, timed by the signal service), ``optimiser`` (``solve_ms`` of the
``rebalance.completed`` log line), ``risk_model_limits_orders`` (its ``ms`` less ``solve_ms``),
``fills_after_signal`` (ready - Signal: the rebalancer still booking this bar's fills when the
Signal came), and the three bus hops: each service's hop (XADD of its input to XADD of its
output) less the compute above: wake-up, XREADGROUP, decoding, the duplicate check, encoding and
the guarded commit (WATCH/EXISTS, then MULTI..EXEC). ``*_commit`` is the emit-to-XADD part of a
hop (event id time to entry id time). The Redis floor is the round trips a hop cannot avoid
(read, duplicate check, guard, MULTI/EXEC: 4) x 3 hops x the PING round trip measured here;
``compute_and_round_trip_floor_ms`` adds the compute on the path (factors, inference, decision):
what would be left with free hops and no fills to wait for.

Environment: the 1-minute load average before and after each size; the CPU time the machine
spent outside this benchmark's processes and Redis during each run (``/proc/stat`` less the
children's and Redis's CPU), as a share of the machine; stalls (this process's 20 ms sleep waking
over 250 ms late: a machine frozen or swamped), and the samples they overlap.

Targets (the issue): p50 under 10 ms for 20 assets and under 100 ms for 500 on this CPU.

Writes benchmarks/results/latency.json (``--out``). Share the machine? Run it under the lock the
other benchmarks take, e.g. ``flock LOCKFILE python benchmarks/latency.py``.

    python benchmarks/latency.py [--sizes 20 500] [--samples 40] [--warmup 3] [--speed 20]
        [--history-bars 274] [--epochs 5] [--redis-url URL] [--work DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402
import structlog  # noqa: E402

from engine.bus import EmbeddedRedis, MemoryBus  # noqa: E402
from engine.bus.keys import namespace_pattern, stream  # noqa: E402
from engine.clock import SimulatedClock  # noqa: E402
from engine.config import Config, PortfolioConfig, load_config  # noqa: E402
from engine.events import BarSet, decode, event_id_time_ms  # noqa: E402
from services.runtime.assembly import build_services  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latency.json"
SIZES = (20, 500)
TARGETS_MS = {20: 10.0, 500: 100.0}  # tick-to-order p50, from the issue
FIRST_TICK = date(2021, 1, 1)
# Daily from FIRST_TICK to the end of March: up to 90 rebalance bars. Cron has no year, so the
# history (from April 1st of the year before at the earliest) must lie outside those months.
CRON = "0 0 * 1-3 *"
MAX_TICKS = 90
MAX_HISTORY_BARS = (FIRST_TICK - date(FIRST_TICK.year - 1, 4, 1)).days
CONSUMERS = ("factor-update", "signal", "rebalance", "execution", "recorder")
INSTANCE = "latency"
HOPS = 3  # BarSet -> factor-update -> signal -> rebalance (-> orders)
ROUND_TRIPS_PER_HOP = 4  # XREADGROUP, ZMSCORE (duplicates), WATCH/EXISTS, MULTI..EXEC
STALL_S = 0.25
COMPUTE_PARTS = ("factor_compute", "lstm_inference", "optimiser", "risk_model_limits_orders")
# The optimiser's risk model, written into the config so that a change of default does not
# silently change what is measured (the default: pca, 20 components; see engine/portfolio).
RISK_MODEL = "pca"
RISK_FACTORS = 20


# ------------------------------------------------------------------------------------ set-up


def write_config(work: Path, n_assets: int, history_bars: int, epochs: int) -> Path:
    start = FIRST_TICK - timedelta(days=history_bars)
    text = f"""\
[run]
namespace = "latency{n_assets}"

[log]
format = "json"

[market]
symbols = {n_assets}
start = "{start.isoformat()}"

[schedule]
name = "latency"
cron = "{CRON}"

[strategy]
name = "lstm"

[model]
registry = "{(work / "models").as_posix()}"
epochs = {epochs}
retrain_every = 100000

[portfolio]
risk_model = "{RISK_MODEL}"
risk_factors = {RISK_FACTORS}
"""
    path = work / "config.toml"
    path.write_text(text)
    load_config(path)  # fails here, naming the key, rather than in six processes
    return path


def deepfactor(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "services.commands.cli", *arguments]


def train(config_path: Path, work: Path, history_bars: int) -> str:
    """Train the LSTM on the history bars; return the active version."""
    log = work / "train.log"
    with log.open("wb") as sink:
        done = subprocess.run(
            deepfactor(
                *("train", "--synthetic", "--bars", str(history_bars), "--no-progress"),
                *("--out", str(work / "train"), "--config", str(config_path)),
                *("--baselines", "equal-weight"),
            ),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise RuntimeError(f"deepfactor train failed ({done.returncode}):\n{tail(log)}")
    return (work / "models" / "lstm" / "active").read_text().strip()


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_account(
    config_path: Path, run_dir: Path, url: str, bars: int, speed: float, timeout_s: float
) -> None:
    """Run the five consumers and the replay as processes until the replay ends, then stop
    the consumers with SIGTERM (a clean stop) and check every exit status."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True)
    common = ["--config", str(config_path), "--out", str(run_dir), "--redis-url", url]
    common += ["--instance", INSTANCE, "--wait", "300"]
    processes: dict[str, subprocess.Popen] = {}

    def start(name: str, *extra: str) -> None:
        with (logs / f"{name}.log").open("wb") as sink:
            processes[name] = subprocess.Popen(
                deepfactor("run", name, *common, *extra),
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    try:
        for name in CONSUMERS:
            start(name)
        start("market-data", "--synthetic", "--bars", str(bars), "--speed", f"{speed:g}")
        processes["market-data"].wait(timeout=timeout_s)
        for name in CONSUMERS:
            processes[name].send_signal(signal.SIGTERM)
        for name in CONSUMERS:
            processes[name].wait(timeout=60)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = {name: p.returncode for name, p in processes.items() if p.returncode != 0}
    if failed:
        details = "\n".join(f"--- {name}\n{tail(logs / f'{name}.log')}" for name in failed)
        raise RuntimeError(f"processes failed {failed}:\n{details}")


# ----------------------------------------------------------------------------------- reading


def read_topic(client: redis.Redis, namespace: str, topic: str) -> list[tuple[int, Any]]:
    """(entry id ms, decoded envelope) of every entry of ``topic``, in order."""
    out = []
    for entry_id, fields in client.xrange(stream(namespace, topic)):
        out.append((int(entry_id.split(b"-")[0]), decode(fields[b"event"])))
    return out


def rebalance_lines(path: Path) -> tuple[dict[str, dict], int]:
    """``rebalance.completed`` lines by rebalance id, and the count of ``rebalance.skipped``."""
    completed, skipped = {}, 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == "rebalance.completed":
            completed[record["rebalance_id"]] = record
        elif record.get("event") == "rebalance.skipped":
            skipped += 1
    return completed, skipped


def factor_compute_ms(config: Config, bar_events: list[Any]) -> dict[datetime, float]:
    """Time FactorUpdateService.handle on the run's own BarSet events, in this process (its
    emits go to a memory bus): the compute part of the factor-update hop, by bar close."""
    first = bar_events[0].payload
    clock = SimulatedClock(first.close_time)
    service = build_services(config, MemoryBus(), clock).factor_update
    timings = {}
    previous = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # silence its logs
    try:
        for event in bar_events:
            clock.advance_to(event.payload.close_time)
            started = time.perf_counter()
            service.handle(event)
            timings[event.payload.close_time] = (time.perf_counter() - started) * 1e3
    finally:
        structlog.configure(**previous)
    return timings


@dataclass
class Sample:
    """One rebalance bar that sent orders: entry-id times (ms) and the services' own timings."""

    rebalance_id: str
    bar: int
    factors: int
    factors_emit: int
    signal: int
    signal_emit: int
    book_ready: int  # the rebalancer's last PortfolioSnapshot for the bar (its fills booked)
    tick: int
    orders: list[int]
    orders_emit: int
    inference_ms: float
    decision_ms: float
    solve_ms: float
    factor_compute_ms: float
    model: str
    fallback: bool

    @property
    def path_ms(self) -> int:
        # Until the rebalancer holds the bar's Signal and has booked the fills this bar brought.
        return max(self.signal, self.book_ready) - self.bar

    def parts(self) -> dict[str, float]:
        last = max(self.orders)
        return {
            "tick_to_last_order": self.path_ms + last - self.tick,
            "factor_compute": self.factor_compute_ms,
            "factor_update_bus": self.factors - self.bar - self.factor_compute_ms,
            "lstm_inference": self.inference_ms,
            "signal_bus": self.signal - self.factors - self.inference_ms,
            "optimiser": self.solve_ms,
            "risk_model_limits_orders": self.decision_ms - self.solve_ms,
            "rebalance_bus": last - self.tick - self.decision_ms,
            "fills_after_signal": max(0, self.book_ready - self.signal),
            "factor_update_commit": self.factors - self.factors_emit,
            "signal_commit": self.signal - self.signal_emit,
            "rebalance_commit": last - self.orders_emit,
            "replay_wait": self.tick - max(self.signal, self.book_ready),
            "bar_to_order_replay": last - self.bar,
        }


def collect(
    client: redis.Redis,
    namespace: str,
    run_dir: Path,
    config: Config,
    warmup: int,
    wanted: int,
) -> tuple[list[Sample], dict[str, int]]:
    bar_events = read_topic(client, namespace, "bars")
    bars = {
        e.payload.close_time: (ms, e.corr) for ms, e in bar_events if isinstance(e.payload, BarSet)
    }
    snapshots: dict[str, list[int]] = defaultdict(list)  # by corr: the bar's, or its fills'
    for ms, event in read_topic(client, namespace, "portfolio"):
        snapshots[event.corr].append(ms)
    factors = {
        e.payload.asof: (ms, event_id_time_ms(e.id))
        for ms, e in read_topic(client, namespace, "factors")
    }
    signals = {
        e.payload.asof: (ms, event_id_time_ms(e.id), e.payload)
        for ms, e in read_topic(client, namespace, "signals")
    }
    orders: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ms, event in read_topic(client, namespace, "orders"):
        orders[event.payload.rebalance_id].append((ms, event_id_time_ms(event.id)))
    ticks = [(ms, e.payload) for ms, e in read_topic(client, namespace, "schedule")]
    completed, skipped = rebalance_lines(run_dir / "logs" / "rebalance.log")
    compute = factor_compute_ms(config, [e for _, e in bar_events])

    samples: list[Sample] = []
    no_orders = 0  # ticks whose rebalance sent nothing (nothing to trade, or a limit held it)
    for tick_ms, tick in ticks[warmup:]:
        if len(samples) == wanted:
            break
        placed = orders.get(tick.rebalance_id)
        line = completed.get(tick.rebalance_id)
        if not placed or line is None:
            no_orders += 1
            continue
        when = tick.decision_time
        signal_ms, signal_emit, payload = signals[when]
        samples.append(
            Sample(
                rebalance_id=tick.rebalance_id,
                bar=bars[when][0],
                factors=factors[when][0],
                factors_emit=factors[when][1],
                signal=signal_ms,
                signal_emit=signal_emit,
                book_ready=max(
                    (ms for ms in snapshots[bars[when][1]] if ms <= tick_ms), default=bars[when][0]
                ),
                tick=tick_ms,
                orders=[ms for ms, _ in placed],
                orders_emit=min(emit for _, emit in placed),
                inference_ms=payload.latency_ms,
                decision_ms=float(line["ms"]),
                solve_ms=float(line["solve_ms"] or 0.0),
                factor_compute_ms=compute[when],
                model=payload.model,
                fallback=payload.fallback,
            )
        )
    counts = {
        "bars": len(bars),
        "ticks": len(ticks),
        "rebalances_without_orders_skipped": no_orders,
        "rebalance_skipped_lines": skipped,
    }
    return samples, counts


# -------------------------------------------------------------------------------- environment


class StallWatch(threading.Thread):
    """Note when this process's 20 ms sleep wakes over ``STALL_S`` late: (start, end) in ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stalls: list[tuple[int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            before = time.monotonic()
            time.sleep(0.02)
            late = time.monotonic() - before - 0.02
            if late > STALL_S:
                end = time.time_ns() // 1_000_000
                self.stalls.append((end - round((late + 0.02) * 1e3), end))


class CpuMeter:
    """CPU seconds the machine spent outside this process, its children and Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        try:
            with open("/proc/stat") as handle:
                jiffies = [int(v) for v in handle.readline().split()[1:]]
            busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        usage = [
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        ours = sum(r.ru_utime + r.ru_stime for r in usage)
        cpu = self.client.info("cpu")
        server = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        return time.monotonic(), busy, ours, server

    def stop(self) -> dict[str, float]:
        (t0, busy0, ours0, server0), (t1, busy1, ours1, server1) = self.start, self._read()
        wall, cpus = t1 - t0, os.cpu_count() or 1
        other = (busy1 - busy0) - (ours1 - ours0) - (server1 - server0)
        return {
            "wall_s": round(wall, 1),
            "benchmark_processes_cpu_s": round(ours1 - ours0, 1),
            "redis_cpu_s": round(server1 - server0, 1),
            "other_cpu_s": round(other, 1),
            "other_cpu_share_of_machine": round(max(other, 0.0) / (wall * cpus), 3),
        }


def redis_round_trip_ms(client: redis.Redis, count: int = 2000) -> float:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        timings.append((time.perf_counter() - started) * 1e3)
    return float(np.median(timings))


def server_url(cli_url: str | None, work: Path) -> tuple[str, EmbeddedRedis | None]:
    url = cli_url or os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = EmbeddedRedis(work / "redis", appendonly=False)
    return server.start(), server


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------ figures


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def summarise(samples: list[Sample], rtt_ms: float, stalls: list[tuple[int, int]]) -> dict:
    if not samples:
        raise RuntimeError("no rebalance sent orders: nothing to measure")
    per_order = [s.path_ms + ms - s.tick for s in samples for ms in s.orders]
    parts = [s.parts() for s in samples]
    means = {k: round(float(np.mean([p[k] for p in parts])), 2) for k in parts[0]}
    medians = {k: round(float(np.median([p[k] for p in parts])), 2) for k in parts[0]}
    grouped = {
        "factor update (compute)": means["factor_compute"],
        "LSTM inference": means["lstm_inference"],
        "rebalance decision (optimiser, risk model, limits, orders)": round(
            means["optimiser"] + means["risk_model_limits_orders"], 2
        ),
        "bus hops (3: read, decode, dedupe, encode, commit)": round(
            means["factor_update_bus"] + means["signal_bus"] + means["rebalance_bus"], 2
        ),
        "previous rebalance's fills booked after the Signal": means["fills_after_signal"],
    }
    largest, runner_up = sorted(grouped, key=grouped.__getitem__, reverse=True)[:2]
    detail = {k: means[k] for k in parts[0] if k not in ("tick_to_last_order", "replay_wait")}
    detail = {k: v for k, v in detail.items() if not k.endswith(("_commit", "_replay"))}
    # A sample overlaps a stall when the stall began before its last order and ended after its bar.
    stalled = [
        s.rebalance_id for s in samples if any(a <= max(s.orders) and b >= s.bar for a, b in stalls)
    ]
    total = means["tick_to_last_order"]
    return {
        "tick_to_order_p50_ms": percentile(per_order, 50),
        "tick_to_order_p99_ms": percentile(per_order, 99),
        "tick_to_order_orders": len(per_order),
        "tick_to_last_order_p50_ms": percentile([p["tick_to_last_order"] for p in parts], 50),
        "tick_to_last_order_p99_ms": percentile([p["tick_to_last_order"] for p in parts], 99),
        "rebalances": len(samples),
        "bar_to_order_replay_p50_ms": percentile([p["bar_to_order_replay"] for p in parts], 50),
        "bar_to_order_replay_p99_ms": percentile([p["bar_to_order_replay"] for p in parts], 99),
        "replay_wait_p50_ms": medians["replay_wait"],
        "largest_part": largest,
        "largest_part_share": round(grouped[largest] / total, 3) if total else None,
        "runner_up_part": runner_up,
        "runner_up_share": round(grouped[runner_up] / total, 3) if total else None,
        "largest_single_part": max(detail, key=detail.__getitem__),
        "breakdown_mean_ms": grouped,
        "parts_mean_ms": means,
        "parts_p50_ms": medians,
        "lstm_inference_p99_ms": percentile([s.inference_ms for s in samples], 99),
        "optimiser_p99_ms": percentile([s.solve_ms for s in samples], 99),
        "redis_round_trip_ms": round(rtt_ms, 3),
        "redis_round_trip_floor_ms": round(HOPS * ROUND_TRIPS_PER_HOP * rtt_ms, 2),
        # What would be left with free bus hops and no fills to wait for: the compute on the
        # path plus the round trips a hop cannot avoid.
        "compute_and_round_trip_floor_ms": round(
            sum(means[k] for k in COMPUTE_PARTS) + HOPS * ROUND_TRIPS_PER_HOP * rtt_ms, 2
        ),
        "signal_models": sorted({s.model for s in samples}),
        "signal_fallbacks": sum(s.fallback for s in samples),
        "samples_waiting_for_fills": sum(p["fills_after_signal"] > 0 for p in parts),
        "orders_per_rebalance_p50": float(np.median([len(s.orders) for s in samples])),
        "stalls": len(stalls),
        "samples_during_stalls": stalled,
        "samples_ms": [p["tick_to_last_order"] for p in parts],
    }


# --------------------------------------------------------------------------------------- runs


def run_size(arguments: argparse.Namespace, n_assets: int, url: str, work: Path) -> dict:
    work.mkdir(parents=True)
    config_path = write_config(work, n_assets, arguments.history_bars, arguments.epochs)
    config = load_config(config_path)
    print(f"{n_assets} assets: training the LSTM on {arguments.history_bars} bars ...", flush=True)
    version = train(config_path, work, arguments.history_bars)
    client = redis.Redis.from_url(url)
    run_dir = work / "run"
    bars = arguments.history_bars + arguments.warmup + arguments.samples + arguments.slack
    load_before = load()
    watch = StallWatch()
    watch.start()
    meter = CpuMeter(client)
    print(f"{n_assets} assets: replaying {bars} bars through 6 processes ...", flush=True)
    namespace = None
    try:
        run_account(config_path, run_dir, url, bars, arguments.speed, arguments.timeout)
        cpu = meter.stop()
        watch.done.set()
        load_after = load()
        namespace = json.loads((run_dir / "account.json").read_text())["namespace"]
        samples, counts = collect(
            client, namespace, run_dir, config, arguments.warmup, arguments.samples
        )
        rtt = redis_round_trip_ms(client)
    finally:
        watch.done.set()
        if namespace is None and (run_dir / "account.json").exists():
            namespace = json.loads((run_dir / "account.json").read_text())["namespace"]
        if namespace is not None:
            found = list(client.scan_iter(match=namespace_pattern(namespace), count=1000))
            for start in range(0, len(found), 500):
                client.delete(*found[start : start + 500])
        client.close()
    if len(samples) < arguments.samples:
        print(f"warning: {len(samples)} rebalances with orders, wanted {arguments.samples}")
    figures = summarise(samples, rtt, watch.stalls)
    figures.update(
        counts,
        trained_model=version,
        lstm_served=figures["signal_models"] == [version] and figures["signal_fallbacks"] == 0,
        bars_replayed=bars,
        history_bars=arguments.history_bars,
        warmup_rebalances=arguments.warmup,
        load_average_1m_before=load_before,
        load_average_1m_after=load_after,
        cpu=cpu,
    )
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--samples", type=int, default=40, help="rebalances with orders per size")
    parser.add_argument("--warmup", type=int, default=3, help="rebalances not counted first")
    parser.add_argument("--slack", type=int, default=15, help="extra bars for orderless ones")
    parser.add_argument("--speed", type=float, default=20.0, help="replay bars/s (0: no cap)")
    parser.add_argument("--history-bars", type=int, default=274, help="bars before the first tick")
    parser.add_argument("--epochs", type=int, default=5, help="LSTM training epochs (set-up)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per replay")
    parser.add_argument("--redis-url", help="default: REDIS_URL, else a private server")
    parser.add_argument("--work", type=Path, help="kept run directories (default: temporary)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args(argv)
    if arguments.warmup < 1 or arguments.samples < 1:
        parser.error("--warmup and --samples must be at least 1")
    if arguments.warmup + arguments.samples + arguments.slack > MAX_TICKS:
        parser.error(f"--warmup + --samples + --slack: at most {MAX_TICKS} rebalance bars")
    if not 252 <= arguments.history_bars <= MAX_HISTORY_BARS:
        parser.error(
            f"--history-bars: from 252 (the rebalancer's 250-bar VaR window full) to "
            f"{MAX_HISTORY_BARS} (no tick in the history)"
        )

    work = arguments.work or Path(tempfile.mkdtemp(prefix="df-latency-"))
    url, embedded = server_url(arguments.redis_url, work)
    transport = "unix socket" if url.startswith("unix") else "tcp"
    load_start = load()
    try:
        server = redis.Redis.from_url(url).info("server")["redis_version"]
        by_size = {n: run_size(arguments, n, url, work / f"assets-{n}") for n in arguments.sizes}
    finally:
        if embedded:
            embedded.stop()
        if arguments.work is None:
            shutil.rmtree(work, ignore_errors=True)
    load_end = load()

    result: dict[str, Any] = {}
    for key in ("tick_to_order_p50_ms", "tick_to_order_p99_ms"):
        for n, figures in by_size.items():
            result[f"{key}_{n}"] = figures[key]
    for n, figures in by_size.items():
        result[f"largest_part_{n}"] = figures["largest_part"]
    result["targets"] = {
        f"tick_to_order_p50_ms_{n} < {limit:g}": by_size[n]["tick_to_order_p50_ms"] < limit
        for n, limit in TARGETS_MS.items()
        if n in by_size
    }
    result["measured"] = (
        "per OrderRequest of a rebalance bar: (ready - BarSet XADD) + (OrderRequest XADD - "
        "RebalanceDue XADD), ready = max(Signal XADD, the rebalancer's last PortfolioSnapshot "
        "XADD for the bar: the fills this bar brought booked), Redis entry-id times (1 ms)"
    )
    result["notes"] = notes(by_size)
    result["by_size"] = {str(n): figures for n, figures in by_size.items()}
    result["environment"] = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "cvxpy": metadata.version("cvxpy"),
        "redis_server": f"{'embedded' if embedded else 'external'} {server}, {transport}",
        "load_average_1m_start": load_start,
        "load_average_1m_end": load_end,
        "processes": "one per service: market-data (replay), " + ", ".join(CONSUMERS),
        "replay_speed_bars_per_s": arguments.speed,
        "risk_model": RISK_MODEL,
        "risk_factors": RISK_FACTORS,
        "git": git_describe(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    report(by_size, arguments.out, load_start, load_end)
    return result


def notes(by_size: dict[int, dict]) -> list[str]:
    out = [
        "Why this is tick to order: the replay publishes a bar's RebalanceDue only once every "
        "consumer group has caught up with the bar (services/runtime/quiescence.py), so on the "
        "streams "
        "the tick comes after the bar's Signal, after execution and the recorder are done, and "
        "after a 1 ms poll. Live, the tick is due at the bar's close and waits at the "
        "rebalancer, which decides once it holds the bar's Signal and has booked the fills the "
        "bar brought. The figure is that path: the bar to ready, then the rebalancer's read of "
        "the tick, its decision and its commit. The replay's wait (RebalanceDue - ready) is left "
        "out: replay_wait_p50_ms; bar_to_order_replay_* has it in.",
        "Entry ids have 1 ms resolution: each figure is two differences of entry ids, off by "
        "less than 2 ms, about zero on average; the breakdown's means add up to the mean of "
        "tick_to_last_order.",
        "factor_compute is FactorUpdateService.handle on the run's own BarSet events, timed in "
        "the benchmark process after the run (no contention): the rest of the factor-update hop "
        "is counted as bus.",
    ]
    out.append(risk_model_note())
    for n, f in by_size.items():
        limit = TARGETS_MS.get(n)
        if limit is None:
            continue
        verdict = "met" if f["tick_to_order_p50_ms"] < limit else "missed"
        out.append(
            f"{n} assets: p50 {f['tick_to_order_p50_ms']} ms against a target of {limit:g} ms: "
            f"{verdict}. Largest part: {f['largest_part']} "
            f"({f['largest_part_share']:.0%} of the mean; next: {f['runner_up_part']}, "
            f"{f['runner_up_share']:.0%}). Floor with free bus hops and no "
            f"fills to wait for (compute on the path + {HOPS} hops x {ROUND_TRIPS_PER_HOP} "
            f"Redis round trips): {f['compute_and_round_trip_floor_ms']} ms."
        )
    return out


def risk_model_note() -> str:
    default = PortfolioConfig().risk_model
    setting = f'[portfolio] risk_model = "{RISK_MODEL}", risk_factors = {RISK_FACTORS}'
    if RISK_MODEL == default:
        return f"Risk model: {setting}, the default."
    return (
        f"Risk model: this benchmark runs the {RISK_MODEL!r} option ({setting}), NOT the "
        f"default {default!r}: the figures are those of a deployment that sets it."
    )


def git_describe() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def report(by_size: dict[int, dict], out: Path, load_start: float, load_end: float) -> None:
    print(
        f"{'assets':>6} {'p50':>8} {'p99':>8} {'orders':>6} {'rebal':>5} {'wait':>6} "
        f"{'other cpu':>9}  target (p50)"
    )
    for n, f in by_size.items():
        if not f["lstm_served"]:
            print(
                f"WARNING: {n} assets: not every sample was the trained LSTM's, see signal_models"
            )
        limit = TARGETS_MS.get(n)
        met = limit is not None and f["tick_to_order_p50_ms"] < limit
        verdict = "-" if limit is None else f"< {limit:g} ms -> {'met' if met else 'MISSED'}"
        print(
            f"{n:>6} {f['tick_to_order_p50_ms']:8.2f} {f['tick_to_order_p99_ms']:8.2f} "
            f"{f['tick_to_order_orders']:6d} {f['rebalances']:5d} {f['replay_wait_p50_ms']:6.1f} "
            f"{f['cpu']['other_cpu_share_of_machine']:9.1%}  {verdict}"
        )
        print("       mean ms: " + ", ".join(f"{k} {v}" for k, v in f["breakdown_mean_ms"].items()))
        print(
            f"       largest: {f['largest_part']} ({f['largest_part_share']:.0%}), next "
            f"{f['runner_up_part']} ({f['runner_up_share']:.0%}); floor "
            f"{f['compute_and_round_trip_floor_ms']} ms, of which Redis "
            f"{f['redis_round_trip_floor_ms']} ms ({HOPS} hops x {ROUND_TRIPS_PER_HOP} round "
            f"trips x {f['redis_round_trip_ms']} ms); LSTM fallbacks {f['signal_fallbacks']}; "
            f"waited for fills {f['samples_waiting_for_fills']}; stalls {f['stalls']}"
        )
    print(f"tick to order, ms; load average {load_start} -> {load_end}; wrote {out}")


if __name__ == "__main__":
    main()
