"""Rebalance schedules as APScheduler triggers, used the same way live and in simulation.

Live, an APScheduler ``BackgroundScheduler`` calls back at the trigger's fire times. Simulated,
the driver asks the very same trigger object for its fire times between two instants, so a
schedule means the same thing in a backtest as in a daemon.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import redis
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine.errors import ConfigError

log = structlog.get_logger("engine.scheduling")

_ONE_MICROSECOND = timedelta(microseconds=1)
_INTERVAL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def build_trigger(cron: str = "", interval: str = "", *, owner: str = "[schedule]") -> BaseTrigger:
    """Return the trigger of a crontab expression (UTC) or an interval such as ``"7d"``.

    Exactly one of ``cron`` and ``interval`` must be given.
    """
    if bool(cron) == bool(interval):
        raise ConfigError(
            f"{owner}: set exactly one of cron and interval, "
            f"received cron={cron!r} interval={interval!r}"
        )
    if cron:
        fields = cron.split()
        try:
            if len(fields) != 5:
                raise ValueError(f"expected 5 fields, found {len(fields)}")
            minute, hour, day, month, day_of_week = fields
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=_crontab_days(day_of_week),
                timezone=UTC,
            )
        except ValueError as error:
            raise ConfigError(
                f"{owner} cron must be a 5-field crontab expression, received {cron!r}: {error}"
            ) from None
    unit = interval[-1:].lower()
    count = interval[:-1]
    if unit not in _INTERVAL_UNITS or not count.isdigit() or int(count) <= 0:
        raise ConfigError(
            f"{owner} interval must look like 30s, 15m, 4h, 7d or 2w, received {interval!r}"
        )
    return IntervalTrigger(
        **{_INTERVAL_UNITS[unit]: int(count)},
        timezone=UTC,
        start_date=datetime(1970, 1, 5, tzinfo=UTC),
    )


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field: str) -> str:
    # crontab numbers days 0-7 from Sunday; APScheduler 3 numbers them from Monday, so a
    # numeric field ("1-5") would fire a day late. Expand it into names, which mean the same
    # to both.
    if field == "*" or not any(c.isdigit() for c in field.replace("*/", "")):
        return field
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (_day_number(x) for x in span.split("-", 1))
        else:
            first = last = _day_number(span)
        if step < 1 or last < first:
            raise ValueError(f"day-of-week part {part!r} is not a valid range")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def _day_number(text: str) -> int:
    text = text.strip().lower()
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    if text[:3] in _DAY_NAMES:
        return _DAY_NAMES.index(text[:3])
    raise ValueError(f"day of week must be 0-7 or a day name, received {text!r}")


def fire_times(trigger: BaseTrigger, after: datetime, until: datetime) -> Iterator[datetime]:
    """Yield the trigger's fire times in ``(after, until]``, in order."""
    previous = None
    now = after + _ONE_MICROSECOND
    while True:
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None or fire > until:
            return
        fire = fire.astimezone(UTC)
        if fire > after:
            yield fire
        previous = fire
        now = fire + _ONE_MICROSECOND


def rebalance_id(schedule_name: str, due: datetime) -> str:
    """Deterministic id of the rebalance a schedule fires at ``due``: a retry or a replay of
    the same tick yields the same id, and so the same client order ids."""
    return f"rb-{schedule_name}-{due.astimezone(UTC):%Y%m%dT%H%M%SZ}"


class LiveScheduler:
    """Wall-clock firing of a trigger through APScheduler's background scheduler."""

    def __init__(
        self,
        trigger: BaseTrigger,
        on_fire: Callable[[datetime], None],
        *,
        misfire_grace_s: int = 60,
    ) -> None:
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._trigger = trigger
        self._on_fire = on_fire
        self._misfire_grace_s = misfire_grace_s

    def _fire(self) -> None:
        self._on_fire(datetime.now(UTC))

    def start(self) -> None:
        """Start firing; one job, coalesced, never run twice at once."""
        self._scheduler.add_job(
            self._fire,
            self._trigger,
            id="rebalance",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=self._misfire_grace_s,
        )
        self._scheduler.start()

    def next_fire_time(self) -> datetime | None:
        """Return when the job fires next (None before start)."""
        job = self._scheduler.get_job("rebalance")
        return job.next_run_time if job else None

    def shutdown(self) -> None:
        """Stop firing; a callback in progress is allowed to finish."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)


class Leadership:
    """Whether this scheduler may fire; in process there is no one else, so it always may."""

    @property
    def token(self) -> bytes | None:
        """The token a conditional publish checks against the lock; None without a lock."""
        return None

    def try_lead(self) -> bool:
        """Return True if this scheduler fires now (taking the lead if it is free)."""
        return True

    def start(self) -> None:
        """Start keeping the lead once taken."""

    def close(self, *, release: bool = True) -> None:
        """Stop keeping the lead, and give it up at once when ``release``."""


class RedisLeadership(Leadership):
    """One scheduler per lock key fires: a redis-py ``Lock`` with an expiry.

    The holder renews the expiry every third of it from a small thread. Another scheduler
    tries to take the lock at each of its fire times, so it takes over once the holder has
    stopped (released) or died (expired). A holder that finds its token gone has lost the
    lead and does not fire until it takes the lock again.
    """

    def __init__(
        self, client: redis.Redis, key: str, *, timeout_s: float, schedule: str = ""
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"leader lock timeout must be > 0, received {timeout_s!r}")
        self.key = key
        self.timeout_s = timeout_s
        self._schedule = schedule
        # thread_local=False: the lock is taken in APScheduler's worker threads and renewed
        # from the renewal thread, so its token must be shared by all of them.
        self._lock = client.lock(key, timeout=timeout_s, blocking=False, thread_local=False)
        self._held = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> bytes | None:
        token = self._lock.local.token
        return token if self._held and isinstance(token, bytes) else None

    @property
    def held(self) -> bool:
        return self._held

    def try_lead(self) -> bool:
        with self._mutex:
            try:
                if self._held and self._renew():
                    return True
                if self._lock.acquire(blocking=False):
                    self._held = True
                    log.info("schedule.leader_acquired", schedule=self._schedule, lock=self.key)
                    return True
            except redis.RedisError as error:
                log.warning(
                    "schedule.leader_check_failed", schedule=self._schedule, error=str(error)
                )
                return False
            log.debug("schedule.not_leader", schedule=self._schedule, lock=self.key)
            return False

    def _renew(self) -> bool:
        # Under the mutex, while held: reset the expiry, or find the lead lost.
        try:
            self._lock.reacquire()
            return True
        except redis.exceptions.LockError:  # LockNotOwnedError: expired, or taken over
            self._held = False
            log.warning("schedule.leader_lost", schedule=self._schedule, lock=self.key)
            return False

    def _keep(self) -> None:
        while not self._stop.wait(self.timeout_s / 3):
            with self._mutex:
                if not self._held:
                    continue
                try:
                    self._renew()
                except redis.RedisError as error:
                    log.warning(
                        "schedule.leader_renew_failed", schedule=self._schedule, error=str(error)
                    )

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._keep, name=f"schedule-lock-{self._schedule}", daemon=True
            )
            self._thread.start()

    def close(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self._held and release:
                try:
                    self._lock.release()
                    log.info("schedule.leader_released", schedule=self._schedule, lock=self.key)
                except (redis.exceptions.LockError, redis.RedisError):
                    pass  # already expired or taken over, or Redis is away: it will expire
            self._held = False
