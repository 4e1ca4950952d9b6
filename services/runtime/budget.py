"""The budget of an account that trades on an exchange.

The rebalancer's book starts from ``[portfolio] initial_cash`` and follows its own fills; it
never reads the exchange's balances. So a new account on an exchange is a budget carved out of
the exchange account's free quote cash, and that cash must be there: a book that believes in
cash the account lacks sizes buys the exchange rejects as insufficient funds, rebalance after
rebalance. Checked once, when the account is opened; a continued account's book already
follows what its orders did.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from brokers.protocol import Balances, Broker
from engine.errors import ConfigError

log = structlog.get_logger("services.runtime.budget")


def check_exchange_budget(broker: Broker, initial_cash: float, symbols: Sequence[str]) -> Balances:
    """Refuse a budget larger than the exchange account's free quote cash, and log holdings
    of the traded symbols the book will not know of (it never sells them). Returns the
    balances read.

    Raises
    ------
    ConfigError
        The free cash is below ``initial_cash`` (both figures named, and the key to change).
    BrokerError
        The exchange could not be asked.
    """
    balances = broker.balances()
    quote = balances.quote_currency
    if balances.cash < initial_cash:
        raise ConfigError(
            f"[portfolio] initial_cash is {initial_cash:,.2f} {quote}, but the {broker.name} "
            f"account holds {balances.cash:,.2f} {quote} free: the book would size orders the "
            f"account cannot pay. Set [portfolio] initial_cash to at most {balances.cash:,.2f}, "
            f"or fund the account"
        )
    positions = balances.positions
    held = {symbol: positions[symbol] for symbol in symbols if symbol in positions}
    if held:
        log.warning(
            "paper.holdings_outside_book",
            broker=broker.name,
            holdings=held,
            hint="the book starts in cash: these holdings are neither counted nor traded by it",
        )
    log.info(
        "paper.budget_checked",
        broker=broker.name,
        budget=initial_cash,
        free_cash=round(balances.cash, 2),
        quote=quote,
    )
    return balances
