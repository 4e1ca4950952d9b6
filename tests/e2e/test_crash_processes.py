"""A paper account run as six processes (``deepfactor run SERVICE``) on a real Redis survives
SIGKILLs of its stateful services at random moments: each killed process is started again with
the same command, and the account ends exactly where the same run without kills ends.

The five consumers and the replay (``run market-data --synthetic``) are separate processes on
the fixture's Redis, under a namespace no other test uses (deleted at the end). execution,
rebalance and factor-update are killed with SIGKILL once the bars stream reaches randomly drawn
lengths and the victim is at work (it logged ``run.started``), after a random delay of up to
50 ms (so in the middle of a handler or between two), and started again at once. The draw
comes from a seeded generator: the seed is printed, and ``DEEPFACTOR_CRASH_SEED=N`` replays the
same draw.

Afterwards, from the ledger (``tests/audit.py``): no client order id requested twice, no
fill_id twice, every OrderRequest in exactly one terminal state, no message missing from any
consumer group (last-delivered id = the stream's last id, nothing pending), books that balance
at every snapshot, no dead letter; and the same orders, fills, final snapshot and summary.json
as the run without kills, whose final equity is also the in-process backtest's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from engine.bus import MemoryBus, RedisBus
from engine.clock import WallClock
from engine.config import load_config
from engine.data.sources import SyntheticSource
from services.commands.backtest import Backtest
from services.runtime.assembly import build_services
from tests.audit import Ledger, read_ledger, rebuild_and_compare, terminal_updates_per_order
from tests.conftest import delete_namespaces

ROOT = Path(__file__).resolve().parents[2]
CONSUMERS = ("factor-update", "signal", "rebalance", "execution", "recorder")
VICTIMS = ("execution", "rebalance", "factor-update")
SEED = int(os.environ.get("DEEPFACTOR_CRASH_SEED", "20250611"))
SETTINGS = {
    "DEEPFACTOR_BUS__BLOCK_MS": "50",
    "DEEPFACTOR_RUN__INSTANCE": "crash-test",
    "DEEPFACTOR_MARKET__SYMBOLS": "8",
    "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
    "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
    "DEEPFACTOR_LOG__LEVEL": "info",
}


@dataclass(frozen=True)
class Kill:
    """Kill ``victim`` ``delay_s`` after the bars stream holds ``bars`` entries."""

    bars: int
    victim: str
    delay_s: float


def draw_kills(seed: int, count: int, bars: int) -> list[Kill]:
    """``count`` kills at distinct bar counts, each victim at least once."""
    rng = random.Random(seed)
    at = sorted(rng.sample(range(10, bars - 10), count))
    victims = rng.sample(VICTIMS, len(VICTIMS))
    victims += [rng.choice(VICTIMS) for _ in range(count - len(VICTIMS))]
    return [Kill(b, v, round(rng.uniform(0.0, 0.05), 4)) for b, v in zip(at, victims)]


@dataclass
class Outcome:
    namespace: str
    ledger: Ledger
    summary: dict
    summary_at_end_of_data: dict
    killed: list[str] = field(default_factory=list)  # "victim at N bars"


class Account:
    """The six processes of one paper account, each started with the command a user types."""

    def __init__(self, out: Path, env: dict[str, str], bars: int) -> None:
        self.out = out
        self.env = env
        self.bars = bars
        self.logs = out.parent / f"{out.name}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.starts: Counter = Counter()

    def command(self, service: str) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "services.commands.cli",
            "run",
            service,
            "--out",
            str(self.out),
        ]
        if service == "market-data":
            command += ["--synthetic", "--bars", str(self.bars), "--speed", "max"]
        return command

    def start(self, service: str) -> None:
        self.starts[service] += 1
        with (self.logs / f"{service}.log").open("ab") as log:
            self.processes[service] = subprocess.Popen(
                self.command(service), cwd=ROOT, env=self.env,
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def kill(self, service: str) -> None:
        process = self.processes[service]
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL

    def wait_running(self, service: str, timeout_s: float = 60) -> None:
        """Wait until the latest process of ``service`` has joined the account (it logged
        ``run.started``: it restores its state and consumes from then on)."""
        deadline = time.monotonic() + timeout_s
        while self.log_tail(service, 10_000).count('"run.started"') < self.starts[service]:
            assert self.processes[service].poll() is None, self.log_tail(service)
            assert time.monotonic() < deadline, (
                f"{service} did not start:\n{self.log_tail(service)}"
            )
            time.sleep(0.01)

    def log_tail(self, service: str, lines: int = 15) -> str:
        path = self.logs / f"{service}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])

    def stop_consumers(self) -> None:
        """SIGTERM every consumer; each must finish, commit and exit 0."""
        for service in CONSUMERS:
            self.processes[service].send_signal(signal.SIGTERM)
        for service in CONSUMERS:
            code = self.processes[service].wait(timeout=60)
            assert code == 0, f"{service} exited {code}:\n{self.log_tail(service)}"

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def namespace_of(out: Path, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (out / "account.json").exists():
            return json.loads((out / "account.json").read_text())["namespace"]
        time.sleep(0.02)
    pytest.fail(f"no account.json in {out} after {timeout_s}s")


def expected_groups() -> list[tuple[str, tuple[str, ...]]]:
    services = build_services(load_config(None, SETTINGS), MemoryBus(), WallClock())
    return [(s.name, s.topics) for s in services.all()]


def assert_every_group_caught_up(client: redis.Redis, namespace: str) -> None:
    """Each consumer group delivered its streams' last entry and holds nothing pending."""
    for group, topics in expected_groups():
        for topic in topics:
            key = f"{namespace}:{topic}"
            last = client.xinfo_stream(key)["last-generated-id"]
            state = {g["name"].decode(): g for g in client.xinfo_groups(key)}[group]
            assert state["pending"] == 0, (group, topic, state)
            assert state["last-delivered-id"] == last, (group, topic, state, last)


