"""Which broker a run trades on: the paper broker by default, an exchange through ccxt when
configured, and real money only with --live and [broker] live_confirm together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from brokers.ccxt_broker import CcxtBroker
from brokers.simulated import SimulatedBroker
from engine.bus import MemoryBus
from engine.clock import WallClock
from engine.config import load_config
from engine.errors import ConfigError
from services.assembly import build_services, make_broker
from services.standalone import build_service

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"DEEPFACTOR_EXCHANGE_API_KEY": "test-key-0123", "DEEPFACTOR_EXCHANGE_SECRET": "secret-987"}


def config(**broker):
    return load_config(None, {f"DEEPFACTOR_BROKER__{k.upper()}": str(v) for k, v in broker.items()})


def test_the_default_is_the_paper_broker_with_the_configured_market_model():
    broker = make_broker(config(slippage_bps=7, max_participation=0.1, order_ttl_bars=4))
    assert isinstance(broker, SimulatedBroker)
    assert (broker.model.slippage_bps, broker.model.max_participation) == (7.0, 0.1)
    assert broker.order_ttl_bars == 4
    services = build_services(config(), MemoryBus(), WallClock())
    assert isinstance(services.execution.broker, SimulatedBroker)


def test_ccxt_kind_trades_on_the_exchange_sandbox_with_keys_from_the_environment():
    broker = make_broker(config(kind="ccxt", quote_currency="USDT"), environ=KEYS)
    assert isinstance(broker, CcxtBroker) and broker.name == "ccxt:binance"
    assert broker.exchange.apiKey == KEYS["DEEPFACTOR_EXCHANGE_API_KEY"]
    assert "testnet" in str(broker.exchange.urls["api"])  # the sandbox's endpoints


@pytest.mark.parametrize(
    ("settings", "live", "message"),
    [
        ({}, True, "--live trades through an exchange"),
        ({"kind": "ccxt", "sandbox": "false"}, False, "missing: --live, [broker] live_confirm"),
        ({"kind": "ccxt", "sandbox": "false"}, True, "missing: [broker] live_confirm = true"),
        ({"kind": "ccxt", "sandbox": "false", "live_confirm": "true"}, False, "missing: --live"),
        ({"kind": "ccxt"}, True, "configured for the sandbox"),
    ],
)
def test_real_money_needs_both_the_flag_and_the_setting(settings, live, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make_broker(config(**settings), live=live, environ=KEYS)


def test_keys_only_from_the_environment_and_never_echoed():
    with pytest.raises(ConfigError) as error:
        make_broker(config(kind="ccxt"), environ={"DEEPFACTOR_EXCHANGE_API_KEY": "only-key-123"})
    assert "DEEPFACTOR_EXCHANGE_SECRET" in str(error.value)
    assert "only-key-123" not in str(error.value)


def test_a_live_execution_process_trades_on_the_exchange(tmp_path):
    settings = config(kind="ccxt", sandbox="false", live_confirm="true")
    os.environ.update(KEYS)
    try:
        service = build_service(
            "execution", settings, MemoryBus(), WallClock(), tmp_path, live=True
        )
    finally:
        for key in KEYS:
            os.environ.pop(key, None)
    assert isinstance(service.broker, CcxtBroker)
    assert "testnet" not in str(service.broker.exchange.urls["api"])


def test_run_refuses_live_before_waiting_for_the_account(tmp_path):
    env = {**os.environ, "DEEPFACTOR_BUS__REDIS_URL": "redis://127.0.0.1:6379/9"}
    env.update({"DEEPFACTOR_BROKER__KIND": "ccxt", "DEEPFACTOR_BROKER__SANDBOX": "false"})
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "execution", "--live", "--out",
         str(tmp_path / "account"), "--wait", "30"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "missing: [broker] live_confirm = true" in result.stderr
    signal = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "signal", "--live", "--out",
         str(tmp_path / "account")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert signal.returncode == 2 and "--live: an option of `run execution`" in signal.stderr
