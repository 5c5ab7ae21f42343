"""Where the guardrails keep their state: a port, and its PostgreSQL version.

``reserve`` is the one step that must be atomic per user: in a single short transaction,
under a per-user advisory lock, it reads the pause, the caps and what counts against them,
then either refuses (pausing the user when the session cap trips) or adds the call's worst
case to the calls in flight. Two concurrent calls of one user therefore never both pass on
the same headroom. The transaction never spans the ledger or the model: the gateway awaits
those after it has committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from metering import guardrails, repository
from metering.guardrails import CapOverride, Caps, CapTrip, Pause, Spending

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "metering"

Refusal = Pause | CapTrip


@dataclass(frozen=True)
class CapsView:
    effective: Caps
    defaults: Caps
    override: CapOverride | None


@dataclass(frozen=True)
class ReviewFlag:
    id: int
    user_id: str
    usage_id: str
    model: str
    charge_millicredits: int
    average_millicredits: int
    recent_calls: int
    created_at: datetime


class GuardStore(Protocol):
    async def reserve(
        self, user_id: str, usage_id: str, estimate: int, now: datetime
    ) -> Refusal | None:
        """The active pause or the cap tripped; None once the call is counted in flight."""
        ...

    async def release(self, usage_id: str) -> None:
        """The call ended without a usage record: stop counting it in flight."""
        ...

    async def caps(self, user_id: str) -> CapsView: ...

    async def set_caps(
        self, user_id: str, caps: tuple[int | None, int | None, int | None], actor: str, reason: str
    ) -> CapsView: ...

    async def pause(self, user_id: str) -> Pause | None: ...

    async def resume(self, user_id: str, actor: str, reason: str, now: datetime) -> Pause | None:
        """The pause just lifted; None when the user was not paused."""
        ...

    async def review_flags(self, user_id: str | None, limit: int) -> list[ReviewFlag]: ...


class HasPool(Protocol):
    @property
    def pool(self) -> Any: ...


class PgGuardStore:
    def __init__(self, db: HasPool, defaults: Caps, *, inflight_ttl_s: float) -> None:
        self._db = db
        self._defaults = defaults
        # A call in flight longer than its hold can live has lost its process.
        self._inflight_ttl = timedelta(seconds=inflight_ttl_s)

    async def reserve(
        self, user_id: str, usage_id: str, estimate: int, now: datetime
    ) -> Refusal | None:
        async with self._db.pool.acquire() as conn, conn.transaction():
            await repository.lock_user_guard(conn, user_id)
            pause = _pause(await repository.pause_of(conn, user_id))
            if pause is not None and pause.active:
                return pause
            trip = await self._check(conn, user_id, estimate, now)
            if trip is not None:
                return await self._tripped(conn, user_id, trip, now)
            expires_at = now + self._inflight_ttl
            await repository.insert_inflight(conn, usage_id, user_id, estimate, now, expires_at)
        return None

    async def _check(self, conn: Any, user_id: str, estimate: int, now: datetime) -> CapTrip | None:
        await repository.drop_expired_inflight(conn, user_id, now)
        override = _override(await repository.cap_override(conn, user_id))
        caps = guardrails.effective(self._defaults, override)
        row = await repository.spending(
            conn, user_id, guardrails.day_start(now), now - guardrails.WINDOW, now
        )
        spent = Spending(row["charged_today"], row["charged_last_hour"], row["in_flight"])
        return guardrails.check(caps, spent, estimate, now)

    async def _tripped(self, conn: Any, user_id: str, trip: CapTrip, now: datetime) -> CapTrip:
        """The trip to answer; the session cap also pauses the user, in this transaction."""
        if trip.cap != guardrails.HOURLY:
            return trip
        charges = await repository.window_charges(conn, user_id, now - guardrails.WINDOW)
        trip = replace(trip, resets_at=guardrails.hourly_resets_at(trip, charges, now))
        reason = guardrails.pause_reason(trip)
        await repository.pause_user(conn, user_id, reason, now)
        await repository.insert_guardrail_change(
            conn,
            "paused",
            user_id,
            SYSTEM_ACTOR,
            reason,
            {"capMillicredits": trip.cap_millicredits},
        )
        log.warning("user paused by the session cap", extra={"paused_user": user_id})
        return trip

    async def release(self, usage_id: str) -> None:
        async with self._db.pool.acquire() as conn:
            await repository.delete_inflight(conn, usage_id)

    async def caps(self, user_id: str) -> CapsView:
        async with self._db.pool.acquire() as conn:
            override = _override(await repository.cap_override(conn, user_id))
        return self._view(override)

    async def set_caps(
        self, user_id: str, caps: tuple[int | None, int | None, int | None], actor: str, reason: str
    ) -> CapsView:
        async with self._db.pool.acquire() as conn, conn.transaction():
            row = await repository.set_cap_override(conn, user_id, caps, actor, reason)
            details = dict(zip(("perRequest", "perDay", "perHour"), caps, strict=True))
            await repository.insert_guardrail_change(
                conn, "caps_set", user_id, actor, reason, details
            )
        return self._view(_override(row))

    def _view(self, override: CapOverride | None) -> CapsView:
        return CapsView(guardrails.effective(self._defaults, override), self._defaults, override)

    async def pause(self, user_id: str) -> Pause | None:
        async with self._db.pool.acquire() as conn:
            return _pause(await repository.pause_of(conn, user_id))

    async def resume(self, user_id: str, actor: str, reason: str, now: datetime) -> Pause | None:
        async with self._db.pool.acquire() as conn, conn.transaction():
            row = await repository.resume_user(conn, user_id, actor, reason, now)
            if row is not None:
                await repository.insert_guardrail_change(
                    conn, "resumed", user_id, actor, reason, {}
                )
        return _pause(row)

    async def review_flags(self, user_id: str | None, limit: int) -> list[ReviewFlag]:
        async with self._db.pool.acquire() as conn:
            rows = await repository.review_flags(conn, user_id, limit)
        return [ReviewFlag(**dict(r)) for r in rows]


def _pause(row: Any) -> Pause | None:
    return None if row is None else Pause(**dict(row))


def _override(row: Any) -> CapOverride | None:
    if row is None:
        return None
    return CapOverride(
        per_request=row["per_request_millicredits"],
        per_day=row["per_day_millicredits"],
        per_hour=row["per_hour_millicredits"],
        updated_by=row["updated_by"],
        reason=row["reason"],
        updated_at=row["updated_at"],
    )
