"""Execution service: hands OrderRequests to the broker adapter and publishes what comes back
(OrderUpdate, Fill). It knows brokers only through ``brokers.protocol.Broker``: the simulated
broker matches the bars it is fed, an exchange adapter polls the exchange on each bar.

A request delivered again (the bus delivers at least once; a rebalance run again publishes the
same client order ids) trades nothing: the broker answers it with the order's current state.

State: the adapter's ``snapshot`` (the simulated account, or an exchange adapter's order book)
is committed with the acknowledgement of each message, so a restarted service trades on
exactly the account its last commit left, and handles again only the messages that commit did
not cover. A message handled again publishes again what it published the first time (the same
fills, numbered within their order, the same updates): the rebalancer books a fill once by its
id and counts one terminal update per order. ``halted`` is not part of the state: a halt
belongs to the run that sent it.
"""

from __future__ import annotations

import msgspec
import structlog

from brokers.protocol import Broker, BrokerError
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
from services.runtime.loop import Handler, Service, decode_state, encode_state

log = structlog.get_logger("services.daemons.execution")
STATE_VERSION = 2


class ExecutionState(msgspec.Struct, frozen=True, kw_only=True):
    """The execution service's committed state: its broker adapter's snapshot."""

    version: int
    broker: str  # the adapter's name: a snapshot restores only into the same kind of adapter
    account: bytes


class ExecutionService(Service):
    """Routes orders to a broker; refuses new orders while halted."""

    name = "execution"
    commit_each_message = True  # its handlers publish orders or trade: no batch replay

    def __init__(self, bus: Bus, clock: Clock, broker: Broker) -> None:
        self.broker = broker
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {OrderRequest: self.on_order, BarSet: self.on_bars, BarBlock: self.on_block}

    def state(self) -> ExecutionState:
        return ExecutionState(
            version=STATE_VERSION, broker=self.broker.name, account=self.broker.snapshot()
        )

    def snapshot_state(self) -> bytes:
        return encode_state(self.state())

    def restore_state(self, blob: bytes) -> None:
        state = decode_state(blob, ExecutionState, STATE_VERSION, self.name)
        if state.broker != self.broker.name:
            raise ValueError(
                f"the execution state holds a {state.broker!r} account, this run's broker is "
                f"{self.broker.name!r}: a paper account cannot continue on another broker "
                "(start over with --fresh, or use the broker it was created with)"
            )
        self.broker.restore(state.account)

    def start(self) -> None:
        """Book what happened at the venue while this service was down (an exchange adapter's
        fills and cancels), before handling anything new."""
        missed = self.broker.reconcile()
        if missed:
            log.warning("execution.reconciled", events=len(missed), broker=self.broker.name)
            self.emit(missed, corr="reconcile")

    def state_figures(self) -> dict[str, object]:
        figures: dict[str, object] = {
            "broker": self.broker.name,
            "open_orders": len(self.broker.open_orders()),
        }
        try:  # an exchange's balances are a network call: a restart must not wait on them
            balances = self.broker.balances()
        except BrokerError as error:
            figures["balances"] = f"unavailable: {error}"
        else:
            figures.update(cash=round(balances.cash, 2), positions=len(balances.positions))
        return figures

    def on_order(self, event: Envelope) -> None:
        order = event.payload
        assert isinstance(order, OrderRequest)
        # Both calls are idempotent by client order id: an order handled before (this handler
        # run again, or the request published again) is answered with its current state, and
        # trades nothing. The answer is passed on as it is.
        # An operator's halt lets reduce-only orders through: they are how --flatten and the
        # risk cuts close positions. A run's halt (the end of a replay) lets nothing through.
        if self.halted and not (order.reduce_only and self.halt_origin == "operator"):
            self.emit(self.broker.reject(order, "trading halted"), corr=event.corr)
            return
        self.emit(self.broker.submit(order), corr=event.corr)

    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        results = self.broker.on_bar(bars)
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
