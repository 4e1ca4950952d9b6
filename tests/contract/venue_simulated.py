"""The paper broker as a contract-suite venue: a market that trades where the test says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from brokers.simulated import SimulatedBroker
from engine.events import BarSet, EventPayload
from engine.portfolio.lots import LotRules
from tests.contract.venue import Venue

DAY = timedelta(days=1)
RULES = LotRules(amount_step=0.00001, min_amount=0.00001, min_notional=5.0)


class SimulatedVenue(Venue):
    """Daily bars of one symbol; every step is a bar opening where the last one closed."""

    symbol = "BTC/USDT"

    def __init__(self) -> None:
        self.price = 30_000.0
        self.cash = 100_000.0
        self._open = datetime(2024, 1, 1, tzinfo=UTC)
        self.broker = self._new_broker()
        self._bar(self.price, self.price, self.price)  # the market is known from here on

    def _new_broker(self) -> SimulatedBroker:
        return SimulatedBroker(
            initial_cash=self.cash,
            fee_rate=0.001,
            maker_fee_rate=0.0005,
            order_ttl_bars=0,  # good till cancelled, like an exchange's GTC limit order
            lot_rules={self.symbol: RULES},
        )

    def _bar(self, close: float, high: float, low: float) -> list[EventPayload]:
        bars = BarSet(
            timeframe="1d",
            bar_open=self._open,
            symbols=(self.symbol,),
            open=(self.price,),
            high=(max(high, self.price, close),),
            low=(min(low, self.price, close),),
            close=(close,),
            volume=(1e6,),
        )
        self._open += DAY
        self.price = close
        return self.broker.on_bar(bars)

    def now(self) -> datetime:
        return self._open

    def advance(self) -> list[EventPayload]:
        return self._bar(self.price, self.price, self.price)

    def cross(self, price: float) -> list[EventPayload]:
        return self._bar(price, price, price)

    def restart(self) -> SimulatedBroker:
        restored = self._new_broker()
        restored.restore(self.broker.snapshot())
        restored.reconcile()
        self.broker = restored
        return restored

    def minimum_notional(self) -> float:
        return RULES.min_notional
