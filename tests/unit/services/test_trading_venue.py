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
from services.runtime.assembly import build_services, make_broker, trading_venue

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


def test_a_live_paper_run_trades_on_the_exchange_itself():
    settings = config(kind="ccxt", sandbox="false", live_confirm="true")
    broker = make_broker(settings, live=True, environ=KEYS)
    assert isinstance(broker, CcxtBroker)
    assert "testnet" not in str(broker.exchange.urls["api"])


def cli(*arguments: str, **settings: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPFACTOR_BUS__REDIS_URL": "redis://127.0.0.1:6379/9", **settings}
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", *arguments],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_commands_refuse_an_exchange_broker_on_replayed_bars_before_starting(tmp_path):
    ccxt = {"DEEPFACTOR_BROKER__KIND": "ccxt"}
    out = str(tmp_path / "account")
    run = cli("run", "execution", "--out", out, "--wait", "30", **ccxt)
    assert run.returncode == 2 and "`run` processes trade the replay" in run.stderr
    replay = cli("paper", "--synthetic", "--bars", "5", "--out", out, **ccxt)
    assert replay.returncode == 2 and "it needs live candles (--exchange" in replay.stderr
    live = cli("paper", "--synthetic", "--live", "--out", out)
    assert live.returncode == 2 and "--live trades on live candles" in live.stderr
    unconfirmed = cli(
        "paper", "--exchange", "binance", "--symbols", "BTC/USDT", "--live", "--out", out,
        **ccxt, DEEPFACTOR_BROKER__SANDBOX="false", **KEYS,
    )  # fmt: skip
    assert unconfirmed.returncode == 2
    assert "missing: [broker] live_confirm = true" in unconfirmed.stderr
    assert not (tmp_path / "account").exists()  # refused before anything started


def test_live_candles_bring_the_exchange_market_rules_to_the_paper_broker_and_rebalancer():
    from engine.data.ccxt_source import CcxtOhlcvSource
    from services.runtime.paper import market_rules
    from tests.fixtures.ccxt_router import BinanceRouter, offline_binance

    router = BinanceRouter(now_ms=1_704_067_500_000, listed_ms=1_704_067_200_000)
    source = CcxtOhlcvSource(
        "binance", ["BTC/USDT", "ETH/BTC"], "1m", exchange=offline_binance(router),
        clock=lambda: router.now_ms / 1000, sleep=lambda s: None,
    )  # fmt: skip
    rules = market_rules(source)
    markets = source.exchange.markets
    assert set(rules) == {"BTC/USDT", "ETH/BTC"}
    for symbol, rule in rules.items():  # what ccxt parsed from exchangeInfo's filters
        assert rule.amount_step == markets[symbol]["precision"]["amount"]
        assert rule.min_notional == (markets[symbol]["limits"]["cost"]["min"] or 0.0)
    services = build_services(
        config(), MemoryBus(), WallClock(), *trading_venue(config(), market_rules=rules)
    )
    assert services.execution.broker.lot_rules == rules
    assert services.rebalance.lot_rules == rules
