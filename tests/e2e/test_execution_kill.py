"""The execution service killed with SIGKILL in the middle of a batch of orders, then started
again with the same command: no order is lost and none is traded twice.

A real ``deepfactor run execution`` process on a real Redis. The account's bars are consumed
first; then 400 market orders are published at once, each filling as it is handled (its bar is
known), one commit per order. The process is killed once some but not all of them have been
handled (the kill point is checked, not hoped for), started again, and left to finish. Then,
from the streams: every order ends in exactly one terminal state, every fill id is unique,
each order's fills add up to its quantity, nothing is pending, and the restarted process
restored the account its last commit left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from engine.bus import RedisBus
from engine.events import BarSet, OrderRequest, make_event
from services.runtime.account import bind_account, open_account
from tests.audit import read_ledger, terminal_updates_per_order
from tests.conftest import delete_namespaces

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]
ORDERS = 400
SYMBOLS = tuple(f"SYN{i:02d}/USDT" for i in range(8))
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bars(n: int) -> BarSet:
    prices = tuple(100.0 + i for i in range(len(SYMBOLS)))
    return BarSet(
        timeframe="1d",
        bar_open=T0 + timedelta(days=n),
        symbols=SYMBOLS,
        open=prices,
        high=prices,
        low=prices,
        close=prices,
    )


def orders() -> list[OrderRequest]:
    return [
        OrderRequest(
            client_order_id=f"rb-kill-{n:03d}",
            rebalance_id="rb-kill",
            asof=T0 + timedelta(days=1),  # bar 0's close: bar 1's open fills it, known already
            symbol=SYMBOLS[n % len(SYMBOLS)],
            side="buy",
            quantity=1.0 + n % 3,
        )
        for n in range(ORDERS)
    ]


def wait_until(condition, what: str, process: subprocess.Popen, log: Path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"execution exited while {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out: {what}\n{log.read_text()[-3000:]}"
        time.sleep(0.001)


def test_execution_killed_mid_batch_neither_loses_nor_doubles_an_order(redis_url, tmp_path):
    base = f"test-exec-kill-{os.getpid()}"
    out = tmp_path / "account"
    account = open_account(out, base, "test orders")
    bus = RedisBus(redis_url, account.namespace, give_up_after_s=5)
    client = redis.Redis.from_url(redis_url)
    env = {
        **os.environ,
        "DEEPFACTOR_BUS__REDIS_URL": redis_url,
        "DEEPFACTOR_BUS__BLOCK_MS": "20",
        "DEEPFACTOR_RUN__INSTANCE": "kill-test",
        "DEEPFACTOR_LOG__LEVEL": "info",
        "DEEPFACTOR_BROKER__FEE_RATE": "0.001",
    }
    command = [sys.executable, "-m", "services.commands.cli", "run", "execution", "--out", str(out)]
    log = tmp_path / "execution.log"
    processes: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        with log.open("ab") as stderr:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        processes.append(process)
        return process

    fills_key = f"{account.namespace}:fills"
    try:
        bind_account(bus, account, out)
        for n in (0, 1):
            bus.publish("bars", make_event(bars(n), source="test", corr=f"bar-{n}"))
        first = start()

        def bars_consumed() -> bool:
            key = f"{account.namespace}:bars"
            if not client.exists(key):
                return False
            groups = {g["name"].decode(): g for g in client.xinfo_groups(key)}
            group = groups.get("execution")
            last = client.xinfo_stream(key)["last-generated-id"]
            # (entries-read would say it at once, but Redis before 7 does not report it)
            return (
                group is not None and group["last-delivered-id"] == last and group["pending"] == 0
            )

        wait_until(bars_consumed, "consuming the bars", first, log)
        requests = orders()
        bus.publish_many("orders", [make_event(o, source="test", corr="rb-kill") for o in requests])
        wait_until(lambda: client.xlen(fills_key) >= 40, "filling the first orders", first, log)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        at_kill = client.xlen(fills_key)
        assert 40 <= at_kill < ORDERS, f"the kill did not land mid-batch: {at_kill} fills"

        second = start()
        wait_until(lambda: client.xlen(fills_key) >= ORDERS, "finishing the batch", second, log)
        time.sleep(0.5)  # anything still to come (a second copy) would land now
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, log.read_text()[-3000:]

        ledger = read_ledger(bus)
        assert [o.client_order_id for o in ledger.orders] == [o.client_order_id for o in requests]
        assert set(terminal_updates_per_order(ledger).values()) == {1}
        ids = Counter(f.fill_id for f in ledger.fills)
        assert [i for i, n in ids.items() if n > 1] == []
        filled: Counter = Counter()
        for fill in ledger.fills:
            filled[fill.client_order_id] += fill.quantity
        assert filled == {o.client_order_id: o.quantity for o in requests}
        group = {g["name"].decode(): g for g in client.xinfo_groups(f"{account.namespace}:orders")}
        assert group["execution"]["pending"] == 0
        text = log.read_text()
        assert text.count('"run.started"') == 2
        assert '"service.state_restored"' in text  # the restart began from the last commit
        # The account: cash spent exactly once per fill.
        spent = sum(f.quantity * f.price + f.fee for f in ledger.fills)
        assert spent == pytest.approx(
            sum(o.quantity * (100.0 + SYMBOLS.index(o.symbol)) * 1.001 for o in requests)
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        bus.close()
        client.close()
        delete_namespaces(redis_url, base)