def run_account(
    tmp_path: Path, name: str, redis_url: str, base: str, bars: int, kills: list[Kill]
) -> Outcome:
    """Run one account as six processes, killing and restarting as ``kills`` say."""
    out = tmp_path / name
    env = {**os.environ, **SETTINGS, "DEEPFACTOR_BUS__REDIS_URL": redis_url}
    env["DEEPFACTOR_RUN__NAMESPACE"] = base
    account = Account(out, env, bars)
    client = redis.Redis.from_url(redis_url)
    killed: list[str] = []
    try:
        for service in CONSUMERS:
            account.start(service)
        account.start("market-data")
        namespace = namespace_of(out)
        replay = account.processes["market-data"]
        for kill in kills:
            deadline = time.monotonic() + 120
            while client.xlen(f"{namespace}:bars") < kill.bars:
                assert replay.poll() is None, (
                    f"seed {SEED}: the replay ended before {kill}:\n"
                    + account.log_tail("market-data")
                )
                assert time.monotonic() < deadline, f"seed {SEED}: never reached {kill}"
                time.sleep(0.002)
            account.wait_running(kill.victim)  # a kill of a process that is at work
            time.sleep(kill.delay_s)
            assert replay.poll() is None, f"seed {SEED}: the replay ended before {kill}"
            at = client.xlen(f"{namespace}:bars")
            account.kill(kill.victim)
            killed.append(f"{kill.victim} at {at} bars")
            account.start(kill.victim)  # the same command again
        code = replay.wait(timeout=240)
        assert code == 0, f"market-data exited {code}:\n{account.log_tail('market-data')}"
        # The recorder wrote the files when it handled the end-of-data halt.
        at_end_of_data = json.loads((out / "summary.json").read_text())
        assert_every_group_caught_up(client, namespace)
        account.stop_consumers()
        assert_every_group_caught_up(client, namespace)
        for kill in kills:  # every restart resumed the killed service's work
            started = account.log_tail(kill.victim, 10_000).count('"run.started"')
            assert started == 1 + sum(k.victim == kill.victim for k in kills), kill.victim
        bus = RedisBus(redis_url, namespace, give_up_after_s=5)
        try:
            ledger = read_ledger(bus)
            assert bus.dead_letters() == []
        finally:
            bus.close()
        summary = json.loads((out / "summary.json").read_text())
        return Outcome(namespace, ledger, summary, at_end_of_data, killed)
    finally:
        account.close()
        client.close()


