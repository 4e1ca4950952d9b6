"""Binance spot at the HTTP edge: the test double under the ccxt adapter.

``RecordedExchange`` is a ``requests.Session`` set as ``exchange.session`` on a real
``ccxt.binance``, as tests/fixtures/exchange-recordings/check_with_ccxt.py does, so ccxt's own
signing, parsing and error mapping run on every call. It is a small stateful venue: it keeps
orders (by order id and client order id), balances, trades and a clock, and every body it
answers with is a copy of a recorded official Binance body with only the values that must
match the request replaced (symbol, ids, quantities, prices, status, times, fills). Errors
are the recorded bodies of errors.json, under their recorded HTTP status.

Market rules, from the recorded exchangeInfo (the ``_consistent`` file): LOT_SIZE (minimum,
maximum, step) and MIN_NOTIONAL, the filters ccxt reads into a market's limits; the other
filters are not enforced. A symbol in ``halted`` is listed with status ``BREAK`` (ccxt: not
``active``); errors.json holds no recorded answer to an order on it, so one fails the test.
A market order fills in full at the venue's price (FULL response, ``fills_per_market_order``
trades); a limit order that the price already reaches fills the same way, otherwise it rests,
its funds locked, until ``set_price`` moves the price through it (then it fills at its limit,
up to the ``volume`` given). Commission is ``commission_rate`` of the notional, charged in the
quote asset (as in the recorded FULL response), or in ``commission_asset`` (BNB) converted at
``prices["BNB/<quote>"]``.

Faults: ``hide_trades`` keeps an order's trades out of the trade list for a while (on a real
exchange the list lags the order's status); ``fail_next(code)`` answers a call with an
errors.json entry; ``fail_network`` raises ``requests`` ConnectionError or Timeout before the
call is applied; ``lose_next_response`` applies the call and then raises Timeout (the order
reached the exchange, its answer did not), and with ``then_down`` the venue goes down right
after; ``go_down`` makes every call fail before it reaches the venue until ``come_back`` (an
outage: nothing is applied). Every call is recorded in ``calls``, those that failed too;
``throttled`` holds the cost of each ccxt rate-limiter wait (``attach`` replaces the
limiter's wait with a record of its cost; ccxt calls it only while enableRateLimit is on).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import ccxt
import requests

RECORDINGS = Path(__file__).resolve().parent / "fixtures" / "exchange-recordings"
START = datetime(2020, 6, 1, tzinfo=UTC)
_OPEN = ("NEW", "PARTIALLY_FILLED")
_REASONS = {200: "OK", 400: "Bad Request", 429: "Too Many Requests"}
# The options the recordings README gives: load_markets calls only GET /api/v3/exchangeInfo.
BINANCE_OPTIONS = {
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot"]},
    "fetchMargins": False,
    "fetchCurrencies": False,
}


@functools.cache
def _load(name: str) -> Any:
    return json.loads((RECORDINGS / name).read_text())


def recorded(name: str) -> Any:
    """A fresh copy of the recorded body in ``name`` (a file of the recordings folder)."""
    return copy.deepcopy(_load(name))


def _number(value: float) -> str:
    return f"{value:.8f}"


@dataclass(frozen=True)
class Call:
    """One HTTP request ccxt made: method, path and its query and body parameters."""

    method: str
    path: str
    params: dict[str, str]
    api_key: str | None


@dataclass
class VenueOrder:
    """An order as the venue holds it."""

    order_id: int
    client_order_id: str
    symbol: str  # the exchange's id, BTCUSDT
    side: str  # BUY or SELL
    type: str  # MARKET or LIMIT
    quantity: float
    price: float | None
    time: int
    status: str = "NEW"
    executed: float = 0.0
    quote_executed: float = 0.0
    update_time: int = 0
    locked: float = 0.0  # funds still locked for the unfilled part (quote for buys)

    @property
    def remaining(self) -> float:
        return self.quantity - self.executed


@dataclass
class VenueTrade:
    """One execution of an order."""

    trade_id: int
    order_id: int
    symbol: str
    price: float
    quantity: float
    commission: float
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool


@dataclass
class _Fault:
    kind: str  # "error", "connection", "timeout", "lost"
    method: str | None
    path: str | None
    code: str | None = None
    times: int = 1
    skip: int = 0  # matching calls let through first
    then_down: bool = False  # "lost": the venue goes down after applying the call

    def matches(self, method: str, path: str) -> bool:
        return (self.method in (None, method)) and (self.path in (None, path))


class _Refused(Exception):
    def __init__(self, code: str, msg: str | None = None) -> None:
        self.code, self.msg = code, msg


@dataclass
class _Market:
    exchange_id: str
    base: str
    quote: str
    min_qty: Decimal
    max_qty: Decimal
    step: Decimal
    min_notional: float

    @property
    def symbol(self) -> str:
        return f"{self.base}/{self.quote}"


def _markets() -> dict[str, _Market]:
    markets = {}
    for entry in _load("GET_api_v3_exchangeInfo_consistent.json")["symbols"]:
        filters = {f["filterType"]: f for f in entry["filters"]}
        lot, notional = filters["LOT_SIZE"], filters["MIN_NOTIONAL"]
        markets[entry["symbol"]] = _Market(
            exchange_id=entry["symbol"],
            base=entry["baseAsset"],
            quote=entry["quoteAsset"],
            min_qty=Decimal(lot["minQty"]),
            max_qty=Decimal(lot["maxQty"]),
            step=Decimal(lot["stepSize"]),
            min_notional=float(notional["minNotional"]),
        )
    return markets


@dataclass(eq=False)  # a session compares by identity (ccxt keeps it in dicts)
class RecordedExchange(requests.Session):
    """A Binance spot account answering from recorded bodies (see the module docstring).

    ``balances`` maps an asset to its free amount; ``prices`` maps a unified symbol
    (``BTC/USDT``) to the price it trades at.
    """

    balances: Mapping[str, float]
    prices: Mapping[str, float]
    start: datetime = START
    commission_rate: float = 0.001
    commission_asset: str | None = None
    fills_per_market_order: int = 1
    calls: list[Call] = field(default_factory=list)
    throttled: list[float] = field(default_factory=list)
    orders: dict[int, VenueOrder] = field(default_factory=dict)
    trades: list[VenueTrade] = field(default_factory=list)
    halted: set[str] = field(default_factory=set)  # unified symbols listed as not trading

    def __post_init__(self) -> None:
        super().__init__()
        self.now_ms = int(self.start.timestamp() * 1000)
        self._markets = _markets()
        self._by_symbol = {m.symbol: m for m in self._markets.values()}
        self._free: dict[str, float] = {a: float(v) for a, v in self.balances.items()}
        self._locked: dict[str, float] = {a: 0.0 for a in self._free}
        self._prices: dict[str, float] = dict(self.prices)
        self._faults: list[_Fault] = []
        self._down: str | None = None  # an outage: "timeout" or "connection" (None: up)
        self._hidden: set[int] = set()  # order ids whose trades the trade list does not show yet
        self._order_ids = itertools.count(28)  # the recorded new order's id, then on
        self._trade_ids = itertools.count(56)  # the recorded FULL response's first trade id

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, exchange: ccxt.Exchange) -> ccxt.Exchange:
        """Make ``exchange`` talk to this venue; its rate limiter's waits are recorded in
        ``throttled`` instead of slept (the limiter itself stays on)."""
        exchange.session = self
        exchange.throttle = self.throttled.append
        return exchange

    def binance(self, api_key: str = "test-api-key-0001", secret: str = "test-secret-0001"):
        """A real ``ccxt.binance`` on this venue, built with the README's options."""
        exchange = ccxt.binance(
            {
                "apiKey": api_key,
                "secret": secret,
                "enableRateLimit": True,
                "options": dict(BINANCE_OPTIONS),
            }
        )
        return self.attach(exchange)

    # -- the market ------------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_ms / 1000, tz=UTC)

    def advance(self, seconds: float = 60.0) -> datetime:
        """Move the venue's clock on; nothing trades."""
        self.now_ms += int(seconds * 1000)
        return self.now()

    def price(self, symbol: str) -> float:
        return self._prices[symbol]

    def set_price(self, symbol: str, price: float, *, volume: float | None = None) -> int:
        """Trade ``symbol`` at ``price``: resting limit orders it reaches fill at their limit,
        oldest first, up to ``volume`` (base units; None: all). Return the trades made."""
        self._prices[symbol] = price
        market = self._by_symbol[symbol]
        left = float("inf") if volume is None else volume
        made = 0
        for order in sorted(self.orders.values(), key=lambda o: o.order_id):
            if order.symbol != market.exchange_id or order.status not in _OPEN or left <= 0:
                continue
            assert order.price is not None
            reached = price <= order.price if order.side == "BUY" else price >= order.price
            if reached:
                quantity = min(order.remaining, left)
                self._execute(order, quantity, order.price, maker=True)
                left -= quantity
                made += 1
        return made

    def expire(self, client_order_id: str) -> None:
        """The venue ends a working order itself (a time in force ran out)."""
        order = self.order(client_order_id)
        assert order.status in _OPEN, f"{client_order_id} is {order.status}"
        self._release(order)
        order.status, order.update_time = "EXPIRED", self.now_ms

    def hide_trades(self, client_order_id: str) -> None:
        """Keep the order's trades out of the trade list (myTrades) until ``show_trades``:
        the list lagging behind the order's status."""
        self._hidden.add(self.order(client_order_id).order_id)

    def show_trades(self) -> None:
        self._hidden.clear()

    def free(self, asset: str) -> float:
        return self._free.get(asset, 0.0)

    def locked(self, asset: str) -> float:
        return self._locked.get(asset, 0.0)

    def order(self, client_order_id: str) -> VenueOrder:
        """The latest order with this venue client order id."""
        found = [o for o in self.orders.values() if o.client_order_id == client_order_id]
        assert found, f"no order with client order id {client_order_id!r}"
        return found[-1]

    def sent(self, method: str, path: str) -> list[dict[str, str]]:
        """The parameters of every ``method path`` request so far."""
        return [c.params for c in self.calls if (c.method, c.path) == (method, path)]

    # -- faults ----------------------------------------------------------------------------
    def fail_next(self, code: str, *, method: str | None = None, path: str | None = None) -> None:
        """Answer the next matching call with errors.json's ``code`` entry (not applied)."""
        assert code in _load("errors.json"), f"errors.json has no code {code}"
        self._faults.append(_Fault("error", method, path, code))

    def fail_network(
        self,
        kind: str = "timeout",
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        skip: int = 0,
    ) -> None:
        """Raise a requests ``Timeout`` or ``ConnectionError`` for ``times`` matching calls
        after the next ``skip``, before they reach the venue."""
        assert kind in ("timeout", "connection"), kind
        self._faults.append(_Fault(kind, method, path, times=times, skip=skip))

    def heal(self) -> None:
        """Drop every fault not yet triggered."""
        self._faults.clear()

    def lose_next_response(
        self, method: str = "POST", path: str = "/api/v3/order", *, then_down: bool = False
    ) -> None:
        """Apply the next matching call, then raise Timeout as if its answer was lost; with
        ``then_down`` the venue goes down (``go_down``) right after."""
        self._faults.append(_Fault("lost", method, path, then_down=then_down))

    def go_down(self, kind: str = "connection") -> None:
        """An outage: every call raises ``kind`` (as ``fail_network``) before it reaches the
        venue, until ``come_back``. Faults queued meanwhile wait for the venue to be up."""
        assert kind in ("timeout", "connection"), kind
        self._down = kind

    def come_back(self) -> None:
        """End the outage ``go_down`` started."""
        self._down = None

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- HTTP ------------------------------------------------------------------------------
    def request(self, method, url, params=None, data=None, headers=None, **kwargs):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if data:
            query.update(parse_qs(data.decode() if isinstance(data, bytes) else data))
        sent = {key: values[-1] for key, values in query.items()}
        api_key = (headers or {}).get("X-MBX-APIKEY")
        self.calls.append(Call(method, parts.path, sent, api_key))
        fault = (
            _Fault(self._down, None, None) if self._down else self._take_fault(method, parts.path)
        )
        if fault is not None and fault.kind == "timeout":
            raise requests.exceptions.Timeout(f"read timeout (test): {method} {parts.path}")
        if fault is not None and fault.kind == "connection":
            raise requests.exceptions.ConnectionError(f"connection refused (test): {parts.path}")
        if fault is not None and fault.kind == "error":
            return self._error(url, fault.code or "", None)
        route = self._routes().get((method, parts.path))
        assert route is not None, f"no recording for {method} {parts.path}"
        if parts.path != "/api/v3/exchangeInfo":
            assert "signature" in sent and api_key, f"unsigned private call {method} {parts.path}"
        try:
            body = route(sent)
        except _Refused as refused:
            return self._error(url, refused.code, refused.msg)
        if fault is not None and fault.kind == "lost":
            if fault.then_down:
                self.go_down("timeout")
            raise requests.exceptions.Timeout(f"response lost (test): {method} {parts.path}")
        return self._response(url, 200, body)

    def _routes(self):
        return {
            ("GET", "/api/v3/exchangeInfo"): self._exchange_info,
            ("GET", "/api/v3/account"): self._account,
            ("POST", "/api/v3/order"): self._new_order,
            ("GET", "/api/v3/order"): self._query_order,
            ("DELETE", "/api/v3/order"): self._cancel_order,
            ("GET", "/api/v3/openOrders"): self._open_orders,
            ("GET", "/api/v3/myTrades"): self._my_trades,
        }

    @staticmethod
    def _response(url: str, status: int, body: Any) -> requests.Response:
        response = requests.Response()
        response.status_code, response.url, response.reason = status, url, _REASONS[status]
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(body).encode()
        return response

    def _error(self, url: str, code: str, msg: str | None) -> requests.Response:
        entry = recorded("errors.json")[code]
        body = entry["body"]
        if msg is not None:  # another documented message under the same code
            body["msg"] = msg
        return self._response(url, entry["http_status"], body)

    # -- routes ----------------------------------------------------------------------------
    def _exchange_info(self, params: dict[str, str]) -> Any:
        body = recorded("GET_api_v3_exchangeInfo_consistent.json")
        for entry in body["symbols"]:
            if self._markets[entry["symbol"]].symbol in self.halted:
                entry["status"] = "BREAK"  # one of Binance's non-trading statuses
        return body

    def _account(self, params: dict[str, str]) -> Any:
        body = recorded("GET_api_v3_account.json")
        template = body["balances"][0]
        body["balances"] = [
            {
                **template,
                "asset": asset,
                "free": _number(self._free[asset]),
                "locked": _number(self._locked.get(asset, 0.0)),
            }
            for asset in sorted(self._free)
        ]
        body["updateTime"] = self.now_ms
        return body

    def _new_order(self, params: dict[str, str]) -> Any:
        market = self._markets.get(params["symbol"])
        if market is None:
            raise _Refused("-1121")
        assert market.symbol not in self.halted, (
            f"no recording for an order on halted market {market.symbol}"
        )
        side, kind = params["side"], params["type"]
        quantity_text = params["quantity"]
        quantity = float(quantity_text)
        self._check_lot(market, Decimal(quantity_text))
        market_price = self._prices[market.symbol]
        limit = float(params["price"]) if kind == "LIMIT" else None
        resting = limit is not None and not self._reaches(side, market_price, limit)
        check_price = limit if resting and limit is not None else market_price
        if quantity * check_price < market.min_notional:
            raise _Refused("-1013", "Filter failure: MIN_NOTIONAL")
        self._check_funds(market, side, quantity, check_price)
        order = VenueOrder(
            order_id=next(self._order_ids),
            client_order_id=params.get("newClientOrderId") or f"venue{len(self.orders)}",
            symbol=market.exchange_id,
            side=side,
            type=kind,
            quantity=quantity,
            price=limit,
            time=self.now_ms,
            update_time=self.now_ms,
        )
        self.orders[order.order_id] = order
        fills: list[VenueTrade] = []
        if not resting:
            parts = max(1, self.fills_per_market_order)
            for i in range(parts):
                share = quantity / parts if i < parts - 1 else order.remaining
                fills.append(self._execute(order, share, market_price, maker=False))
        else:
            self._lock(order, market)
        return self._new_order_body(order, params.get("newOrderRespType", "FULL"), fills)

    def _query_order(self, params: dict[str, str]) -> Any:
        return self._order_body(self._find(params), "GET_api_v3_order.json")

    def _cancel_order(self, params: dict[str, str]) -> Any:
        try:
            order = self._find(params)
        except _Refused:
            raise _Refused("-2011") from None
        if order.status not in _OPEN:
            raise _Refused("-2011")
        self._release(order)
        order.status, order.update_time = "CANCELED", self.now_ms
        body = recorded("DELETE_api_v3_order.json")
        body.update(
            symbol=order.symbol,
            origClientOrderId=order.client_order_id,
            orderId=order.order_id,
            clientOrderId=params.get("newClientOrderId") or f"cancel{order.order_id}",
            transactTime=self.now_ms,
            price=_number(order.price or 0.0),
            origQty=_number(order.quantity),
            executedQty=_number(order.executed),
            cummulativeQuoteQty=_number(order.quote_executed),
            status=order.status,
            type=order.type,
            side=order.side,
        )
        return body

    def _open_orders(self, params: dict[str, str]) -> Any:
        symbol = params.get("symbol")
        return [
            self._order_body(order, "GET_api_v3_openOrders.json", element=True)
            for order in sorted(self.orders.values(), key=lambda o: o.order_id)
            if order.status in _OPEN and symbol in (None, order.symbol)
        ]

    def _my_trades(self, params: dict[str, str]) -> Any:
        symbol = params["symbol"]
        trades = [t for t in self.trades if t.symbol == symbol and t.order_id not in self._hidden]
        if "orderId" in params:
            trades = [t for t in trades if t.order_id == int(params["orderId"])]
        if "fromId" in params:
            trades = [t for t in trades if t.trade_id >= int(params["fromId"])]
        if "startTime" in params:
            trades = [t for t in trades if t.time >= int(params["startTime"])]
        if "endTime" in params:
            trades = [t for t in trades if t.time <= int(params["endTime"])]
        limit = min(int(params.get("limit", 500)), 1000)
        windowed = any(k in params for k in ("fromId", "startTime", "endTime"))
        trades = trades[:limit] if windowed else trades[-limit:]  # else: the most recent
        template = recorded("GET_api_v3_myTrades.json")[0]
        return [
            {
                **template,
                "symbol": t.symbol,
                "id": t.trade_id,
                "orderId": t.order_id,
                "price": _number(t.price),
                "qty": _number(t.quantity),
                "quoteQty": _number(t.price * t.quantity),
                "commission": _number(t.commission),
                "commissionAsset": t.commission_asset,
                "time": t.time,
                "isBuyer": t.is_buyer,
                "isMaker": t.is_maker,
            }
            for t in trades
        ]

    # -- venue mechanics -------------------------------------------------------------------
    def _find(self, params: dict[str, str]) -> VenueOrder:
        if "orderId" in params:
            order = self.orders.get(int(params["orderId"]))
        else:
            found = [
                o
                for o in self.orders.values()
                if o.client_order_id == params["origClientOrderId"] and o.symbol == params["symbol"]
            ]
            order = found[-1] if found else None
        if order is None or order.symbol != params["symbol"]:
            raise _Refused("-2013")
        return order

    @staticmethod
    def _reaches(side: str, market_price: float, limit: float) -> bool:
        return market_price <= limit if side == "BUY" else market_price >= limit

    @staticmethod
    def _check_lot(market: _Market, quantity: Decimal) -> None:
        if quantity < market.min_qty or quantity > market.max_qty:
            raise _Refused("-1013")
        if (quantity - market.min_qty) % market.step != 0:
            raise _Refused("-1013")

    def _commission(self, market: _Market, notional: float) -> tuple[float, str]:
        asset = self.commission_asset or market.quote
        if asset == market.quote:
            return notional * self.commission_rate, asset
        return notional * self.commission_rate / self._prices[f"{asset}/{market.quote}"], asset

    def _check_funds(self, market: _Market, side: str, quantity: float, price: float) -> None:
        if side == "BUY":
            fee, asset = self._commission(market, quantity * price)
            needed = quantity * price + (fee if asset == market.quote else 0.0)
            enough = self.free(market.quote) >= needed - 1e-9
        else:
            enough = self.free(market.base) >= quantity - 1e-12
        if not enough:
            raise _Refused("-2010")

    def _lock(self, order: VenueOrder, market: _Market) -> None:
        assert order.price is not None
        if order.side == "BUY":
            fee, asset = self._commission(market, order.quantity * order.price)
            amount = order.quantity * order.price + (fee if asset == market.quote else 0.0)
            asset = market.quote
        else:
            amount, asset = order.quantity, market.base
        self._free[asset] = self.free(asset) - amount
        self._locked[asset] = self.locked(asset) + amount
        order.locked = amount

    def _release(self, order: VenueOrder) -> None:
        market = self._markets[order.symbol]
        asset = market.quote if order.side == "BUY" else market.base
        self._free[asset] = self.free(asset) + order.locked
        self._locked[asset] = self.locked(asset) - order.locked
        order.locked = 0.0

    def _execute(self, order: VenueOrder, quantity: float, price: float, maker: bool):
        market = self._markets[order.symbol]
        if order.locked:  # a resting order pays from its locked funds: unlock this share
            share = order.locked * quantity / order.remaining
            asset = market.quote if order.side == "BUY" else market.base
            self._free[asset] = self.free(asset) + share
            self._locked[asset] = self.locked(asset) - share
            order.locked -= share
        notional = quantity * price
        commission, commission_asset = self._commission(market, notional)
        if order.side == "BUY":
            self._free[market.quote] = self.free(market.quote) - notional
            self._free[market.base] = self.free(market.base) + quantity
        else:
            self._free[market.base] = self.free(market.base) - quantity
            self._free[market.quote] = self.free(market.quote) + notional
        self._free[commission_asset] = self.free(commission_asset) - commission
        trade = VenueTrade(
            trade_id=next(self._trade_ids),
            order_id=order.order_id,
            symbol=order.symbol,
            price=price,
            quantity=quantity,
            commission=commission,
            commission_asset=commission_asset,
            time=self.now_ms,
            is_buyer=order.side == "BUY",
            is_maker=maker,
        )
        self.trades.append(trade)
        order.executed += quantity
        order.quote_executed += notional
        order.update_time = self.now_ms
        order.status = "FILLED" if order.remaining <= 1e-12 * order.quantity else "PARTIALLY_FILLED"
        return trade

    # -- bodies ----------------------------------------------------------------------------
    def _order_fields(self, order: VenueOrder) -> dict[str, Any]:
        return {
            "symbol": order.symbol,
            "orderId": order.order_id,
            "clientOrderId": order.client_order_id,
            "price": _number(order.price or 0.0),
            "origQty": _number(order.quantity),
            "executedQty": _number(order.executed),
            "cummulativeQuoteQty": _number(order.quote_executed),
            "status": order.status,
            "type": order.type,
            "side": order.side,
        }

    def _order_body(self, order: VenueOrder, recording: str, element: bool = False) -> Any:
        body = recorded(recording)
        if element:
            body = body[0]
        body.update(
            self._order_fields(order),
            time=order.time,
            updateTime=order.update_time,
            workingTime=order.time,
            isWorking=order.status in _OPEN,
        )
        return body

    def _new_order_body(self, order: VenueOrder, kind: str, fills: list[VenueTrade]) -> Any:
        body = recorded(f"POST_api_v3_order_{kind}.json")
        fields = {"symbol": order.symbol, "orderId": order.order_id}
        fields |= {"clientOrderId": order.client_order_id, "transactTime": order.time}
        if kind != "ACK":
            fields |= self._order_fields(order) | {"workingTime": order.time}
        body.update(fields)
        if kind == "FULL":
            template = body["fills"][0]
            body["fills"] = [
                {
                    **template,
                    "price": _number(t.price),
                    "qty": _number(t.quantity),
                    "commission": _number(t.commission),
                    "commissionAsset": t.commission_asset,
                    "tradeId": t.trade_id,
                }
                for t in fills
            ]
        return body
