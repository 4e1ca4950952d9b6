"""The ccxt edge: building an exchange from settings and calling it under one retry policy.

ccxt errors are translated here and in ``brokers.ccxt_broker`` and nowhere else. The
``NetworkError`` family (timeouts, an exchange unavailable, rate limits, a stale nonce) says
nothing about the request's outcome and is retried with exponential backoff; once the attempts
are spent it becomes ``BrokerError`` naming the call and the symbol. Every other ccxt error is
the exchange's answer and is passed to the caller to judge (an order error becomes a reject).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import ccxt
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from brokers.protocol import BrokerError
from engine.errors import ConfigError
from engine.logging import SecretFilter, mask_secrets, register_secret

__all__ = [
    "API_KEY_ENV",
    "SECRET_ENV",
    "CcxtSettings",
    "ExchangeCalls",
    "exchange_from_settings",
]

log = structlog.get_logger("brokers.ccxt")
T = TypeVar("T")

API_KEY_ENV = "DEEPFACTOR_EXCHANGE_API_KEY"
SECRET_ENV = "DEEPFACTOR_EXCHANGE_SECRET"
# ccxt logs every request's headers (the API key among them) to this logger at debug level.
CCXT_LOGGER = "ccxt.base.exchange"
# Spot only, and load_markets calls only the spot market list: without these ccxt's Binance
# also loads futures markets and margin pairs (tests/fixtures/exchange-recordings/README.md).
BINANCE_OPTIONS: dict[str, Any] = {
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot"]},
    "fetchMargins": False,
    "fetchCurrencies": False,
}


@dataclass(frozen=True)
class CcxtSettings:
    """How the ccxt adapter trades and retries.

    Attributes
    ----------
    quote_currency
        The account's cash currency: ``balances().cash`` is its free amount.
    retry_attempts
        Tries of one exchange call on a network error, the first included.
    backoff_s, backoff_max_s
        The wait before the second try, doubled before each later one up to the cap.
    orders_kept
        Terminal orders remembered to answer a duplicate submit (open ones are always kept).
    trades_page
        Trades asked for per ``fetch_my_trades`` page (Binance's maximum is 1000).
    unplaced_after_s
        How long after a submit that could not reach the exchange a lookup that finds no such
        order proves it was never placed (``brokers.ccxt_broker``: the outcome-unknown state).
        A create can still land a while after its request timed out: Binance drops a signed
        request older than its ``recvWindow`` (10 s in ccxt, 60 s at most), so the default
        waits out the longest window.
    """

    quote_currency: str = "USDT"
    retry_attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    orders_kept: int = 1024
    trades_page: int = 1000
    unplaced_after_s: float = 60.0

    def __post_init__(self) -> None:
        checks = {
            "retry_attempts": self.retry_attempts >= 1,
            "backoff_s": self.backoff_s >= 0,
            "backoff_max_s": self.backoff_max_s >= self.backoff_s,
            "orders_kept": self.orders_kept >= 0,
            "trades_page": self.trades_page >= 1,
            "unplaced_after_s": self.unplaced_after_s >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"CcxtSettings.{name} is out of range, received {getattr(self, name)!r}"
                )
        if not self.quote_currency:
            raise ValueError("CcxtSettings.quote_currency must name a currency, received ''")


class ExchangeCalls:
    """Run ccxt calls with the adapter's retry policy (see the module docstring).

    ``sleep`` does the backoff waits: tests pass one that records them instead of sleeping.
    """

    def __init__(
        self,
        exchange: ccxt.Exchange,
        settings: CcxtSettings,
        sleep: Callable[[float], None],
        name: str,
    ) -> None:
        self.exchange = exchange
        self.settings = settings
        self.sleep = sleep
        self.name = name

    def run(self, call: str, symbol: str | None, function: Callable[[], T]) -> T:
        """Return ``function()``, retrying ccxt network errors; raise BrokerError once they
        outlast ``retry_attempts``. Other ccxt errors pass through on the first try."""
        if not self.exchange.enableRateLimit:
            raise BrokerError(
                f"{self.name}: {call} refused: the exchange's enableRateLimit was turned off; "
                "the adapter only calls an exchange with ccxt's rate limiter on"
            )
        settings = self.settings

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "broker.call_retry",
                broker=self.name,
                call=call,
                symbol=symbol,
                attempt=state.attempt_number,
                of=settings.retry_attempts,
                error=describe(error),
                retry_in_s=state.next_action.sleep if state.next_action else None,
            )

        retrying = Retrying(
            stop=stop_after_attempt(settings.retry_attempts),
            wait=wait_exponential(multiplier=settings.backoff_s, max=settings.backoff_max_s),
            retry=retry_if_exception_type(ccxt.NetworkError),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(function)
        except ccxt.NetworkError as error:
            log.error(
                "broker.call_failed",
                broker=self.name,
                call=call,
                symbol=symbol,
                attempts=settings.retry_attempts,
                error=describe(error),
            )
            raise BrokerError(
                f"{self.name}: {call}{'' if symbol is None else f' {symbol}'} failed after "
                f"{settings.retry_attempts} attempt(s): {describe(error)}"
            ) from error

    def unanswered(self, call: str, symbol: str | None, error: ccxt.BaseError) -> BrokerError:
        """The BrokerError for an exchange answer that tells nothing about the outcome."""
        return BrokerError(
            f"{self.name}: {call}{'' if symbol is None else f' {symbol}'} failed: {describe(error)}"
        )


def describe(error: BaseException | None) -> str:
    """``ExceptionType: message`` with any registered secret masked."""
    if error is None:
        return "no error"
    return mask_secrets(f"{type(error).__name__}: {error}")


def exchange_from_settings(
    exchange_id: str,
    *,
    sandbox: bool,
    live: bool = False,
    live_confirmed: bool = False,
    environ: Mapping[str, str],
) -> ccxt.Exchange:
    """Build the ccxt exchange the adapter trades on, keys from ``environ`` only.

    A sandbox (testnet) exchange needs nothing more. A real one trades real money, so it is
    built only when both the ``--live`` flag (``live``) and the config key
    ``[broker] live_confirm`` (``live_confirmed``) say so. The keys are registered with
    ``engine.logging`` so they are masked in every log line and error; nothing here echoes them.
    Nothing is fetched: markets load on the adapter's first call.
    """
    if not sandbox and not (live and live_confirmed):
        missing = [
            name
            for name, given in (("--live", live), ("[broker] live_confirm = true", live_confirmed))
            if not given
        ]
        raise ConfigError(
            f"exchange {exchange_id!r}: refusing to trade real money without both the --live "
            f"flag and the config key [broker] live_confirm = true (missing: "
            f"{', '.join(missing)}); use the exchange's sandbox for testing"
        )
    if sandbox and live:
        raise ConfigError(
            f"exchange {exchange_id!r}: --live was given but the broker is configured for the "
            "sandbox; drop --live to test on the sandbox, or turn the sandbox off to go live"
        )
    exchange_class = getattr(ccxt, exchange_id, None)
    if exchange_id not in ccxt.exchanges or exchange_class is None:
        raise ConfigError(
            f"exchange {exchange_id!r} is not an exchange ccxt {ccxt.__version__} knows "
            "(see ccxt.exchanges)"
        )
    missing_env = [name for name in (API_KEY_ENV, SECRET_ENV) if not environ.get(name)]
    if missing_env:
        raise ConfigError(
            f"exchange {exchange_id!r}: set the environment variable(s) "
            f"{', '.join(missing_env)} to the exchange's API key and secret; keys are read "
            "from the environment only, never from config files"
        )
    api_key, secret = environ[API_KEY_ENV], environ[SECRET_ENV]
    register_secret(api_key)
    register_secret(secret)
    _mask_library_logs()
    options: dict[str, Any] = {"defaultType": "spot"}
    if exchange_id.startswith("binance"):
        options = dict(BINANCE_OPTIONS)
    exchange: ccxt.Exchange = exchange_class(
        {"apiKey": api_key, "secret": secret, "enableRateLimit": True, "options": options}
    )
    if sandbox:
        try:
            exchange.set_sandbox_mode(True)
        except ccxt.NotSupported as error:
            raise ConfigError(
                f"exchange {exchange_id!r} has no sandbox in ccxt {ccxt.__version__}: "
                f"{describe(error)}"
            ) from error
    log.info(
        "broker.exchange_built",
        exchange=exchange_id,
        sandbox=sandbox,
        live=not sandbox,
        rate_limit_ms=exchange.rateLimit,
    )
    return exchange


def _mask_library_logs() -> None:
    logger = logging.getLogger(CCXT_LOGGER)
    if not any(isinstance(f, SecretFilter) for f in logger.filters):
        logger.addFilter(SecretFilter())
