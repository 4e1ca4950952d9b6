"""docs/logs.md documents every log event the product emits: its name, level and fields.

The emitted events are read from the product's source (``engine``, ``strategies``, ``brokers``,
``services``) with ``ast``, never by running it: a call is an event when it is a level method
(``info``, ``warning``, ...) of a structlog logger, and its first positional argument is the
event name. A logger is what the code base makes them from: ``structlog.get_logger(...)``
(or ``engine.logging.get_logger``), and anything ``.bind(...)`` or ``.new(...)`` makes from a
logger, under whatever name it is assigned to (``log``, ``logger``, ``self._log``). A call
that picks its method or its name with a conditional (``(log.info if same else
log.warning)("...")``, ``log.warning("a" if x else "b")``) counts every branch.

What is not read: an event name that is not a literal (a variable, an f-string) fails
``test_every_event_name_is_a_literal``, naming the call, so no event can hide from the check;
a logger reached some other way (passed as an argument, returned by a helper other than
``get_logger``) is not seen at all. Fields passed as ``**mapping`` are checked when the mapping
is a dict literal, written at the call or assigned once in the same function; the others
(``**metrics``, ``**self.figures()``) are documented by hand. Python's ``logging`` is not
read: the product writes its events through structlog only (``brokers/ccxt_exchange.py`` takes
ccxt's stdlib logger to filter its records, not to write).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("engine", "strategies", "brokers", "services")
DOC = ROOT / "docs" / "logs.md"

# structlog's level methods and the ``level`` each writes on the line.
LEVEL_OF = {
    "debug": "debug",
    "info": "info",
    "msg": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
    "fatal": "critical",
}
LEVELS = ("debug", "info", "warning", "error", "critical")
FACTORIES = {"get_logger", "getLogger", "wrap_logger"}
BINDERS = {"bind", "new"}
LOGGING_MODULES = {"structlog", "structlog.stdlib", "engine.logging"}
# ``area.what_happened``: a stable name to filter on, never a sentence.
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


@dataclass
class Emitted:
    """One event name as the source emits it, over all its call sites."""

    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    sites: list[str] = field(default_factory=list)
    # Keywords per call site, to name the site a missing field comes from.
    fields_at: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Collected:
    events: dict[str, Emitted] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # "file:line: call" of non-literal names


class _LoggerFinder:
    """The expressions of one module that hold a structlog logger, with the fields bound to
    each (``log``, ``self._log``: as ``ast.unparse`` writes them)."""

    def __init__(self, tree: ast.Module) -> None:
        self.factory_names = set()  # ``get_logger`` imported by name
        self.module_names = {"structlog"}  # ``structlog`` or ``engine.logging`` under any name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in LOGGING_MODULES:
                self.factory_names.update(
                    alias.asname or alias.name for alias in node.names if alias.name in FACTORIES
                )
            elif isinstance(node, ast.Import):
                self.module_names.update(
                    alias.asname or alias.name
                    for alias in node.names
                    if alias.name in LOGGING_MODULES
                )
        self.loggers: dict[str, set[str]] = {}
        assignments = [
            (target, node.value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, (ast.Name, ast.Attribute))
        ]
        # To a fixed point: ``child = log.bind(...)`` may come before ``log = get_logger()``.
        changed = True
        while changed:
            changed = False
            for target, value in assignments:
                bound = self.bound_fields(value)
                if bound is None:
                    continue
                name = ast.unparse(target)
                merged = self.loggers.get(name, set()) | bound
                if self.loggers.get(name) != merged:
                    self.loggers[name] = merged
                    changed = True

    def bound_fields(self, node: ast.expr) -> set[str] | None:
        """The fields bound to the logger ``node`` evaluates to; None when it is no logger."""
        if isinstance(node, (ast.Name, ast.Attribute)) and ast.unparse(node) in self.loggers:
            return self.loggers[ast.unparse(node)]
        if not isinstance(node, ast.Call):
            return None
        function = node.func
        if isinstance(function, ast.Name) and function.id in self.factory_names:
            return {k.arg for k in node.keywords if k.arg}
        if isinstance(function, ast.Attribute):
            if function.attr in FACTORIES and ast.unparse(function.value) in (
                self.module_names | {f"{m}.stdlib" for m in self.module_names}
            ):
                return {k.arg for k in node.keywords if k.arg}
            if function.attr in BINDERS:
                parent = self.bound_fields(function.value)
                if parent is not None:
                    return parent | {k.arg for k in node.keywords if k.arg}
        return None

    def level_method(self, node: ast.expr) -> tuple[set[str], set[str]] | None:
        """``(levels, bound fields)`` when ``node`` is a logger's level method (or a
        conditional between such methods), else None."""
        if isinstance(node, ast.IfExp):
            body, orelse = self.level_method(node.body), self.level_method(node.orelse)
            if body is None or orelse is None:
                return None
            return body[0] | orelse[0], body[1] | orelse[1]
        if isinstance(node, ast.Attribute) and node.attr in LEVEL_OF:
            bound = self.bound_fields(node.value)
            if bound is not None:
                return {LEVEL_OF[node.attr]}, bound
        return None


def _literal_names(node: ast.expr) -> list[str] | None:
    """The event names a first argument can take: a string literal, or a conditional between
    such (None: anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _literal_names(node.body), _literal_names(node.orelse)
        if body is not None and orelse is not None:
            return body + orelse
    return None


def _dict_keys(node: ast.expr) -> set[str] | None:
    if isinstance(node, ast.Dict) and all(
        isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys
    ):
        return {k.value for k in node.keys}  # type: ignore[union-attr]
    return None


def _splat_fields(value: ast.expr, scope: ast.AST) -> set[str]:
    """The keys of a ``**value`` passed to a log call: a dict literal, or a name assigned a
    dict literal once in ``scope`` (the enclosing function or module); empty otherwise."""
    keys = _dict_keys(value)
    if keys is not None:
        return keys
    if isinstance(value, ast.Name):
        assigned = [
            node.value
            for node in ast.walk(scope)
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            and node.value is not None
            and any(
                isinstance(t, ast.Name) and t.id == value.id
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        ]
        if len(assigned) == 1:
            return _dict_keys(assigned[0]) or set()
    return set()


def _scopes(tree: ast.Module) -> Iterable[tuple[ast.AST, ast.Call]]:
    """Each call in ``tree`` with its innermost enclosing function (or the module)."""

    def visit(node: ast.AST, scope: ast.AST) -> Iterable[tuple[ast.AST, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            if isinstance(child, ast.Call):
                yield scope, child
            yield from visit(child, inner)

    return visit(tree, tree)


def collect_source(source: str, where: str, into: Collected | None = None) -> Collected:
    """Add the log events of one module's ``source`` (``where`` names it in messages)."""
    into = into or Collected()
    tree = ast.parse(source, filename=where)
    finder = _LoggerFinder(tree)
    for scope, call in _scopes(tree):
        method = finder.level_method(call.func)
        if method is None:
            continue
        levels, bound = method
        site = f"{where}:{call.lineno}"
        names = _literal_names(call.args[0]) if call.args else None
        if names is None:
            into.unreadable.append(f"{site}: {ast.unparse(call)[:100]}")
            continue
        keywords = set(bound)
        for keyword in call.keywords:
            if keyword.arg is not None:
                keywords.add(keyword.arg)
            else:
                keywords |= _splat_fields(keyword.value, scope)
        for name in names:
            emitted = into.events.setdefault(name, Emitted())
            emitted.levels |= levels
            emitted.fields |= keywords
            emitted.sites.append(site)
            emitted.fields_at[site] = keywords
    return into


def collect_product(root: Path = ROOT) -> Collected:
    """Every log event of the product code under ``root``."""
    collected = Collected()
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            collect_source(path.read_text(), path.relative_to(root).as_posix(), collected)
    return collected


@dataclass(frozen=True)
class Documented:
    event: str
    levels: frozenset[str]
    fields: frozenset[str]
    line: int


_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_HEADER = re.compile(r"^\|\s*event\s*\|\s*level\s*\|\s*fields\s*\|", re.IGNORECASE)


def parse_doc(text: str) -> list[Documented]:
    """The rows of every ``| event | level | fields | ... |`` table in ``text``: the event in
    backticks in the first cell, its levels (``info``, ``info / warning``) in the second, each
    field in backticks in the third (other text there is prose)."""
    rows: list[Documented] = []
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if _HEADER.match(stripped):
            in_table = True
            continue
        if not stripped.startswith("|"):
            in_table = False
            continue
        if not in_table or set(stripped) <= set("|-: "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(stripped.strip("|"))]
        event = re.fullmatch(r"`([^`]+)`", cells[0])
        if event is None or len(cells) < 4:
            raise AssertionError(f"docs/logs.md:{number}: not an event row: {stripped[:80]}")
        levels = frozenset(re.findall(r"[a-z]+", cells[1]))
        fields = frozenset(re.findall(r"`([^`]+)`", cells[2]))
        rows.append(Documented(event.group(1), levels, fields, number))
    return rows


@pytest.fixture(scope="module")
def emitted() -> Collected:
    return collect_product()


@pytest.fixture(scope="module")
def documented() -> dict[str, Documented]:
    return {row.event: row for row in parse_doc(DOC.read_text())}


# -- the product against docs/logs.md -----------------------------------------------------------


def test_every_emitted_event_is_documented_and_every_documented_event_is_emitted(
    emitted, documented
):
    undocumented = sorted(set(emitted.events) - set(documented))
    never_emitted = sorted(set(documented) - set(emitted.events))
    message = []
    if undocumented:
        message.append("emitted but not in docs/logs.md (add a row to its area's table):")
        message += [
            f"  {name}  ({', '.join(sorted(emitted.events[name].levels))}; fields "
            f"{', '.join(sorted(emitted.events[name].fields)) or '-'}) at "
            f"{', '.join(emitted.events[name].sites)}"
            for name in undocumented
        ]
    if never_emitted:
        message.append("in docs/logs.md but emitted nowhere (renamed or removed? drop the row):")
        message += [f"  {name}  (docs/logs.md:{documented[name].line})" for name in never_emitted]
    assert not message, "\n".join(message)


def test_every_event_name_is_a_literal(emitted):
    unreadable = emitted.unreadable
    assert not unreadable, (
        "log calls whose event name is not a string literal (pass the name as a literal, or a "
        "conditional between literals, so docs/logs.md can be checked):\n  "
        + "\n  ".join(unreadable)
    )


def test_every_event_name_is_area_dot_what(emitted):
    bad = {name: e.sites for name, e in emitted.events.items() if not EVENT_NAME.match(name)}
    assert not bad, (
        "event names must be `area.what_happened` in lower case, values go in fields: "
        + "; ".join(f"{name!r} at {', '.join(sites)}" for name, sites in sorted(bad.items()))
    )


def test_documented_fields_cover_every_keyword_passed(emitted, documented):
    missing = []
    for name in sorted(set(emitted.events) & set(documented)):
        for site, keywords in emitted.events[name].fields_at.items():
            absent = sorted(keywords - documented[name].fields)
            if absent:
                missing.append(
                    f"  {name} (docs/logs.md:{documented[name].line}): {', '.join(absent)}"
                    f"  passed at {site}"
                )
    assert not missing, "fields passed but not documented for the event:\n" + "\n".join(missing)


# Fields the set-up writes over whatever a call site passed (``add_log_level``, ``TimeStamper``).
OVERWRITTEN = {"level", "timestamp"}
# Known to lose their value that way, to fix at the call site (then drop the entry here).
KNOWN_OVERWRITTEN = {("data.partial_bar_set", "timestamp")}


def test_no_event_passes_a_field_the_setup_overwrites(emitted):
    found = {
        (name, fieldname)
        for name, event in emitted.events.items()
        for fieldname in event.fields & OVERWRITTEN
    }
    assert found - KNOWN_OVERWRITTEN == set(), (
        f"{sorted(found - KNOWN_OVERWRITTEN)}: engine/logging.py writes the line's own level "
        "and timestamp over these fields, so their values never reach the log; rename them"
    )
    assert KNOWN_OVERWRITTEN - found == set(), (
        f"{sorted(KNOWN_OVERWRITTEN - found)} fixed: drop them from KNOWN_OVERWRITTEN"
    )


def test_documented_levels_are_the_emitted_ones(emitted, documented):
    wrong = [
        f"  {name} (docs/logs.md:{documented[name].line}): documented "
        f"{' / '.join(sorted(documented[name].levels)) or 'nothing'}, emitted "
        f"{' / '.join(sorted(emitted.events[name].levels))}"
        for name in sorted(set(emitted.events) & set(documented))
        if documented[name].levels != emitted.events[name].levels
    ]
    assert not wrong, "levels differ:\n" + "\n".join(wrong)


def test_each_event_is_documented_once():
    rows = parse_doc(DOC.read_text())
    lines: dict[str, list[int]] = {}
    for row in rows:
        lines.setdefault(row.event, []).append(row.line)
    repeated = {name: found for name, found in lines.items() if len(found) > 1}
    assert not repeated, f"events with more than one row (docs/logs.md lines): {repeated}"
    unknown = {row.event: sorted(row.levels - set(LEVELS)) for row in rows}
    unknown = {name: levels for name, levels in unknown.items() if levels}
    assert not unknown, f"levels must be among {LEVELS}: {unknown}"


# -- the collector and the parser themselves --------------------------------------------------

SAMPLE = """
import numpy as np
import structlog
from engine.logging import get_logger as make_logger

log = structlog.get_logger("services.sample")
other = make_logger()
child = log.bind(account="a1")


class Worker:
    def __init__(self):
        self._log = structlog.get_logger().bind(worker="w")

    def step(self, same, items, client):
        self._log.info("worker.stepped", count=len(items))
        (log.info if same else log.warning)("order.duplicate", client_order_id="c1")
        log.warning("schedule.lost" if same else "schedule.not_fired", reason="r")
        child.error("account.failed", error="e")
        other.debug("other.said")
        fields = {"symbol": "BTC/USDT", "status": "filled"}
        log.info("order.done", **fields, **{"extra": 1}, **self.figures())
        log.exception("worker.crashed")
        np.log(2.0)
        items.append(1)
        client.info()
        logs = []
        logs.append("not.an_event")

    def dynamic(self, name):
        log.info(name, x=1)
        log.info(f"order.{name}")
"""


def test_collector_finds_events_of_every_logger_form():
    collected = collect_source(SAMPLE, "sample.py")
    events = collected.events
    assert set(events) == {
        "worker.stepped",
        "order.duplicate",
        "schedule.lost",
        "schedule.not_fired",
        "account.failed",
        "other.said",
        "order.done",
        "worker.crashed",
    }
    assert events["worker.stepped"].fields == {"count", "worker"}  # bound fields count
    assert events["order.duplicate"].levels == {"info", "warning"}
    assert events["account.failed"].fields == {"error", "account"}
    assert events["order.done"].fields == {"symbol", "status", "extra"}
    assert events["worker.crashed"].levels == {"error"}
    dynamic = [
        f"sample.py:{number}"
        for number, line in enumerate(SAMPLE.splitlines(), start=1)
        if "log.info(name" in line or 'log.info(f"' in line
    ]
    assert [site.split(": ", 1)[0] for site in collected.unreadable] == dynamic


def test_collector_catches_a_new_undocumented_event(documented):
    # What the check exists for: an event added in the product without a row fails it.
    source = 'import structlog\nlog = structlog.get_logger()\nlog.info("bus.brand_new", x=1)\n'
    added = collect_source(source, "engine/bus/new.py").events
    assert set(added) - set(documented) == {"bus.brand_new"}


def test_parser_reads_event_tables_only():
    text = "\n".join(
        [
            "| field | meaning |",
            "|---|---|",
            "| `service` | the process |",
            "",
            "| event | level | fields | when |",
            "|---|---|---|---|",
            "| `bus.connected` | info | `url`, `namespace` | connected; `ignored` |",
            r"| `risk.limit_acted` | info / warning | `kind`, plus `a\|b` | x |",
        ]
    )
    rows = parse_doc(text)
    assert [(r.event, r.levels, r.fields, r.line) for r in rows] == [
        ("bus.connected", {"info"}, {"url", "namespace"}, 7),
        ("risk.limit_acted", {"info", "warning"}, {"kind", "a|b"}, 8),
    ]
