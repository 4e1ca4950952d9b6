"""Bus throughput: raw redis-py vs our Redis Streams bus vs the in-memory bus, one run, one server.

Traffic: N order events (~400 bytes each) and N 20-asset bar sets, published in batches and
consumed by one group member. The raw baseline sends pre-encoded bytes with pipelined XADD and
reads them back with XREADGROUP + XACK; our bus does the same work plus what makes it safe
(encoding, validated decoding, duplicate check by event id, mark-processed with the ack).

Writes benchmarks/results/bus.json with raw_redis_events_per_s, redis_bus_events_per_s,
memory_bus_events_per_s (medians over paired rounds), ratio (= redis_bus / raw, the median of
the per-round ratios) and the codec cost of a 20-asset bar set.

    python benchmarks/bus.py [--events 20000] [--batch 256] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from engine.bus import ConsumerLoop, ConsumeSettings, EmbeddedRedis, MemoryBus, RedisBus  # noqa: E402
from engine.bus.keys import namespace_pattern, stream  # noqa: E402
from engine.events import decode, encode, make_event  # noqa: E402
from tests.events import bar_set, order_request  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bus.json"
TOPICS = ("bench_orders", "bench_bars")


def make_traffic(n: int) -> dict[str, list]:
    bars = bar_set(20)
    return {
        "bench_orders": [order_request(i) for i in range(n)],
        "bench_bars": [make_event(bars, source="market-data") for _ in range(n)],
    }


def run_raw(client: redis.Redis, namespace: str, traffic: dict[str, list], batch: int) -> float:
    encoded = {topic: [encode(e) for e in events] for topic, events in traffic.items()}
    keys = {topic: stream(namespace, topic) for topic in traffic}
    for key in keys.values():
        client.xgroup_create(key, "raw", id="0", mkstream=True)
    total = sum(len(v) for v in encoded.values())
    started = time.perf_counter()
    for topic, payloads in encoded.items():
        for start in range(0, len(payloads), batch):
            pipe = client.pipeline(transaction=False)
            for data in payloads[start : start + batch]:
                pipe.xadd(keys[topic], {b"event": data}, maxlen=10 * total, approximate=True)
            pipe.execute()
    consumed = 0
    streams = {key: ">" for key in keys.values()}
    while consumed < total:
        response = client.xreadgroup("raw", "c1", streams, count=batch)
        pipe = client.pipeline(transaction=False)
        for key, entries in response:
            consumed += len(entries)
            pipe.xack(key, "raw", *[message_id for message_id, _ in entries])
        pipe.execute()
    return total / (time.perf_counter() - started)


def run_bus(bus, traffic: dict[str, list], batch: int) -> float:
    total = sum(len(v) for v in traffic.values())
    received = 0

    def handler(event) -> None:
        nonlocal received
        received += 1

    loop = ConsumerLoop(
        bus.consumer("bench", "c1", list(traffic)),
        handler,
        ConsumeSettings(batch_size=batch, block_ms=0, reclaim_interval_ms=3_600_000),
    )
    started = time.perf_counter()
    for topic, events in traffic.items():
        for start in range(0, len(events), batch):
            bus.publish_many(topic, events[start : start + batch])
    loop.reclaim()
    while received < total:
        loop.run_once(block_ms=0)
    elapsed = time.perf_counter() - started
    assert loop.consumer.pending_count() == 0
    return total / elapsed


def codec_cost_us(repeat: int = 20_000) -> dict[str, float]:
    event = make_event(bar_set(20), source="market-data")
    data = encode(event)
    samples_encode, samples_decode = [], []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            encode(event)
        samples_encode.append((time.perf_counter() - started) / repeat * 1e6)
        started = time.perf_counter()
        for _ in range(repeat):
            decode(data)
        samples_decode.append((time.perf_counter() - started) / repeat * 1e6)
    encode_us, decode_us = min(samples_encode), min(samples_decode)
    return {
        "bar_set_20_bytes": len(data),
        "bar_set_20_encode_us": round(encode_us, 2),
        "bar_set_20_decode_us": round(decode_us, 2),
        "bar_set_20_encode_decode_us": round(encode_us + decode_us, 2),
    }


def server_url(cli_url: str | None, workdir: Path) -> tuple[str, EmbeddedRedis | None]:
    url = cli_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/9"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        return url, None
    except redis.RedisError:
        server = EmbeddedRedis(workdir / "redis", appendonly=False)
        return server.start(), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per payload kind")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds; medians reported")
    parser.add_argument("--redis-url")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="df-bench-") as workdir:
        url, embedded = server_url(arguments.redis_url, Path(workdir))
        client = redis.Redis.from_url(url)
        traffic = make_traffic(arguments.events)
        order_bytes = len(encode(traffic["bench_orders"][0]))
        figures: dict[str, list[float]] = {"raw": [], "redis_bus": [], "memory_bus": []}
        try:
            for _ in range(arguments.rounds):
                # Interleave contenders so drift in machine load hits all of them alike.
                namespace = f"bench-{uuid.uuid4().hex[:8]}"
                try:
                    figures["raw"].append(run_raw(client, namespace, traffic, arguments.batch))
                    bus = RedisBus(url, f"{namespace}-bus", give_up_after_s=10)
                    figures["redis_bus"].append(run_bus(bus, traffic, arguments.batch))
                    bus.close()
                    figures["memory_bus"].append(run_bus(MemoryBus(), traffic, arguments.batch))
                finally:
                    for prefix in (namespace, f"{namespace}-bus"):
                        keys = list(client.scan_iter(match=namespace_pattern(prefix), count=1000))
                        if keys:
                            client.delete(*keys)
            server_version = client.info("server")["redis_version"]
        finally:
            client.close()
            if embedded:
                embedded.stop()

    # Rounds are paired (raw, then ours, back to back), so the median of per-round ratios
    # is robust to the load swings of a shared machine.
    raw, ours, memory = (statistics.median(figures[k]) for k in ("raw", "redis_bus", "memory_bus"))
    ratios = [b / a for a, b in zip(figures["raw"], figures["redis_bus"])]
    result = {
        "raw_redis_events_per_s": round(raw),
        "redis_bus_events_per_s": round(ours),
        "memory_bus_events_per_s": round(memory),
        "ratio": round(statistics.median(ratios), 3),
        **codec_cost_us(),
        "order_event_bytes": order_bytes,
        "events_per_payload_kind": arguments.events,
        "batch": arguments.batch,
        "rounds": arguments.rounds,
        "all_rounds_events_per_s": {k: [round(v) for v in vals] for k, vals in figures.items()},
        "round_ratios": [round(r, 3) for r in ratios],
        "redis_server": f"{'embedded' if embedded else 'external'} {server_version}",
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:32s} {value}")
    print(
        f"target: ratio >= 0.5 -> {'met' if result['ratio'] >= 0.5 else 'MISSED'}; "
        f"bar set encode+decode < 20 us -> "
        f"{'met' if result['bar_set_20_encode_decode_us'] < 20 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
