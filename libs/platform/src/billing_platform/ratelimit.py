"""Rate limits per key (a source IP, a user): shared by every replica, or per process.

Shared limits (``Limit``, ``take``, ``DbLimiter``) are counted in the service's own
PostgreSQL schema, in the table ``RATE_LIMIT_DDL`` creates (each service copies it into
one of its migrations), so N replicas together admit the limit, not N times it. They are
sliding windows approximated by two fixed windows: a request is admitted while

    ceil(previous window's hits x share of it still inside the sliding window)
        + this window's hits < limit

and one statement both decides and counts it. Only admitted requests are counted, so a
client hammering through its refusals is kept out no longer than the limit says. The
``ON CONFLICT ... DO UPDATE ... WHERE`` locks the window's row and re-checks the latest
count, so concurrent requests on any number of replicas never admit more than the limit.
Windows are cut from the caller's clock; replicas' clocks a few milliseconds apart only
move a window's edge by as much. ``RateLimitSweeper`` deletes windows that no longer count.

``SlidingWindowLimiter`` counts in process memory (per replica): enough for a flood guard
in front of an endpoint that has its own defences.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from fastapi import Request
from prometheus_client import Counter

from billing_platform.db import HasPool
from billing_platform.errors import ApiError
from billing_platform.tasks import Periodic

log = logging.getLogger(__name__)

RATE_LIMIT_DDL = """
CREATE TABLE rate_limit_hits (
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL CHECK (hits > 0),
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_limit_hits_window_start ON rate_limit_hits (window_start);
"""

RATE_LIMITED = Counter("billing_rate_limited_total", "Requests refused by a rate limit", ["limit"])

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Limited:
    """A refused request: it may be sent again after this many seconds."""

    retry_after_s: int


class Limiter(Protocol):
    async def take(self, key: str) -> Limited | None:
        """Count a request of ``key``; None when admitted."""
        ...


def rate_limited(seconds: int, whose: str) -> ApiError:
    """429 ``rate_limited`` with ``Retry-After`` and ``retryAfterSeconds``."""
    return ApiError(
        429,
        "rate_limited",
        f"too many requests {whose}; retry in {seconds}s",
        headers={"Retry-After": str(seconds)},
        retryAfterSeconds=seconds,
    )


# --- window arithmetic -------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The fixed window an instant falls in, and how much of the previous one still counts.

    The sliding window ending now covers ``remaining_ms / length_ms`` of the previous fixed
    window, ``remaining_ms`` being what is left of the current one (1..length_ms).
    """

    start: datetime
    length_ms: int
    remaining_ms: int

    @property
    def previous_start(self) -> datetime:
        return self.start - self.length_ms * _MS


def window_at(now: datetime, length_s: int) -> Window:
    length_ms = length_s * 1000
    elapsed_ms = (now - _EPOCH) // _MS
    into = elapsed_ms % length_ms
    return Window(_EPOCH + (elapsed_ms - into) * _MS, length_ms, length_ms - into)


def previous_share(previous_hits: int, window: Window) -> int:
    """The previous window's hits still inside the sliding window, rounded up."""
    return -(-previous_hits * window.remaining_ms // window.length_ms)


def retry_after_s(limit: int, window: Window, previous_hits: int, current_hits: int) -> int:
    """Whole seconds (at least 1) until a refused key is admitted again, if it sends nothing.

    Within this window a slot frees once the previous window's share has shrunk enough;
    when this window alone is full, once enough of it has slid out in the next one.
    """
    spare = limit - current_hits - 1  # what the previous share may be for one more hit
    if spare >= 0 and previous_hits > 0:
        wait_ms = window.remaining_ms - spare * window.length_ms // previous_hits
    else:
        keep = (limit - 1) * window.length_ms // max(current_hits, 1)
        wait_ms = window.remaining_ms + window.length_ms - keep
    return max(1, math.ceil(wait_ms / 1000))


# --- counted in PostgreSQL ---------------------------------------------------------------

# $1 key, $2 window start, $3 previous window start, $4 limit, $5 remaining ms, $6 length ms.
# The outer SELECT sees the table as it was before the statement: ``current`` is only used
# to say when a refused key may come back.
_TAKE = """
WITH previous AS (
    SELECT coalesce(max(hits), 0) AS hits FROM rate_limit_hits
    WHERE key = $1 AND window_start = $3
), budget AS (
    SELECT $4::integer - ((previous.hits::bigint * $5::bigint + $6::bigint - 1) / $6::bigint)
        AS hits
    FROM previous
), counted AS (
    INSERT INTO rate_limit_hits AS r (key, window_start, hits)
    SELECT $1, $2, 1 FROM budget WHERE budget.hits >= 1
    ON CONFLICT (key, window_start) DO UPDATE SET hits = r.hits + 1
        WHERE r.hits < (SELECT hits FROM budget)
    RETURNING r.hits
)
SELECT (SELECT hits FROM counted) AS counted,
       (SELECT hits FROM previous) AS previous,
       (SELECT hits FROM budget) AS budget,
       coalesce((SELECT hits FROM rate_limit_hits WHERE key = $1 AND window_start = $2), 0)
           AS current
"""

_SWEEP = "DELETE FROM rate_limit_hits WHERE window_start < $1"

# The same statement as a function, for a service that takes a limit inside SQL of its own
# (metering's one-statement admission of a charged call); a migration copies it word for
# word, like RATE_LIMIT_DDL. PL/pgSQL, not SQL: PostgreSQL 15 plans a SQL function's body
# again on every call that cannot inline it, and this one keeps its plan per session.
RATE_LIMIT_TAKE_DDL = (
    "CREATE FUNCTION rate_limit_take(text, timestamptz, timestamptz, integer, bigint, bigint)"
    " RETURNS TABLE (counted integer, previous integer, budget bigint, current integer)"
    " LANGUAGE plpgsql VOLATILE AS $take$ #variable_conflict use_column BEGIN RETURN QUERY"
    + _TAKE
    + "; END $take$;"
)


@dataclass(frozen=True)
class Limit:
    """``per_window`` requests per key in any ``window_s`` seconds; ``name`` prefixes keys."""

    name: str
    per_window: int
    window_s: int = 60

    def __post_init__(self) -> None:
        if self.per_window < 1 or self.window_s < 1:
            raise ValueError(f"rate limit {self.name}: limit and window must be positive")


async def take(conn: Any, limit: Limit, key: str, now: datetime) -> Limited | None:
    """Count a request of ``key`` if the limit admits it, in one statement on ``conn``.

    Inside the caller's transaction the window's row stays locked until it ends, so keep
    that transaction short.
    """
    args = take_args(limit, key, now)
    row = await conn.fetchrow(_TAKE, *args)
    if row["counted"] is not None:
        return None
    return refused(limit, now, row["previous"], row["current"], row["budget"])


def take_args(limit: Limit, key: str, now: datetime) -> tuple[Any, ...]:
    """The parameters of the take statement (and of ``rate_limit_take``), in order."""
    window = window_at(now, limit.window_s)
    return (
        f"{limit.name}:{key}",
        window.start,
        window.previous_start,
        limit.per_window,
        window.remaining_ms,
        window.length_ms,
    )


def refused(limit: Limit, now: datetime, previous: int, current: int, budget: int) -> Limited:
    """A refusal the take statement reported (``counted`` NULL), counted in the metric."""
    RATE_LIMITED.labels(limit.name).inc()
    window = window_at(now, limit.window_s)
    # Refused means this window holds at least the budget, however stale ``current`` is.
    current = max(current, budget)
    return Limited(retry_after_s(limit.per_window, window, previous, current))


def utc_now() -> datetime:
    return datetime.now(UTC)


class DbLimiter:
    """A shared ``Limit`` checked in a statement of its own (no transaction of the caller)."""

    def __init__(self, db: HasPool, limit: Limit, clock: Callable[[], datetime] = utc_now):
        self._db = db
        self.limit = limit
        self._clock = clock

    async def take(self, key: str) -> Limited | None:
        async with self._db.pool.acquire() as conn:
            return await take(conn, self.limit, key, self._clock())


async def sweep(conn: Any, now: datetime, keep_s: int) -> int:
    """Delete the windows that started over ``keep_s`` ago; how many there were."""
    status: str = await conn.execute(_SWEEP, now - timedelta(seconds=keep_s))
    return int(status.split()[-1])


class RateLimitSweeper(Periodic):
    """Deletes windows no limit reads any more, on a period (a lifecycle part).

    A window counts until two window lengths after its start; ``keep_s`` must cover the
    longest window of the service's limits. Every replica may sweep: deleting is idempotent.
    """

    def __init__(
        self,
        db: HasPool,
        keep_s: int = 120,
        interval_s: float = 60.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__("rate-limit-sweeper", self.sweep, interval_s, first_delay_s=interval_s)
        self._db = db
        self._keep_s = keep_s
        self._clock = clock

    async def sweep(self) -> int:
        async with self._db.pool.acquire() as conn:
            return await sweep(conn, self._clock(), self._keep_s)


# --- counted in process memory -----------------------------------------------------------


class SlidingWindowLimiter:
    """Per-process counts: with N replicas the effective limit is up to N times this one."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    async def take(self, key: str) -> Limited | None:
        wait = self.retry_after(key)
        return None if wait is None else Limited(max(1, math.ceil(wait)))

    def retry_after(self, key: str) -> float | None:
        """Record a hit for ``key``; None when allowed, else seconds until one is."""
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window_s - now
        hits.append(now)
        if len(self._hits) > 10_000:
            self._forget_idle(now)
        return None

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window_s]
        for key in idle:
            del self._hits[key]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def per_ip(limiter: Limiter) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency answering 429 ``rate_limited`` with ``retryAfterSeconds``."""

    async def check(request: Request) -> None:
        limited = await limiter.take(client_ip(request))
        if limited is not None:
            raise rate_limited(limited.retry_after_s, "from this address")

    return check
