"""A new account on an exchange trades a budget carved out of the exchange account's free quote
cash: refused when the cash is not there, with both figures named; holdings of the traded
symbols that the book will not know of are logged. Over ccxt's real Binance class and the
recorded exchange double."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from brokers.ccxt_broker import CcxtBroker, CcxtSettings
from brokers.protocol import BrokerError
from engine.errors import ConfigError
from engine.logging import forget_secrets
from services.commands.cli_run import new_account
from services.runtime.account import ACCOUNT_FILE
from services.runtime.budget import check_exchange_budget
from tests.recorded_exchange import RecordedExchange

SYMBOL = "BTC/USDT"


@pytest.fixture(autouse=True)
def _forget_test_keys():
    yield
    forget_secrets()
    structlog.reset_defaults()


def broker_on(venue: RecordedExchange) -> CcxtBroker:
    return CcxtBroker(venue.binance(), CcxtSettings(), sleep=lambda _: None)


def test_a_budget_within_the_free_cash_is_accepted_and_logged():
    venue = RecordedExchange(balances={"USDT": 25_000.0}, prices={SYMBOL: 4000.0})
    with capture_logs() as logs:
        balances = check_exchange_budget(broker_on(venue), 20_000.0, [SYMBOL])
    assert balances.cash == 25_000.0
    (checked,) = [e for e in logs if e["event"] == "paper.budget_checked"]
    assert (checked["budget"], checked["free_cash"], checked["quote"]) == (
        20_000.0,
        25_000.0,
        "USDT",
    )
    assert not [e for e in logs if e["event"] == "paper.holdings_outside_book"]


def test_a_budget_beyond_the_free_cash_is_refused_naming_both_figures_and_the_key():
    venue = RecordedExchange(balances={"USDT": 1_500.5}, prices={SYMBOL: 4000.0})
    with pytest.raises(ConfigError) as refused:
        check_exchange_budget(broker_on(venue), 1_000_000.0, [SYMBOL])
    message = str(refused.value)
    assert "[portfolio] initial_cash is 1,000,000.00 USDT" in message
    assert "holds 1,500.50 USDT free" in message and "ccxt:binance" in message


def test_holdings_of_a_traded_symbol_are_logged_as_outside_the_book():
    venue = RecordedExchange(balances={"USDT": 5_000.0, "BTC": 0.25}, prices={SYMBOL: 4000.0})
    with capture_logs() as logs:
        check_exchange_budget(broker_on(venue), 5_000.0, [SYMBOL])
    (held,) = [e for e in logs if e["event"] == "paper.holdings_outside_book"]
    assert held["holdings"] == {SYMBOL: 0.25} and held["log_level"] == "warning"


def test_an_exchange_that_cannot_be_asked_raises_broker_error():
    venue = RecordedExchange(balances={"USDT": 5_000.0}, prices={SYMBOL: 4000.0})
    venue.go_down("connection")
    with pytest.raises(BrokerError):
        check_exchange_budget(broker_on(venue), 1_000.0, [SYMBOL])


def test_only_a_new_account_is_checked(tmp_path):
    assert new_account(tmp_path, fresh=False)  # nothing there yet
    (tmp_path / ACCOUNT_FILE).write_text("{}")
    assert not new_account(tmp_path, fresh=False)  # continued: its book follows its fills
    assert new_account(tmp_path, fresh=True)  # --fresh replaces it


def test_paper_on_an_exchange_refuses_a_budget_the_account_lacks_before_starting(
    tmp_path, monkeypatch, capsys
):
    """`deepfactor paper --exchange` with [broker] kind = "ccxt": ccxt's real Binance class
    for candles (over the recorded-shape router) and for the account (over the exchange
    double holding 1,500 USDT); the default budget of 1,000,000 is refused with exit 2 and
    nothing is left behind."""
    import time

    import ccxt

    import brokers.ccxt_broker
    from brokers.ccxt_exchange import API_KEY_ENV, SECRET_ENV
    from services.commands.cli import main
    from tests.fixtures.ccxt_router import BinanceRouter, routed_binance_class

    now_ms = int(time.time() * 1000)
    router = BinanceRouter(now_ms=now_ms, listed_ms=now_ms - 86_400_000)
    monkeypatch.setattr(ccxt, "binance", routed_binance_class(router))
    venue = RecordedExchange(balances={"USDT": 1_500.0}, prices={SYMBOL: 4000.0})
    build = brokers.ccxt_broker.exchange_from_settings
    monkeypatch.setattr(
        brokers.ccxt_broker,
        "exchange_from_settings",
        lambda *args, **kwargs: venue.attach(build(*args, **kwargs)),
    )
    monkeypatch.setenv("DEEPFACTOR_BROKER__KIND", "ccxt")
    monkeypatch.setenv("DEEPFACTOR_PORTFOLIO__TOP_FRACTION", "1")
    monkeypatch.setenv(API_KEY_ENV, "budget-test-key-0001")
    monkeypatch.setenv(SECRET_ENV, "budget-test-secret-0001")
    out = tmp_path / "account"
    code = main(["paper", "--exchange", "binance", "--symbols", SYMBOL, "--out", str(out)])
    assert code == 2
    error = capsys.readouterr().err
    assert "[portfolio] initial_cash is 1,000,000.00 USDT" in error
    assert "holds 1,500.00 USDT free" in error
    assert ("GET", "/api/v3/account") in [(c.method, c.path) for c in venue.calls]
    assert not out.exists()  # refused before the account or its Redis was opened
