"""ccxt's real Binance class as a contract-suite venue, over the recorded exchange double.

The exchange is built the way a run builds it (``exchange_from_settings``, sandbox on, keys
from an environment mapping) and then talks HTTP to ``tests.recorded_exchange``, which answers
with the recorded official Binance bodies, so ccxt's signing, parsing and error mapping run.

BTC/USDT trades at 0.5 USDT. The recorded market rules come from Binance's documentation
examples (LOT_SIZE step and minimum 0.001, MIN_NOTIONAL 0.001), sized for a cheap asset: at
this price the smallest lot is worth less than the minimum notional, so an order the suite
makes "below the minimum notional" is a valid lot the exchange refuses for its notional, and
every other order of the suite is a whole number of steps. Market orders fill when submitted
(Binance's FULL response carries the trades); ``advance`` moves the venue's clock a day and
polls, as the execution service does on each bar.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from brokers.ccxt_broker import CcxtBroker, CcxtSettings
from brokers.ccxt_exchange import API_KEY_ENV, SECRET_ENV, exchange_from_settings
from engine.events import BarSet, EventPayload
from tests.contract.venue import Venue
from tests.recorded_exchange import RecordedExchange

STEP = timedelta(days=1)
ENVIRON = {API_KEY_ENV: "venue-ccxt-api-key-0001", SECRET_ENV: "venue-ccxt-secret-0001"}


class CcxtVenue(Venue):
    """A Binance spot account (sandbox) with USDT cash, trading BTC/USDT."""

    symbol = "BTC/USDT"

    def __init__(self) -> None:
        self.price = 0.5
        self.cash = 10_000.0
        self.exchange = RecordedExchange(
            balances={"USDT": self.cash},
            prices={self.symbol: self.price},
            start=datetime(2024, 1, 1, tzinfo=UTC),
        )
        self.backoff_waits: list[float] = []
        self.reconciled: list[EventPayload] = []  # what the last restart's reconcile reported
        self.broker = self._new_broker()

    def _new_broker(self) -> CcxtBroker:
        exchange = exchange_from_settings("binance", sandbox=True, environ=ENVIRON)
        self.exchange.attach(exchange)
        return CcxtBroker(
            exchange,
            CcxtSettings(),
            sleep=self.backoff_waits.append,
            clock=lambda: self.exchange.now_ms / 1000,  # the venue's clock, as the fills'
        )

    def _bar(self) -> list[EventPayload]:
        bars = BarSet(
            timeframe="1d",
            bar_open=self.now() - STEP,
            symbols=(self.symbol,),
            open=(self.price,),
            high=(self.price,),
            low=(self.price,),
            close=(self.price,),
        )
        return self.broker.on_bar(bars)

    def now(self) -> datetime:
        return self.exchange.now()

    def advance(self) -> list[EventPayload]:
        self.exchange.advance(STEP.total_seconds())
        self.exchange.set_price(self.symbol, self.price)
        return self._bar()

    def cross(self, price: float) -> list[EventPayload]:
        self.exchange.advance(STEP.total_seconds())
        self.exchange.set_price(self.symbol, price)
        self.price = price
        return self._bar()

    def restart(self) -> CcxtBroker:
        restored = self._new_broker()
        restored.restore(self.broker.snapshot())
        self.reconciled = restored.reconcile()
        self.broker = restored
        return restored

    def minimum_notional(self) -> float:
        return self.broker.lot_rules()[self.symbol].min_notional
