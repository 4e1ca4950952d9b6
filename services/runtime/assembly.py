"""Build the set of services a run needs from its config: one place, used by every mode."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from apscheduler.triggers.base import BaseTrigger

from brokers.protocol import Broker
from brokers.simulated import SimulatedBroker
from engine.bus import Bus, MemoryBus
from engine.clock import Clock, WallClock
from engine.config import Config
from engine.errors import ConfigError
from engine.portfolio.lots import LotRules
from engine.scheduling import build_trigger
from strategies.weighting import top_fraction_count

if TYPE_CHECKING:
    from services.daemons.execution import ExecutionService
    from services.daemons.factor_update import FactorUpdateService
    from services.daemons.rebalance import RebalanceService
    from services.daemons.recorder import RecorderService
    from services.daemons.signal import SignalService
    from services.runtime.loop import Service


class Services:
    """The consuming services of one run, in pipeline order.

    Each is built, and its module imported, when first asked for: a process that runs one
    service (``deepfactor run SERVICE``) loads only that service's libraries, not the
    rebalancer's risk statistics or the signal service's models (``all`` builds every one).
    """

    def __init__(
        self,
        config: Config,
        bus: Bus,
        clock: Clock,
        broker: Broker | None = None,
        lot_rules: dict[str, LotRules] | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.clock = clock
        self.broker = broker
        self.lot_rules = lot_rules

    @cached_property
    def factor_update(self) -> FactorUpdateService:
        from services.daemons.factor_update import FactorUpdateService

        return FactorUpdateService(self.bus, self.clock, self.config.strategy)

    @cached_property
    def signal(self) -> SignalService:
        from services.daemons.signal import SignalService

        config = self.config
        return SignalService(
            self.bus,
            self.clock,
            config.strategy.factors,
            model=config.strategy.name,
            registry=config.model.registry,
            lookback=config.model.lookback,
            device=config.model.device,
            inference_threads=config.model.inference_threads,
        )

    @cached_property
    def rebalance(self) -> RebalanceService:
        from services.daemons.rebalance import RebalanceService

        config = self.config
        return RebalanceService(
            self.bus,
            self.clock,
            config.portfolio,
            config.risk,
            lot_rules=self.lot_rules,
            # Whole units when the broker trades no fractions; a market's own lot rules
            # (ccxt metadata) are passed in by the adapters that know them.
            default_lot=LotRules() if config.broker.fractional else LotRules(amount_step=1.0),
            fee_rate=config.broker.fee_rate,
        )

    @cached_property
    def execution(self) -> ExecutionService:
        from services.daemons.execution import ExecutionService

        broker = self.broker if self.broker is not None else simulated_broker(self.config)
        return ExecutionService(self.bus, self.clock, broker)

    @cached_property
    def recorder(self) -> RecorderService:
        from services.daemons.recorder import RecorderService

        return RecorderService(self.bus, self.clock, self.config.risk)

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
    from services.daemons.factor_update import FactorUpdateService

    schedule_trigger(config)
    FactorUpdateService(MemoryBus(), WallClock(), config.strategy)
    replay_start(config)
    check_portfolio(config)


def check_portfolio(config: Config) -> None:
    """Check the [portfolio] and [risk] keys that bound each other.

    Raises
    ------
    ConfigError
        Naming both keys and their values.
    """
    portfolio = config.portfolio
    if portfolio.net_exposure_min > portfolio.net_exposure_max:
        raise ConfigError(
            f"[portfolio] net_exposure_min {portfolio.net_exposure_min} is above "
            f"net_exposure_max {portfolio.net_exposure_max}"
        )
    if portfolio.max_weight > portfolio.gross_exposure:
        raise ConfigError(
            f"[portfolio] max_weight {portfolio.max_weight} is above gross_exposure "
            f"{portfolio.gross_exposure}: no asset can hold more than the whole book"
        )


def replay_start(config: Config):  # -> np.datetime64 | None
    """``[paper] start`` as a UTC time (None when empty).

    Raises
    ------
    ConfigError
        Not an ISO date or date-time.
    """
    import numpy as np

    text = config.paper.start.strip()
    if not text:
        return None
    try:
        return np.datetime64(text.removesuffix("Z"), "ns")
    except ValueError:
        raise ConfigError(
            f"[paper] start must be an ISO date such as 2020-01-01, received {text!r}"
        ) from None


def check_universe(config: Config, symbols: Sequence[str], where: str) -> None:
    """Refuse a universe in which ``[portfolio] top_fraction`` can never select an asset.

    The count held is rounded down, so 0.25 of three symbols holds nothing: such a run would
    go to its end without an order and without saying why.

    Raises
    ------
    ConfigError
        Naming the key, the universe's size and what would be needed.
    """
    fraction = config.portfolio.top_fraction
    if top_fraction_count(fraction, len(symbols)) > 0:
        return
    needed = math.ceil(1.0 / fraction - 1e-9)
    raise ConfigError(
        f"[portfolio] top_fraction {fraction} selects no asset from the {len(symbols)} "
        f"symbol(s) of {where} (the count held is rounded down): it needs at least {needed} "
        f"symbols, or a top_fraction >= {1.0 / max(len(symbols), 1):.4g}"
    )


def simulated_broker(
    config: Config, market_rules: dict[str, LotRules] | None = None
) -> SimulatedBroker:
    """The paper broker of ``[broker]``, with a fresh account of ``[portfolio] initial_cash``,
    enforcing ``market_rules`` (an exchange's, when the run trades its live candles)."""
    settings = config.broker
    return SimulatedBroker(
        lot_rules=dict(market_rules or {}),
        initial_cash=config.portfolio.initial_cash,
        fee_rate=settings.fee_rate,
        maker_fee_rate=settings.maker_fee_rate,
        fill_price=settings.fill_price,
        fractional=settings.fractional,
        fee_currency=settings.quote_currency,
        slippage_bps=settings.slippage_bps,
        impact_coefficient=settings.impact_coefficient,
        max_participation=settings.max_participation,
        order_ttl_bars=settings.order_ttl_bars,
        latency_s=settings.latency_ms / 1000.0,
    )


def make_broker(
    config: Config, *, live: bool = False, environ: Mapping[str, str] | None = None
) -> Broker:
    """The broker of ``[broker] kind``: the paper broker, or an exchange through ccxt (its
    sandbox, or real money with ``live`` and ``[broker] live_confirm``; keys from
    ``environ``, the process environment by default). Builds without any network call."""
    settings = config.broker
    if settings.kind == "simulated":
        if live:
            raise ConfigError(
                '--live trades through an exchange: set [broker] kind = "ccxt" (and '
                "sandbox = false, live_confirm = true); the simulated broker is paper only"
            )
        return simulated_broker(config)
    # Imported here: ccxt and its hundred exchanges load only for a run that trades on one.
    from brokers.ccxt_broker import CcxtBroker, CcxtSettings, exchange_from_settings

    exchange = exchange_from_settings(
        settings.exchange,
        sandbox=settings.sandbox,
        live=live,
        live_confirmed=settings.live_confirm,
        environ=os.environ if environ is None else environ,
    )
    return CcxtBroker(exchange, CcxtSettings(quote_currency=settings.quote_currency))


def trading_venue(
    config: Config,
    *,
    live: bool = False,
    market_rules: dict[str, LotRules] | None = None,
) -> tuple[Broker, dict[str, LotRules] | None]:
    """The broker of a paper or live run and the market rules its orders must keep: an
    exchange broker's own (loaded from it: the one network call here), else
    ``market_rules`` (the exchange metadata of live candles), enforced by the paper broker."""
    if config.broker.kind == "simulated" and not live:
        return simulated_broker(config, market_rules), market_rules
    broker = make_broker(config, live=live)
    lot_rules = getattr(broker, "lot_rules", None)
    return broker, (lot_rules() if callable(lot_rules) else market_rules)


def build_services(
    config: Config,
    bus: Bus,
    clock: Clock,
    broker: Broker | None = None,
    lot_rules: dict[str, LotRules] | None = None,
) -> Services:
    """Return every consuming service wired to ``bus`` and ``clock`` (each built when first
    asked for: ``Services``); execution trades through ``broker`` (default: the paper broker
    of ``[broker]``) and the rebalancer rounds to ``lot_rules`` (an exchange's market rules,
    by symbol)."""
    return Services(config, bus, clock, broker, lot_rules)
