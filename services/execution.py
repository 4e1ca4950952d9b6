"""Execution service: hands OrderRequests to the broker adapter and publishes what comes back
(OrderUpdate, Fill). The simulated broker is fed the same bars the strategy sees.

A request delivered again (the bus delivers at least once; a rebalance run again publishes the
same client order ids) trades nothing: the broker answers it with the order's current state.
"""

from __future__ import annotations

import structlog

from brokers.simulated import SimulatedBroker
from engine.bus import Bus
from engine.clock import Clock
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    Envelope,
    EventPayload,
    OrderRequest,
)
from services.runtime import Handler, Service

log = structlog.get_logger("services.execution")


class ExecutionService(Service):
    """Routes orders to a broker; refuses new orders while halted."""

    name = "execution"
    commit_each_message = True  # its handlers publish orders or trade: no batch replay

    def __init__(self, bus: Bus, clock: Clock, broker: SimulatedBroker) -> None:
        self.broker = broker
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {OrderRequest: self.on_order, BarSet: self.on_bars, BarBlock: self.on_block}

    def on_order(self, event: Envelope) -> None:
        order = event.payload
        assert isinstance(order, OrderRequest)
        # Both calls are idempotent by client order id: an order handled before (this handler
        # run again, or the request published again) is answered with its current state, and
        # trades nothing. The answer is passed on as it is.
        if self.halted:
            self.emit(self.broker.reject(order, "trading halted"), corr=event.corr)
            return
        self.emit(self.broker.submit(order), corr=event.corr)

    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        results = self.broker.on_bar(bars, bars.close_time)
        if results:
            self.emit(results, corr=event.corr)

    def on_block(self, event: Envelope) -> None:
        block = event.payload
        assert isinstance(block, BarBlock)
        results = self.broker.on_block(block)
        if results:
            self.emit(results, corr=event.corr)

    def on_control(self, control: Control, event: Envelope) -> None:
        if control.command == "halt":
            cancelled = self.broker.cancel_open_orders(f"halted: {control.reason or 'operator'}")
            if cancelled:
                log.warning(
                    "execution.orders_cancelled", count=len(cancelled), reason=control.reason
                )
                self.emit(cancelled, corr=event.corr)
