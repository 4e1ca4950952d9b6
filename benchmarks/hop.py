"""One bus hop of the real service loop across processes: the floor under tick to order.

benchmarks/latency.py splits tick to order into compute and three bus hops, and bounds the hops
from below by their Redis round trips only, as if their Python work were free. This measures a
hop as a deployment runs it, with a handler that does nothing but emit one small event onward.

A hop is a ``deepfactor run SERVICE`` process: ``services.runtime.standalone.run_service``
with everything it sets up (the run directory's locks, the account read from ``account.json``,
``open_redis_bus`` with the config's bus settings, the account's marker guarding the bus, the
service's lease in Redis fencing its writes and renewed by its thread, ``ServiceRunner`` with
its heartbeats and ``EventTimeClock``, pending messages adopted). The one substitution:
``standalone.build_service`` returns a relay (``Relay``) instead of a product service. The
relay is stateful like factor-update and rebalance (a few bytes of state, committed with each
acknowledgement) and handles one payload type; its consumer group also reads ``control``, as
every service's does. So each hop does what a production hop does: XREADGROUP (blocking,
``[bus] block_ms``), decode, the duplicate check (ZMSCORE), the handler, encode, and the
guarded commit (WATCH marker and lease, EXISTS, GET; then MULTI, XADD, XTRIM but on the ledger
topics, ZADD, ZREMRANGEBYSCORE, XACK, SET state, EXEC), as Redis MONITOR shows.

The chain, with real payload types: this process publishes a 20-asset BarSet (``bars``); hop 1
relays it as a RebalanceDue (``schedule``), hop 2 as an OrderRequest (``orders``), hop 3 as an
OrderUpdate (``order_updates``). Each relay appends ``time.perf_counter_ns()`` (CLOCK_MONOTONIC,
one clock for every process of the machine), taken as its handler starts, to the event's
``corr``, which the next relay carries on.

Measured, one event at a time (the next is sent ``--gap-ms`` after the previous one came out of
the chain, as rebalance bars come), after ``--warmup`` events not counted:

- ``hop``: from one relay's handler to the next one's, in the 3-hop chain: the relay's emit,
  encode and guarded commit, then the next process's wake-up, XREADGROUP, decode and duplicate
  check. The same parts as one hop of latency.py (an input's XADD to its output's XADD), cut at
  another place, with nothing of this process in it.
- ``chain1`` and ``chain3``: from just before this process's XADD of the BarSet to its blocking
  XREAD returning the chain's output: the hops, plus this process's send and wake-up (about one
  round trip). ``hop_marginal`` = (chain3 - chain1) / 2, which cancels them.
- ``entry_id_hop_mean_ms``: latency.py's method (output entry id - input entry id, Redis's clock,
  1 ms resolution), a mean, as a cross-check.

The 1-hop and 3-hop chains run one after the other, each with its own account and processes.
Also recorded: the Redis PING round trip (median of 2000, from this process), the 1-minute load
average before and after each chain, and the hop less its 4 Redis round trips (XREADGROUP,
ZMSCORE, the guard, MULTI..EXEC): the hop's Python work.

Writes benchmarks/results/hop.json (``--out``).

    python benchmarks/hop.py [--events 300] [--warmup 30] [--gap-ms 20] [--redis-url URL]
        [--work DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402

from benchmarks.latency import (  # noqa: E402
    git_describe,
    load,
    percentile,
    redis_round_trip_ms,
    server_url,
    tail,
)
from engine.bus import Bus, RedisBus  # noqa: E402
from engine.bus.keys import namespace_pattern, stream  # noqa: E402
from engine.clock import Clock  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.events import (  # noqa: E402
    BarSet,
    Envelope,
    EventPayload,
    OrderRequest,
    OrderUpdate,
    RebalanceDue,
    decode,
    encode,
    make_event,
)
from services.runtime import standalone  # noqa: E402
from services.runtime.account import bind_account, open_account  # noqa: E402
from services.runtime.loop import Handler, Service, decode_state, encode_state  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "hop.json"
N_ASSETS = 20
ROUND_TRIPS_PER_HOP = 4  # XREADGROUP, ZMSCORE (duplicates), WATCH/EXISTS/GET, MULTI..EXEC
FIRST_EVENT_TIMEOUT_S = 120.0  # the processes start (imports) while the first event waits
EVENT_TIMEOUT_S = 10.0
START = datetime(2021, 1, 1, tzinfo=UTC)
# What hop i handles, and the small event it emits onward (real payload types, distinct topics).
INPUTS: tuple[type[EventPayload], ...] = (BarSet, RebalanceDue, OrderRequest)
OUTPUTS: tuple[EventPayload, ...] = (
    RebalanceDue(rebalance_id="hop-rebalance", schedule="hop", due=START, decision_time=START),
    OrderRequest(
        client_order_id="hop-rebalance-S00",
        rebalance_id="hop-rebalance",
        asof=START,
        symbol="S00/USDT",
        side="buy",
        quantity=1.5,
        reference_price=101.25,
    ),
    OrderUpdate(client_order_id="hop-rebalance-S00", status="accepted", broker_order_id="b-1"),
)
MAX_HOPS = len(OUTPUTS)


# ------------------------------------------------------------------------------ the relay


class RelayState(msgspec.Struct):
    version: int = 1
    relayed: int = 0


class Relay(Service):
    """Hop ``index`` of the chain: take an ``INPUTS[index]`` event, emit ``OUTPUTS[index]``
    with the same ``corr`` and, appended, the time its handler started."""

    index: ClassVar[int] = 0
    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, bus: Bus, clock: Clock) -> None:
        super().__init__(bus, clock)
        self.relayed = 0

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {INPUTS[self.index]: self._relay}

    def _relay(self, event: Envelope) -> None:
        started = time.perf_counter_ns()
        self.relayed += 1
        self.emit([OUTPUTS[self.index]], corr=f"{event.corr} {started}")

    def snapshot_state(self) -> bytes:
        return encode_state(RelayState(version=self.STATE_VERSION, relayed=self.relayed))

    def restore_state(self, blob: bytes) -> None:
        state = decode_state(blob, RelayState, self.STATE_VERSION, self.name)
        self.relayed = state.relayed


def hop_name(index: int) -> str:
    return f"hop-{index + 1}"


def relay_class(index: int) -> type[Relay]:
    return type(f"Relay{index + 1}", (Relay,), {"name": hop_name(index), "index": index})


def serve(index: int, config_path: Path, run_dir: Path) -> int:
    """Run hop ``index`` as ``deepfactor run`` runs a service (module docstring); return 0
    after a clean stop (SIGTERM)."""
    from engine.logging import configure_logging
    from services.commands.cli_common import cold_stop, on_stop_signals

    config = load_config(config_path)
    name = hop_name(index)
    configure_logging(name, config.log.level, "json")
    relay = relay_class(index)
    standalone.build_service = lambda _name, _config, bus, clock, _out: relay(bus, clock)
    stop = threading.Event()
    on_stop_signals(stop, cold_stop)
    standalone.run_service(config, name, run_dir, stop=stop, wait_s=FIRST_EVENT_TIMEOUT_S)
    return 0


# ------------------------------------------------------------------------------- one chain


def write_config(run_dir: Path, url: str) -> Path:
    run_dir.mkdir(parents=True)
    path = run_dir / "config.toml"
    path.write_text(
        f'[run]\nnamespace = "hop"\ninstance = "bench"\n\n[log]\nformat = "json"\n\n'
        f"[bus]\nredis_url = {json.dumps(url)}\n"
    )
    return path


def bar_sets(count: int, seed: int = 7) -> list[BarSet]:
    """``count`` daily 20-asset BarSets of a random walk."""
    rng = np.random.default_rng(seed)
    symbols = tuple(f"S{i:02d}/USDT" for i in range(N_ASSETS))
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.02, (count, N_ASSETS)), axis=0))
    out = []
    for t in range(count):
        c = close[t]
        o = c * (1 + rng.normal(0, 0.005, N_ASSETS))
        out.append(
            BarSet(
                bar_open=START + timedelta(days=t),
                symbols=symbols,
                open=tuple(o.tolist()),
                high=tuple((np.maximum(o, c) * 1.01).tolist()),
                low=tuple((np.minimum(o, c) * 0.99).tolist()),
                close=tuple(c.tolist()),
                volume=tuple(rng.uniform(1e3, 1e6, N_ASSETS).tolist()),
            )
        )
    return out


def start_hops(hops: int, config_path: Path, run_dir: Path) -> list[subprocess.Popen]:
    logs = run_dir / "logs"
    logs.mkdir()
    processes = []
    for index in range(hops):
        with (logs / f"{hop_name(index)}.log").open("wb") as sink:
            command = [sys.executable, __file__, "--serve", str(index)]
            command += ["--config", str(config_path), "--run-dir", str(run_dir)]
            processes.append(
                subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
            )
    return processes


def stop_hops(processes: list[subprocess.Popen], run_dir: Path) -> None:
    """Stop the hops with SIGTERM (a clean stop) and check that each exited 0."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    failed = {hop_name(i): p.returncode for i, p in enumerate(processes) if p.returncode != 0}
    if failed:
        details = "\n".join(f"--- {n}\n{tail(run_dir / 'logs' / f'{n}.log')}" for n in failed)
        raise RuntimeError(f"hop processes failed {failed}:\n{details}")