def check_books(outcome: Outcome, bars: int) -> None:
    ledger = outcome.ledger
    requested = Counter(o.client_order_id for o in ledger.orders)
    assert [c for c, n in requested.items() if n > 1] == [], "an order was requested twice"
    fill_ids = Counter(f.fill_id for f in ledger.fills)
    assert [f for f, n in fill_ids.items() if n > 1] == [], "a fill was published twice"
    counts = terminal_updates_per_order(ledger)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert rebuild_and_compare(ledger, 1_000_000.0) >= bars


def check_same_account(outcome: Outcome, expected: Outcome) -> None:
    ledger, reference = outcome.ledger, expected.ledger
    # The same orders and fills, by id, side and price exactly; quantities to 1e-12. A
    # restarted factor-update rebuilds its rolling sums from the bars it consumed, which can
    # differ from the uninterrupted run's in the last bit; the optimiser's weights follow the
    # scores continuously, so such a bit shows in the 15th digit of a quantity.
    assert [(o.client_order_id, o.side) for o in ledger.orders] == [
        (o.client_order_id, o.side) for o in reference.orders
    ]
    assert [o.quantity for o in ledger.orders] == pytest.approx(
        [o.quantity for o in reference.orders], rel=1e-12
    )
    assert [(f.fill_id, f.price) for f in ledger.fills] == [
        (f.fill_id, f.price) for f in reference.fills
    ]
    assert [f.quantity for f in ledger.fills] == pytest.approx(
        [f.quantity for f in reference.fills], rel=1e-12
    )
    last, reference_last = ledger.snapshots[-1], reference.snapshots[-1]
    assert last.asof == reference_last.asof
    assert last.equity == pytest.approx(reference_last.equity, rel=1e-12)
    assert last.cash == pytest.approx(reference_last.cash, rel=1e-12)
    assert last.positions == pytest.approx(reference_last.positions, rel=1e-12)
    for summary in (outcome.summary, outcome.summary_at_end_of_data):
        assert summary.keys() == expected.summary.keys()
        for key, value in expected.summary.items():
            if isinstance(value, float):
                assert summary[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            else:
                assert summary[key] == value, key


def crash_run(redis_url: str, tmp_path: Path, bars: int, kill_count: int) -> None:
    kills = draw_kills(SEED, kill_count, bars)
    print(f"crash seed {SEED} (DEEPFACTOR_CRASH_SEED), {bars} bars, kills: {kills}")
    base = f"test-crash-{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        expected = run_account(tmp_path, "straight", redis_url, base, bars, [])
        print(f"run without kills: {time.monotonic() - started:.1f}s")
        config = load_config(None, SETTINGS)
        market = config.market
        panel = SyntheticSource(market.symbols, bars, seed=market.seed, start=market.start).panel()
        backtest = Backtest(config, panel).run()
        assert expected.summary["final_equity"] == pytest.approx(
            backtest["final_equity"], rel=1e-12
        )
        assert expected.summary["bars"] == bars and expected.summary["orders"] > 0
        check_books(expected, bars)

        started = time.monotonic()
        outcome = run_account(tmp_path, "killed", redis_url, base, bars, kills)
        print(f"run with {len(outcome.killed)} kills: {time.monotonic() - started:.1f}s")
        print("killed:", ", ".join(outcome.killed))
        assert len(outcome.killed) == kill_count
        assert {k.victim for k in kills} == set(VICTIMS)
        check_books(outcome, bars)
        check_same_account(outcome, expected)
    finally:
        delete_namespaces(redis_url, base)


def test_draw_is_reproducible_and_kills_each_victim():
    kills = draw_kills(SEED, 3, 160)
    assert kills == draw_kills(SEED, 3, 160)
    assert {k.victim for k in kills} == set(VICTIMS)
    assert len({k.bars for k in draw_kills(SEED, 24, 400)}) == 24


def test_processes_killed_three_times_end_like_the_run_without_kills(redis_url, tmp_path):
    crash_run(redis_url, tmp_path, bars=160, kill_count=3)


@pytest.mark.slow
def test_processes_killed_24_times_end_like_the_run_without_kills(redis_url, tmp_path):
    crash_run(redis_url, tmp_path, bars=400, kill_count=24)
