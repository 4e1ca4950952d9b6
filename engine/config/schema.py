"""The typed, frozen shape of a deepfactor config file.

Sections mirror the TOML tables; every field has a default, so an empty file is a valid paper
config. Constraints live in the types, so a bad value fails at start-up, never mid-run.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class RunConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a run keeps its files and which Redis namespace it owns.

    ``instance`` names this process's consumers (``{service}-{instance}``), stable across
    restarts so a restarted service reads its own unacknowledged messages first; empty means
    the host name. Two instances of one service on one host need distinct names.
    """

    namespace: Name = "deepfactor"
    run_dir: str = "runs/paper"
    instance: Annotated[str, msgspec.Meta(pattern=r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$")] = ""
    # A stateful service's lock expires this long after its holder's last renewal: a hot
    # standby takes over within it when the active instance dies (engine/bus/leadership.py).
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 5.0


class BusConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Redis Streams bus settings.

    ``redis_url`` empty means: start a private redis-server under the run directory.
    ``claim_idle_ms`` is how long a message may sit unacked with a consumer before another
    instance takes it over; it must exceed the slowest handler, or live work gets stolen.
    """

    redis_url: str = ""
    block_ms: PositiveInt = 1000
    batch_size: PositiveInt = 256
    claim_idle_ms: NonNegativeInt = 30_000
    reclaim_interval_ms: PositiveInt = 5_000
    max_deliveries: PositiveInt = 5
    stream_maxlen: PositiveInt = 100_000
    processed_retention_s: PositiveInt = 7 * 24 * 3600
    reconnect_max_delay_s: PositiveFloat = 10.0
    # How long a run waits for Redis to answer at start-up before it fails (exit 1).
    connect_timeout_s: PositiveFloat = 30.0


class LogConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Log level and format; ``auto`` means console in a terminal, JSON lines otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Timeframe = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]*[smhdw]$")]
IsoDate = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]


class MarketConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where bars come from when no ``--data`` file is given: the seeded synthetic market."""

    symbols: PositiveInt = 20
    seed: int = 7
    start: IsoDate = "2020-01-01"
    timeframe: Timeframe = "1d"


class ScheduleConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When to rebalance: a 5-field crontab expression in UTC, or an interval like ``7d``."""

    name: Name = "weekly"
    cron: str = "0 0 * * MON"
    interval: str = ""
    # A fire (or, on start, the latest one missed while down) later than this is skipped.
    misfire_grace_s: NonNegativeInt = 60
    # Expiry of the lock that lets one scheduler fire; its holder renews it every third of
    # this, and another scheduler takes over at a fire time once it has expired.
    leader_lock_s: PositiveInt = 30


class FactorConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One factor of the strategy: its name in the factor library, its parameters (the
    library's defaults where omitted), and its weight in the score (negative: prefer low)."""

    name: str
    weight: float = 1.0
    params: dict[str, int] = {}


_DEFAULT_FACTORS = (
    FactorConfig(name="momentum", params={"lookback": 63, "skip": 5}),
    FactorConfig(name="trend", params={"lookback": 50}),
    FactorConfig(name="volatility", weight=-1.0, params={"lookback": 21}),
    FactorConfig(name="max_return", weight=-1.0, params={"lookback": 21}),
)


class StrategyConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which signal model scores assets, from which factors, preprocessed how."""

    # equal-weight: the configured factor weights (equal by default); trailing-ic: weights
    # from each factor's recent rank IC; lstm, asset-lstm, ridge: the active checkpoint of that
    # name in the model registry ([model] registry), trained with `deepfactor train`.
    name: Literal["equal-weight", "trailing-ic", "lstm", "asset-lstm", "ridge"] = "equal-weight"
    factors: tuple[FactorConfig, ...] = _DEFAULT_FACTORS
    # "bar": exposures on every bar (what a model reading factor history needs);
    # "rebalance": only at each rebalance's decision bar (all a periodic strategy reads).
    compute_on: Literal["bar", "rebalance"] = "bar"
    # Cross-sectional preprocessing before exposures are published.
    winsorize: Literal["mad", "quantile", "none"] = "mad"
    neutralize_against: tuple[str, ...] = ()
    # Long files (timestamp, symbol, one column per factor) whose columns join the factors.
    factor_files: tuple[str, ...] = ()


class ModelConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The signal models: where checkpoints live, how they are trained and served.

    ``registry`` is the checkpoint directory (``deepfactor train`` writes there, the signal
    service reads its active model there). ``lookback`` is in periods (factor snapshots);
    ``min_train`` and ``retrain_every`` are walk-forward steps in periods.
    """

    registry: str = "models"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads of the signal service's inference (torch.set_num_threads, set when it first
    # loads a model): a small LSTM gains nothing from more, and its p99 suffers when the
    # threads compete with the other services for the cores.
    inference_threads: PositiveInt = 1
    lookback: PositiveInt = 20
    hidden: PositiveInt = 32
    layers: PositiveInt = 1
    epochs: PositiveInt = 60
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1e-2
    weight_decay: Annotated[float, msgspec.Meta(ge=0)] = 1e-4
    patience: PositiveInt = 8
    validation_fraction: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] = 0.2
    objective: Literal["ic", "mean-variance"] = "ic"
    gate_penalty: Annotated[float, msgspec.Meta(ge=0)] = 1e-3
    risk_aversion: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    ridge_alpha: PositiveFloat = 10.0
    seed: NonNegativeInt = 0
    min_train: Annotated[int, msgspec.Meta(ge=10)] = 120
    retrain_every: PositiveInt = 20
    window: Literal["expanding", "rolling"] = "expanding"
    train_periods: NonNegativeInt = 0
    # Backtests: fit walk-forward inside the run (each period scored by a model fitted before
    # it) instead of serving the registry's active checkpoint.
    walk_forward: bool = False


class PortfolioConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How scores become target weights.

    ``optimizer`` (the default) maximises expected return minus ``risk_aversion``/2 times the
    variance (the ``risk_model`` covariance of the last ``covariance_window`` bars: ``pca``, the
    ``risk_factors`` leading principal components of the Ledoit-Wolf estimate plus a specific
    variance per asset, which keeps each asset's variance and solves several times faster at
    hundreds of assets; or ``ledoit-wolf`` itself) minus
    ``turnover_cost`` per unit of weight traded, under the caps. Expected returns follow
    Grinold's rule: ``expected_ic`` x volatility x z-score, over ``horizon_bars`` (the bars a
    rebalance's weights are held, over which the turnover cost is paid once). The simple schemes
    hold the top ``top_fraction`` of scored assets: equally (``top-k``), by score
    (``score-proportional``) or by inverse volatility.
    """

    initial_cash: PositiveFloat = 1_000_000.0
    construction: Literal["optimizer", "top-k", "score-proportional", "inverse-volatility"] = (
        "optimizer"
    )
    top_fraction: Fraction = 0.25
    # The most the book may hold in all (sum of |weights|, the rest in cash), and per asset.
    gross_exposure: Fraction = 1.0
    max_weight: Fraction = 0.25
    long_only: bool = True
    # Long-short only (long_only = false): bounds on the sum of signed weights.
    net_exposure_min: Annotated[float, msgspec.Meta(ge=-1, le=1)] = -0.1
    net_exposure_max: Annotated[float, msgspec.Meta(ge=-1, le=1)] = 0.1
    risk_aversion: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    expected_ic: PositiveFloat = 0.05
    horizon_bars: PositiveInt = 5
    turnover_cost: Annotated[float, msgspec.Meta(ge=0)] = 0.002
    # Most weight one rebalance may trade (sum of |changes|); 0: no cap.
    turnover_cap: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    covariance_window: Annotated[int, msgspec.Meta(ge=10)] = 120
    risk_model: Literal["pca", "ledoit-wolf"] = "pca"
    # pca: principal components kept (at most the window's bars and the universe's assets).
    risk_factors: PositiveInt = 20
    # A solve that fails (infeasible, solver error) keeps the previous weights, or goes to cash.
    on_failure: Literal["previous", "cash"] = "previous"
    min_order_notional: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Orders are sized at the decision bar's close and fill later (the next open): buys are
    # scaled down, all by one factor, until they fit the cash plus what the sells free when
    # every price moves this fraction against the account (fees included). 0: sized at the
    # close itself, fees still counted.
    cash_buffer: Annotated[float, msgspec.Meta(ge=0, lt=0.5)] = 0.0


Probability = Annotated[float, msgspec.Meta(gt=0.5, lt=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class RiskConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Risk limits, applied in order to the constructed target: volatility target, VaR and
    Expected Shortfall limits (scale exposure down, the rest in cash), drawdown stop. A limit
    set to 0 is off; ``enabled = false`` turns them all off (the kill switch and the pre-trade
    checks stay on).

    The drawdown stop measures equity against its peak since the last re-entry; at
    ``drawdown_stop`` it cuts exposure to ``drawdown_exposure`` of the target on the bar it
    happens, and re-enters at a rebalance once ``reentry_cooldown_bars`` bars have passed and,
    with ``reentry_filter = "market-trend"``, the equal-weight index of the universe is above
    its ``reentry_trend_bars``-bar average.
    """

    enabled: bool = True
    # historical simulation of the trailing window; filtered-historical: the same returns
    # rescaled to today's EWMA volatility (Hull-White); parametric (normal); cornish-fisher.
    var_method: Literal["historical", "filtered-historical", "parametric", "cornish-fisher"] = (
        "historical"
    )
    var_confidence: Probability = 0.99
    var_horizon: PositiveInt = 1
    var_window: Annotated[int, msgspec.Meta(ge=20)] = 250
    var_limit: NonNegativeFloat = 0.04
    # When the VaR and ES limits act: on each rebalance's target ("rebalance"), or also on the
    # book every bar ("every-bar"): a book whose VaR, its weights of that bar over the trailing
    # returns, is above var_limit by more than var_stop_band is cut back onto the limit with
    # reduce-only orders (a VaR stop), as the drawdown stop cuts.
    var_check: Literal["rebalance", "every-bar"] = "rebalance"
    var_stop_band: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    es_limit: NonNegativeFloat = 0.0
    # Annualised volatility the target is scaled down to when its forecast is above (0: off).
    vol_target: NonNegativeFloat = 0.0
    drawdown_stop: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.15
    drawdown_exposure: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    reentry_cooldown_bars: NonNegativeInt = 10
    reentry_filter: Literal["none", "market-trend"] = "market-trend"
    reentry_trend_bars: PositiveInt = 50
    # Pre-trade checks (0: off): an order whose reference price is further than this fraction
    # from the last price, or worth more than max_order_notional (quote currency), is blocked;
    # no rebalance runs on a decision bar older than max_data_age_bars bar lengths.
    price_collar: NonNegativeFloat = 0.1
    max_order_notional: NonNegativeFloat = 0.0
    max_data_age_bars: NonNegativeFloat = 3.0


class BrokerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The simulated broker's market model (brokers/fill_model.py): fees as fractions of
    notional (``fee_rate`` for takers, ``maker_fee_rate`` for resting limit orders, empty:
    the taker rate), which price fills, fixed slippage plus square-root impact, the share of
    a bar's volume one bar can fill, how many bars an order works before what is left
    expires (0: good till cancelled), and the latency from decision to market."""

    # "simulated": the paper broker below. "ccxt": orders go to ``exchange`` through ccxt
    # (brokers/ccxt_broker.py), keys from DEEPFACTOR_EXCHANGE_API_KEY / _SECRET; its sandbox
    # (testnet) unless ``sandbox = false``, which also needs ``live_confirm = true`` and the
    # command's --live flag.
    kind: Literal["simulated", "ccxt"] = "simulated"
    exchange: str = "binance"
    sandbox: bool = True
    live_confirm: bool = False
    fee_rate: Annotated[float, msgspec.Meta(ge=0, lt=0.1)] = 0.001
    maker_fee_rate: Annotated[float, msgspec.Meta(ge=0, lt=0.1)] | None = None
    fill_price: Literal["next_open", "close", "next_vwap"] = "next_open"
    fractional: bool = True
    quote_currency: str = "USDT"
    slippage_bps: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 0.0
    impact_coefficient: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    max_participation: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    order_ttl_bars: NonNegativeInt = 1
    latency_ms: NonNegativeFloat = 0.0


class PaperConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Paper replay: ``bars`` to run (0: the rest of the source) from ``start`` at ``speed``
    bars per second (0: as fast as the services keep up)."""

    bars: NonNegativeInt = 250
    speed: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    heartbeat_s: PositiveFloat = 5.0
    # The replay starts at the first bar opening at or after this UTC date ("": the first bar
    # of the data). The bars before it are history: a model strategy ([strategy] name lstm,
    # asset-lstm, ridge) with no active checkpoint is trained on them at start.
    start: str = ""


SupervisedService = Literal[
    "market-data", "factor-update", "signal", "rebalance", "execution", "recorder"
]


class SupervisorConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``deepfactor up``: which services it starts as child processes and how it restarts one
    that dies. A service that exits non-zero (or is killed) is started again after
    ``backoff_initial_s``, doubled on each further exit within ``restart_window_s`` up to
    ``backoff_max_s``; after ``max_restarts`` restarts within that window it gives up and
    stops the stack (a trading stack missing one service must not run on quietly). A service
    that exits 0 (the replay at the end of its data) has finished and is not restarted.
    ``stop_timeout_s`` bounds a clean stop: what has not exited by then is killed.
    ``signal_instances`` signal processes share the inference load when ``signal`` is one of
    ``services`` (stateless: they consume the ``signal`` group together), each supervised on
    its own; the first keeps the plain instance name, the others add ``-2``, ``-3``, ..."""

    services: tuple[SupervisedService, ...] = (
        "market-data",
        "factor-update",
        "signal",
        "rebalance",
        "execution",
        "recorder",
    )
    signal_instances: PositiveInt = 1
    max_restarts: NonNegativeInt = 5
    restart_window_s: PositiveFloat = 300.0
    backoff_initial_s: NonNegativeFloat = 1.0
    backoff_max_s: NonNegativeFloat = 30.0
    stop_timeout_s: PositiveFloat = 30.0


# The port rule of [metrics]: each service process serves on port + its index here. Appended
# to only, never reordered, so a scrape config written for one release fits the next.
METRICS_SERVICES = (
    "market-data",
    "factor-update",
    "signal",
    "rebalance",
    "execution",
    "scheduler",
    "recorder",
    "archive",
)
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class MetricsConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Prometheus endpoint (``/metrics``) per service process, off by default.

    A ``deepfactor run SERVICE`` process serves on ``port`` plus the index of its service in
    ``METRICS_SERVICES`` (market-data 0, factor-update 1, signal 2, rebalance 3, execution 4,
    scheduler 5, recorder 6, archive 7), so the processes of one host never collide;
    ``process_port`` (set per process, ``DEEPFACTOR_METRICS__PROCESS_PORT``) replaces that
    rule for the process it is given to. ``deepfactor paper``, every service in one process,
    serves them all on ``port``. ``host`` is the address bound: the loopback by default, as
    the endpoint has no authentication.
    """

    enabled: bool = False
    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Port = 9464
    # 0: port + the service's index.
    process_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0

    def port_of(self, service: str) -> int:
        """Return the port the process of ``service`` serves on (``paper`` for the process
        of ``deepfactor paper``)."""
        if self.process_port:
            return self.process_port
        return self.port if service == "paper" else self.port + METRICS_SERVICES.index(service)


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole deepfactor config, as validated at start-up."""

    run: RunConfig = RunConfig()
    bus: BusConfig = BusConfig()
    log: LogConfig = LogConfig()
    market: MarketConfig = MarketConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    strategy: StrategyConfig = StrategyConfig()
    model: ModelConfig = ModelConfig()
    portfolio: PortfolioConfig = PortfolioConfig()
    risk: RiskConfig = RiskConfig()
    broker: BrokerConfig = BrokerConfig()
    paper: PaperConfig = PaperConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    metrics: MetricsConfig = MetricsConfig()