def drive(
    url: str, namespace: str, hops: int, events: list[bytes], gap_s: float, run_dir: Path
) -> list[dict[str, Any]]:
    """Send each encoded BarSet once the previous one came out of the chain; return, per
    event, the perf_counter_ns times: sent, each relay's handler start, received."""
    publisher = RedisBus(url, namespace)  # unguarded: one plain XADD per event
    client = redis.Redis.from_url(url)
    output = stream(namespace, OUTPUTS[hops - 1].TOPIC)
    last = "0-0"
    samples = []
    try:
        for number, data in enumerate(events):
            time.sleep(gap_s)
            sent = time.perf_counter_ns()
            entry = publisher.publish_raw(BarSet.TOPIC, data)
            timeout = FIRST_EVENT_TIMEOUT_S if number == 0 else EVENT_TIMEOUT_S
            reply = client.xread({output: last}, count=1, block=int(timeout * 1000))
            received = time.perf_counter_ns()
            if not reply:
                logs = "\n".join(
                    f"--- {hop_name(i)}\n{tail(run_dir / 'logs' / f'{hop_name(i)}.log')}"
                    for i in range(hops)
                )
                raise RuntimeError(f"event {number} did not come out after {timeout:g}s\n{logs}")
            message_id, fields = reply[0][1][0]
            last = message_id.decode()
            corr, *stamps = decode(fields[b"event"]).corr.split()
            if corr != f"hop-{number}" or len(stamps) != hops:
                raise RuntimeError(f"event {number}: unexpected output corr {corr!r} {stamps}")
            samples.append(
                {
                    "corr": corr,
                    "times": [sent, *map(int, stamps), received],
                    "entries": [entry.split("-")[0], last.split("-")[0]],
                }
            )
    finally:
        publisher.close()
        client.close()
    return samples


