"""Double-entry postings as plain data, and the arithmetic of grants and refunds.

Sign convention: a positive amount on ``wallet:<user>`` is credit the user can spend; every
posting's entries sum to zero, so money coming in through Stripe is a negative amount on
``stripe_clearing`` and bonus credits a negative amount on ``promotional``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MILLICREDITS_PER_CENT = 10_000  # US$1 = 1,000 credits = 1,000,000 millicredits
STRIPE_CLEARING = "stripe_clearing"
PROMOTIONAL = "promotional"
ADJUSTMENTS = "adjustments"


def wallet(user_id: str) -> str:
    return f"wallet:{user_id}"


@dataclass(frozen=True)
class Entry:
    account: str
    amount_millicredits: int


@dataclass(frozen=True)
class Posting:
    """One journal transaction about to be written."""

    kind: str
    user_id: str
    reference_id: str
    source: str
    entries: tuple[Entry, ...]
    reverses_id: str | None = None
    idempotency_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum(e.amount_millicredits for e in self.entries) != 0:
            raise ValueError(f"{self.kind} posting for {self.reference_id} does not balance")

    @property
    def wallet_delta(self) -> int:
        account = wallet(self.user_id)
        return sum(e.amount_millicredits for e in self.entries if e.account == account)


def purchase_entries(user_id: str, price_cents: int, grant_millicredits: int) -> tuple[Entry, ...]:
    """The user gets the whole grant; Stripe money covers the price, promotions the bonus."""
    cash = price_cents * MILLICREDITS_PER_CENT
    return (
        Entry(wallet(user_id), grant_millicredits),
        Entry(STRIPE_CLEARING, -cash),
        Entry(PROMOTIONAL, cash - grant_millicredits),
    )


@dataclass(frozen=True)
class Clawback:
    refund_cents: int
    clawback_millicredits: int


def refund_clawback(
    *,
    price_cents: int,
    grant_millicredits: int,
    refunded_cents_before: int,
    clawed_back_before: int,
    refunded_total_cents: int,
) -> Clawback | None:
    """What a refund reported as a cumulative total adds; None when it adds nothing.

    The clawback is the refunded share of the grant, rounded down, computed on the
    cumulative total so that several partial refunds add up exactly to a full one.
    """
    total = min(refunded_total_cents, price_cents)
    if total <= refunded_cents_before:
        return None
    target = grant_millicredits * total // price_cents
    return Clawback(total - refunded_cents_before, target - clawed_back_before)


def refund_entries(user_id: str, clawback: Clawback) -> tuple[Entry, ...]:
    cash = clawback.refund_cents * MILLICREDITS_PER_CENT
    return (
        Entry(wallet(user_id), -clawback.clawback_millicredits),
        Entry(STRIPE_CLEARING, cash),
        Entry(PROMOTIONAL, clawback.clawback_millicredits - cash),
    )


def adjustment_entries(user_id: str, amount_millicredits: int) -> tuple[Entry, ...]:
    return (Entry(wallet(user_id), amount_millicredits), Entry(ADJUSTMENTS, -amount_millicredits))
