"""Where the guardrails keep their state: a port, and its PostgreSQL version.

``reserve`` is the one step that must be atomic per user: in a single short transaction,
under a per-user advisory lock, it counts the request against the user's rate limit (shared
by every replica, see ``billing_platform.ratelimit``), reads the pause, the caps and what
counts against them, then either refuses (pausing the user when the session cap trips) or
adds the call's worst case to the calls in flight. Two concurrent calls of one user
therefore never both pass on the same headroom. A request over the rate limit is refused
before anything else is read or written. The transaction never spans the ledger or the
model: the gateway awaits those after it has committed.

``admit`` counts a request that the caps do not apply to (not charged, or reconcile)
against the same rate limit, in one statement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from billing_events.audit import CAPS_SET, USER_RESUME, AdminAction, AuditTrail
from billing_events.audit import target as audit_target
from billing_platform import ratelimit
from billing_platform.db import HasPool
from billing_platform.ratelimit import Limit, Limited

from metering import guardrails, repository
from metering.guardrails import CapOverride, Caps, CapTrip, Pause, Spending

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "metering"

Refusal = Limited | Pause | CapTrip


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
        """The rate limit, the active pause or the cap tripped; None once the call is
        counted in flight."""
        ...

    async def admit(self, user_id: str, now: datetime) -> Limited | None:
        """Count a request of the user that no cap applies to; Limited when over the rate."""
        ...

    async def release(self, usage_id: str) -> None:
        """The call ended without a usage record: stop counting it in flight."""
        ...

    async def caps(self, user_id: str) -> CapsView: ...

    async def set_caps(
        self, user_id: str, caps: tuple[int | None, int | None, int | None], actor: str, reason: str
    ) -> CapsView: ...

    async def pause(self, user_id: str) -> Pause | None: ...

    async def paused(self, limit: int) -> list[Pause]:
        """The users paused now, most recent first."""
        ...

    async def resume(self, user_id: str, actor: str, reason: str, now: datetime) -> Pause | None:
        """The pause just lifted; None when the user was not paused."""
        ...

    async def review_flags(self, user_id: str | None, limit: int) -> list[ReviewFlag]: ...


class PgGuardStore:
    def __init__(
        self,
        db: HasPool,
        defaults: Caps,
        *,
        inflight_ttl_s: float,
        audit: AuditTrail,
        rate: Limit,
    ) -> None:
        self._db = db
        self._defaults = defaults
        self._rate = rate
        self._audit = audit
        # A call in flight longer than its hold can live has lost its process.
        self._inflight_ttl = timedelta(seconds=inflight_ttl_s)

    async def reserve(
        self, user_id: str, usage_id: str, estimate: int, now: datetime
    ) -> Refusal | None:
        async with self._db.pool.acquire() as conn, conn.transaction():
            await repository.lock_user_guard(conn, user_id)
            limited = await ratelimit.take(conn, self._rate, user_id, now)
            if limited is not None:
                return limited
            state = await repository.guard_state(
                conn, user_id, guardrails.day_start(now), now - guardrails.WINDOW, now
            )
            pause = _pause_in(state)
            if pause is not None and pause.active:
                return pause
            trip = self._check(state, estimate, now)
            if trip is not None:
                return await self._tripped(conn, user_id, trip, now)
            expires_at = now + self._inflight_ttl
            await repository.insert_inflight(conn, usage_id, user_id, estimate, now, expires_at)
        return None

    async def admit(self, user_id: str, now: datetime) -> Limited | None:
        async with self._db.pool.acquire() as conn:
            return await ratelimit.take(conn, self._rate, user_id, now)

    def _check(self, state: Any, estimate: int, now: datetime) -> CapTrip | None:
        caps = guardrails.effective(self._defaults, _override_in(state))
        spent = Spending(state["charged_today"], state["charged_last_hour"], state["in_flight"])
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
            await self._audit.record(conn, admin_action(CAPS_SET, actor, user_id, reason, details))
        return self._view(_override(row))

    def _view(self, override: CapOverride | None) -> CapsView:
        return CapsView(guardrails.effective(self._defaults, override), self._defaults, override)

    async def pause(self, user_id: str) -> Pause | None:
        async with self._db.pool.acquire() as conn:
            return _pause(await repository.pause_of(conn, user_id))

    async def paused(self, limit: int) -> list[Pause]:
        async with self._db.pool.acquire() as conn:
            rows = await repository.paused_users(conn, limit)
        return [Pause(**dict(r)) for r in rows]

    async def resume(self, user_id: str, actor: str, reason: str, now: datetime) -> Pause | None:
        async with self._db.pool.acquire() as conn, conn.transaction():
            row = await repository.resume_user(conn, user_id, actor, reason, now)
            if row is not None:
                await repository.insert_guardrail_change(
                    conn, "resumed", user_id, actor, reason, {}
                )
                await self._audit.record(conn, admin_action(USER_RESUME, actor, user_id, reason))
        return _pause(row)

    async def review_flags(self, user_id: str | None, limit: int) -> list[ReviewFlag]:
        async with self._db.pool.acquire() as conn:
            rows = await repository.review_flags(conn, user_id, limit)
        return [ReviewFlag(**dict(r)) for r in rows]


def admin_action(
    action: str, actor: str, user_id: str, reason: str, details: dict[str, Any] | None = None
) -> AdminAction:
    """The audit record of an admin's change to one user's guardrails."""
    return AdminAction(
        actor=actor,
        action=action,
        target=audit_target("user", user_id),
        reason=reason,
        target_user_id=user_id,
        details=details or {},
    )


def _pause(row: Any) -> Pause | None:
    return None if row is None else Pause(**dict(row))


def _pause_in(state: Any) -> Pause | None:
    if state["pause_user_id"] is None:
        return None
    return Pause(
        user_id=state["pause_user_id"],
        reason=state["pause_reason"],
        paused_at=state["paused_at"],
        resumed_at=state["resumed_at"],
        resumed_by=state["resumed_by"],
        resume_reason=state["resume_reason"],
    )


def _override_in(state: Any) -> CapOverride | None:
    return None if state["cap_user_id"] is None else _override(state)


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
