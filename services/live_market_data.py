"""Live market data: closed candles polled through ccxt become BarSets, one per timestamp.

A timestamp is published once every symbol has either delivered its candle for it or moved
past it (the exchange will not send that candle any more: a gap, logged by the source), so a
bar set is complete whenever the exchange has the data, and never waits forever on a symbol
that stopped trading. Candles are published strictly in time order and never twice.
"""

from __future__ import annotations

import threading

import structlog

from engine.bus import Bus
from engine.data.ccxt_source import Candle, CcxtOhlcvSource
from engine.events import BarSet, make_event
from engine.timeframes import timeframe_delta, utc_from_ms

log = structlog.get_logger("services.live_market_data")


class LiveMarketDataService:
    """Polls a ccxt source and publishes each complete timestamp's BarSet."""

    name = "market-data"

    def __init__(
        self, bus: Bus, source: CcxtOhlcvSource, since_ms: int, after_ms: int | None = None
    ) -> None:
        """``after_ms``: open time of the last bar already published (a continued account);
        candles up to it are not published again."""
        self.bus = bus
        self.source = source
        self.since_ms = since_ms
        self.timeframe = source.timeframe
        self.bars_published = 0
        self._pending: dict[int, dict[str, Candle]] = {}
        self._latest: dict[str, int] = {}
        self._last_published_ms = -1 if after_ms is None else after_ms

    def poll_once(self) -> int:
        """Fetch newly closed candles and publish every timestamp now complete; return how many."""
        for symbol, candles in self.source.poll_closed(self.since_ms).items():
            for candle in candles:
                if candle.timestamp > self._last_published_ms:
                    self._pending.setdefault(candle.timestamp, {})[symbol] = candle
                self._latest[symbol] = max(self._latest.get(symbol, -1), candle.timestamp)
        if len(self._latest) < len(self.source.symbols):
            return 0  # a symbol has sent nothing yet: its first bars may still come
        complete_up_to = min(self._latest.values())
        ready = sorted(t for t in self._pending if t <= complete_up_to)
        for timestamp in ready:
            self._publish(timestamp, self._pending.pop(timestamp))
        return len(ready)

    def _publish(self, timestamp: int, candles: dict[str, Candle]) -> None:
        symbols = tuple(s for s in self.source.symbols if s in candles)
        rows = [candles[s] for s in symbols]
        bars = BarSet(
            timeframe=self.timeframe,
            bar_open=utc_from_ms(timestamp),
            symbols=symbols,
            open=tuple(c.open for c in rows),
            high=tuple(c.high for c in rows),
            low=tuple(c.low for c in rows),
            close=tuple(c.close for c in rows),
            volume=tuple(c.volume for c in rows),
        )
        close_time = utc_from_ms(timestamp) + timeframe_delta(self.timeframe)
        corr = f"bar-{close_time:%Y%m%dT%H%M%SZ}"
        self.bus.publish(BarSet.TOPIC, make_event(bars, source=self.name, corr=corr, ts=close_time))
        self._last_published_ms = timestamp
        self.bars_published += 1
        if len(symbols) < len(self.source.symbols):
            log.warning(
                "data.partial_bar_set",
                timestamp=utc_from_ms(timestamp).isoformat(),
                missing=[s for s in self.source.symbols if s not in candles],
            )

    def run(self, stop: threading.Event, poll_interval_s: float) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            published = self.poll_once()
            if published:
                log.info("data.published", bar_sets=published, total=self.bars_published)
            stop.wait(poll_interval_s)