def entry_id_hops(url: str, namespace: str, hops: int, corrs: set[str]) -> list[float]:
    """Mean of (output entry id - input entry id), ms, of each hop, over the ``corrs`` events:
    latency.py's reading of a hop."""
    client = redis.Redis.from_url(url)
    try:
        topics = [BarSet.TOPIC, *(OUTPUTS[i].TOPIC for i in range(hops))]
        at: list[dict[str, int]] = []
        for topic in topics:
            times = {}
            for message_id, fields in client.xrange(stream(namespace, topic)):
                corr = decode(fields[b"event"]).corr.split()[0]
                if corr in corrs:
                    times[corr] = int(message_id.split(b"-")[0])
            at.append(times)
    finally:
        client.close()
    return [round(float(np.mean([at[k + 1][c] - at[k][c] for c in corrs])), 3) for k in range(hops)]


def delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        found = list(client.scan_iter(match=namespace_pattern(namespace), count=1000))
        for start in range(0, len(found), 500):
            client.delete(*found[start : start + 500])
    finally:
        client.close()


def run_chain(
    hops: int, url: str, work: Path, count: int, warmup: int, gap_s: float
) -> dict[str, Any]:
    run_dir = work / f"chain{hops}"
    config_path = write_config(run_dir, url)
    config = load_config(config_path)
    account = open_account(run_dir, config.run.namespace, "benchmark:hop")
    marking = RedisBus(url, account.namespace)
    try:
        bind_account(marking, account, run_dir)  # the mark the hops' buses are guarded with
    finally:
        marking.close()
    events = [
        encode(make_event(bars, source="market-data", corr=f"hop-{n}", ts=bars.close_time))
        for n, bars in enumerate(bar_sets(warmup + count))
    ]
    load_before = load()
    processes = start_hops(hops, config_path, run_dir)
    try:
        samples = drive(url, account.namespace, hops, events, gap_s, run_dir)[warmup:]
        entry_hops = entry_id_hops(url, account.namespace, hops, {s["corr"] for s in samples})
    finally:
        try:
            stop_hops(processes, run_dir)
        finally:
            delete_namespace(url, account.namespace)
    load_after = load()
    return summarise(hops, samples, entry_hops, load_before, load_after, len(events[0]))


