"""Build the set of services a run needs from its config: one place, used by every mode."""

from __future__ import annotations

from dataclasses import dataclass

from apscheduler.triggers.base import BaseTrigger

from brokers.simulated import SimulatedBroker
from engine.bus import Bus, MemoryBus
from engine.clock import Clock, WallClock
from engine.config import Config
from engine.scheduling import build_trigger
from services.execution import ExecutionService
from services.factor_update import FactorUpdateService
from services.rebalance import RebalanceService
from services.recorder import RecorderService
from services.runtime import Service
from services.signal import SignalService


@dataclass
class Services:
    """The consuming services of one run, in pipeline order."""

    factor_update: FactorUpdateService
    signal: SignalService
    rebalance: RebalanceService
    execution: ExecutionService
    recorder: RecorderService

    def all(self) -> list[Service]:
        return [self.factor_update, self.signal, self.rebalance, self.execution, self.recorder]


def schedule_trigger(config: Config) -> BaseTrigger:
    """Return the rebalance trigger of ``config``'s [schedule]."""
    return build_trigger(config.schedule.cron, config.schedule.interval)


def validate(config: Config) -> None:
    """Check what the config schema alone cannot (factor names and parameters against the
    library, the schedule, neutralisers, factor files), before anything starts.

    Raises
    ------
    ConfigError
        Naming the key at fault.
    """
    schedule_trigger(config)
    FactorUpdateService(MemoryBus(), WallClock(), config.strategy)


def build_services(config: Config, bus: Bus, clock: Clock) -> Services:
    """Return every consuming service wired to ``bus`` and ``clock``."""
    factors = config.strategy.factors
    broker = SimulatedBroker(
        initial_cash=config.portfolio.initial_cash,
        fee_rate=config.broker.fee_rate,
        fill_price=config.broker.fill_price,
        fractional=config.broker.fractional,
        fee_currency=config.broker.quote_currency,
    )
    return Services(
        factor_update=FactorUpdateService(bus, clock, config.strategy),
        signal=SignalService(bus, clock, factors, model=config.strategy.name),
        rebalance=RebalanceService(bus, clock, config.portfolio),
        execution=ExecutionService(bus, clock, broker),
        recorder=RecorderService(bus, clock),
    )
