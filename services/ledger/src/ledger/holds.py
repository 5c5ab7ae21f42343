"""Holds: reserve credits before an AI call, then capture what it really cost or release.

Every operation locks the user's ``balances`` row first, so holds, captures, releases and
expiry of one user run one at a time, and availability (balance - held) is checked and
reserved in the same statement: concurrent holds can never reserve more than the balance.
Usage is charged only from what is available, so a capture never drives a balance below
zero; what could not be collected is reported, not silently dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from billing_events.outbox import outbox_headers
from billing_events.topics import Topics
from billing_platform import context
from billing_platform.errors import ApiError
from billing_platform.money import credits_text
from billing_platform.tasks import Periodic
from prometheus_client import Counter

from ledger import journal, repository, service

REVENUE = "revenue"
log = logging.getLogger(__name__)
HOLDS_EXPIRED = Counter("ledger_holds_expired_total", "Holds that expired unsettled")


class InsufficientCredits(ApiError):
    def __init__(self, required: int, available: int) -> None:
        super().__init__(
            402,
            "insufficient_credits",
            "not enough credits for this request",
            requiredMillicredits=required,
            currentMillicredits=available,
            requiredCredits=credits_text(required),
            currentCredits=credits_text(available),
        )


@dataclass(frozen=True)
class Usage:
    usage_id: str
    amount_millicredits: int
    model: str
    input_tokens: int
    output_tokens: int
    rate_card_version: str


def balance_fields(balance: int, held: int) -> dict[str, int]:
    return {
        "balanceMillicredits": balance,
        "heldMillicredits": held,
        "availableMillicredits": balance - held,
    }


async def _balances(conn: Any, user_id: str) -> dict[str, int]:
    balance, held = await repository.balance(conn, user_id)
    return balance_fields(balance, held)


def _hold_body(hold: Any) -> dict[str, Any]:
    return {
        "holdId": str(hold["id"]),
        "userId": hold["user_id"],
        "amountMillicredits": hold["amount_millicredits"],
        "status": hold["status"],
        "expiresAt": hold["expires_at"].isoformat(),
    }


async def create_hold(
    conn: Any, user_id: str, amount: int, key: str, ttl_s: int
) -> tuple[bool, dict[str, Any]]:
    """(created, body); the same key again answers the hold it made (created False).

    The whole of it is the ``create_hold`` function in the ledger's schema, the one
    implementation metering also calls directly."""
    row = await repository.create_hold(conn, user_id, amount, key, ttl_s)
    outcome = row["r_outcome"]
    if outcome == "key_reused":
        raise ApiError(409, "idempotency_key_reused", "this key holds another amount")
    fields = balance_fields(row["r_balance"], row["r_held"])
    if outcome == "insufficient":
        raise InsufficientCredits(amount, max(0, fields["availableMillicredits"]))
    body = {
        "holdId": str(row["r_hold_id"]),
        "userId": user_id,
        "amountMillicredits": row["r_amount"],
        "status": row["r_status"],
        "expiresAt": row["r_expires_at"].isoformat(),
    }
    return outcome == "created", {**body, **fields}


async def _locked_hold(conn: Any, hold_id: str) -> Any:
    owner = await repository.hold_owner(conn, hold_id)
    if owner is None:
        raise ApiError(404, "hold_not_found", "no such hold")
    await repository.lock_balance(conn, owner)
    return await repository.lock_hold(conn, hold_id)


async def release(conn: Any, hold_id: str) -> dict[str, Any]:
    hold = await _locked_hold(conn, hold_id)
    if hold["status"] == "active":
        await repository.unhold(conn, hold["user_id"], hold["amount_millicredits"])
        await repository.settle_hold(conn, hold_id, "released", None, None, None)
        hold = await repository.lock_hold(conn, hold_id)
    return {**_hold_body(hold), **await _balances(conn, hold["user_id"])}


async def capture(conn: Any, topics: Topics, hold_id: str, usage: Usage) -> dict[str, Any]:
    """Charge a hold's real usage once per usage id; the rest of the hold is freed.

    The whole of it is the ``capture_hold`` function in the ledger's schema, the one
    implementation metering also calls directly."""
    headers = outbox_headers(context.current_correlation_id())
    try:
        row = await repository.capture_hold(
            conn, hold_id, usage, context.current_correlation_id(), headers, topics.ledger
        )
    except asyncpg.RaiseError as exc:
        if exc.hint == "usage_id_conflict":
            raise ApiError(
                409, "usage_id_conflict", "this usage id was charged to another user"
            ) from exc
        raise
    if row["r_outcome"] == "hold_not_found":
        raise ApiError(404, "hold_not_found", "no such hold")
    if row["r_outcome"] == "captured_other":
        raise ApiError(409, "hold_already_captured", "the hold was captured for other usage")
    charged = row["r_charged"]
    return {
        "holdId": hold_id,
        "status": row["r_status"],
        "usageId": usage.usage_id,
        "chargedMillicredits": charged,
        "uncollectedMillicredits": max(0, usage.amount_millicredits - charged),
        "transactionId": str(row["r_transaction_id"]) if row["r_transaction_id"] else None,
        **balance_fields(row["r_balance"], row["r_held"]),
    }


async def charge_usage(
    conn: Any, topics: Topics, user_id: str, usage: Usage, hold_id: str | None
) -> tuple[str, int] | None:
    """Post a usage charge of at most what is available (the caller locked the balance).

    Returns (transaction id, charged) or None when nothing was charged; a usage id that
    was already posted returns that posting.
    """
    done = await repository.usage_posting(conn, usage.usage_id)
    if done is not None:
        if done["user_id"] != user_id:  # usage ids are unique platform-wide, never reused
            raise ApiError(409, "usage_id_conflict", "this usage id was charged to another user")
        return str(done["id"]), -done["amount_millicredits"]
    balance, held = await repository.balance(conn, user_id)
    charge = chargeable(usage, balance - held)
    if charge == 0:
        return None
    posted = await service.post(conn, topics, usage_posting(user_id, usage, charge, hold_id))
    if posted is None:  # the unique usage index: posted meanwhile by the other path
        raise RuntimeError(f"usage {usage.usage_id} was posted concurrently")
    return posted.transaction_id, charge


def chargeable(usage: Usage, available: int) -> int:
    """What a usage record may charge: its price, at most what is available, never less than 0."""
    return max(0, min(usage.amount_millicredits, available))


def usage_posting(user_id: str, usage: Usage, charge: int, hold_id: str | None) -> journal.Posting:
    return journal.Posting(
        kind="usage",
        user_id=user_id,
        reference_id=usage.usage_id,
        source=f"hold:{hold_id}" if hold_id else "usage",
        entries=(journal.Entry(journal.wallet(user_id), -charge), journal.Entry(REVENUE, charge)),
        details=_usage_details(usage, hold_id),
    )


def _usage_details(usage: Usage, hold_id: str | None) -> dict[str, Any]:
    return {
        "model": usage.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "rate_card_version": usage.rate_card_version,
        "requested_millicredits": usage.amount_millicredits,
        "hold_id": hold_id,
    }


async def expire_due(conn: Any, user_id: str) -> int:
    await repository.lock_balance(conn, user_id)
    return await repository.expire_due_holds(conn, user_id)


class HoldSweeper(Periodic):
    """Expires overdue holds on a period, so reserved credits come back by themselves."""

    def __init__(self, db: Any, interval_s: float, batch: int = 500) -> None:
        super().__init__("hold-sweeper", self.sweep, interval_s)
        self._db = db
        self._batch = batch

    async def sweep(self) -> int:
        async with self._db.pool.acquire() as conn:
            users = await repository.users_with_due_holds(conn, self._batch)
        expired = 0
        for user_id in users:
            async with self._db.pool.acquire() as conn, conn.transaction():
                expired += await expire_due(conn, user_id)
        HOLDS_EXPIRED.inc(expired)
        return expired