def summarise(
    hops: int,
    samples: list[dict[str, Any]],
    entry_hops: list[float],
    load_before: float,
    load_after: float,
    input_bytes: int,
) -> dict[str, Any]:
    times = np.array([s["times"] for s in samples], dtype=np.int64)
    segments = np.diff(times, axis=1) / 1e6  # ms: send->h1, h1->h2, ..., hN->receive
    end_to_end = ((times[:, -1] - times[:, 0]) / 1e6).tolist()
    names = ["send_to_hop1_handler"]
    names += [f"hop{k}_to_hop{k + 1}_handler" for k in range(1, hops)]
    names += [f"hop{hops}_handler_to_receive"]
    figures: dict[str, Any] = {
        "p50_ms": percentile(end_to_end, 50),
        "p99_ms": percentile(end_to_end, 99),
        "mean_ms": round(float(np.mean(end_to_end)), 3),
        "events": len(samples),
        "segments_p50_ms": {n: percentile(segments[:, i], 50) for i, n in enumerate(names)},
        "segments_p99_ms": {n: percentile(segments[:, i], 99) for i, n in enumerate(names)},
        "entry_id_hop_mean_ms": entry_hops,
        "input_bytes": input_bytes,
        "load_average_1m_before": load_before,
        "load_average_1m_after": load_after,
    }
    if hops > 1:
        handler_to_handler = segments[:, 1:-1].ravel()
        figures["handler_to_handler_p50_ms"] = percentile(handler_to_handler, 50)
        figures["handler_to_handler_p99_ms"] = percentile(handler_to_handler, 99)
        figures["handler_to_handler_samples"] = len(handler_to_handler)
    return figures


# --------------------------------------------------------------------------------------- run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="events timed per chain")
    parser.add_argument("--warmup", type=int, default=30, help="events not counted first")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause before each event")
    parser.add_argument("--redis-url", help="default: REDIS_URL, else a private server")
    parser.add_argument("--work", type=Path, help="kept run directories (default: temporary)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # a hop process
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve is not None:
        sys.exit(serve(arguments.serve, arguments.config, arguments.run_dir))
    if arguments.events < 2 or arguments.warmup < 1:
        parser.error("--events must be at least 2 and --warmup at least 1")

    work = arguments.work or Path(tempfile.mkdtemp(prefix="df-hop-"))
    url, embedded = server_url(arguments.redis_url, work)
    gap_s = arguments.gap_ms / 1000
    load_start = load()
    try:
        client = redis.Redis.from_url(url)
        try:
            server = client.info("server")["redis_version"]
            rtt_ms = redis_round_trip_ms(client)
        finally:
            client.close()
        chains = {
            n: run_chain(n, url, work, arguments.events, arguments.warmup, gap_s)
            for n in (1, MAX_HOPS)
        }
    finally:
        if embedded:
            embedded.stop()
        if arguments.work is None:
            shutil.rmtree(work, ignore_errors=True)
    load_end = load()

    one, three = chains[1], chains[MAX_HOPS]
    hop_p50 = three["handler_to_handler_p50_ms"]
    result: dict[str, Any] = {
        "hop_p50_ms": hop_p50,
        "hop_p99_ms": three["handler_to_handler_p99_ms"],
        "chain1_p50_ms": one["p50_ms"],
        "chain1_p99_ms": one["p99_ms"],
        "chain3_p50_ms": three["p50_ms"],
        "chain3_p99_ms": three["p99_ms"],
        "hop_marginal_p50_ms": round((three["p50_ms"] - one["p50_ms"]) / (MAX_HOPS - 1), 3),
        "redis_round_trip_ms": round(rtt_ms, 3),
        "hop_less_round_trips_p50_ms": round(hop_p50 - ROUND_TRIPS_PER_HOP * rtt_ms, 3),
        "measured": (
            "hop: perf_counter_ns from one relay's handler start to the next relay's, in the "
            "3-hop chain (a full hop of the real service loop, nothing of the driver in it); "
            "chainN: from just before the driver's XADD of a 20-asset BarSet to its XREAD "
            "returning the chain's output (N hops plus the driver's send and wake-up)"
        ),
        "notes": notes(chains, rtt_ms),
        "chains": {str(n): figures for n, figures in chains.items()},
        "environment": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "redis_server": f"{'embedded' if embedded else 'external'} {server}, "
            f"{'unix socket' if url.startswith('unix') else 'tcp'}",
            "load_average_1m_start": load_start,
            "load_average_1m_end": load_end,
            "events_per_chain": arguments.events,
            "warmup_events": arguments.warmup,
            "gap_ms": arguments.gap_ms,
            "git": git_describe(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        },
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result, arguments.out)
    return result


def notes(chains: dict[int, dict[str, Any]], rtt_ms: float) -> list[str]:
    three = chains[MAX_HOPS]
    hop = three["handler_to_handler_p50_ms"]
    floor = ROUND_TRIPS_PER_HOP * rtt_ms
    return [
        "Each hop is a `deepfactor run` process (services.runtime.standalone.run_service, "
        "lease and account guard included) whose service is a relay that emits one small "
        "event: the hop's cost with no work in its handler.",
        f"One hop p50 {hop} ms, of which {ROUND_TRIPS_PER_HOP} Redis round trips "
        f"{floor:.2f} ms (PING {rtt_ms:.3f} ms from this process); the rest, "
        f"{hop - floor:.2f} ms, is the loop's Python work and the processes' wake-ups.",
        f"Three hops: about {3 * hop:.2f} ms (3 x the hop p50); the 3-hop chain end to end "
        f"p50 {three['p50_ms']} ms also counts the driver's send and wake-up.",
        "entry_id_hop_mean_ms is latency.py's reading (Redis entry ids, 1 ms resolution, "
        "means): a cross-check of the perf_counter figures.",
        "The machine's load average is recorded before and after each chain: figures taken "
        "under load (another job) overstate the hop.",
    ]


def report(result: dict[str, Any], out: Path) -> None:
    print(
        f"hop p50 {result['hop_p50_ms']} ms, p99 {result['hop_p99_ms']} ms "
        f"(marginal from the chains: {result['hop_marginal_p50_ms']} ms; less "
        f"{ROUND_TRIPS_PER_HOP} round trips: {result['hop_less_round_trips_p50_ms']} ms)"
    )
    for n, figures in result["chains"].items():
        segments = ", ".join(f"{k} {v}" for k, v in figures["segments_p50_ms"].items())
        print(
            f"chain of {n}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms over "
            f"{figures['events']} events; segments p50: {segments}; entry-id hops (mean) "
            f"{figures['entry_id_hop_mean_ms']}; load {figures['load_average_1m_before']} -> "
            f"{figures['load_average_1m_after']}"
        )
    print(f"Redis PING round trip {result['redis_round_trip_ms']} ms; wrote {out}")


if __name__ == "__main__":
    main()
