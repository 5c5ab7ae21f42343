"""What the harness did and what it saw, kept apart from anything the platform stores.

A client outcome is ``confirmed`` (a definitive answer came back), ``none`` (never sent,
or definitively refused) or ``unknown`` (sent, but no definitive answer before the run
ended: the platform may or may not have acted, and either is correct as long as it acted
at most once).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["confirmed", "unknown", "none"]

# The catalog as the README states it: code -> (price in cents, credits + bonus granted).
CATALOG: dict[str, tuple[int, int]] = {
    "starter": (999, 9_990_000),
    "growth": (2499, 26_240_000),
    "professional": (4999, 54_990_000),
    "business": (7499, 86_240_000),
    "enterprise": (9999, 119_990_000),
}


def seeded(seed: int) -> random.Random:
    """A generator for one part of a run; reproducibility, not secrecy, is the point."""
    return random.Random(seed)  # noqa: S311


def clawback(grant_millicredits: int, refunded_cents: int, price_cents: int) -> int:
    """What a cumulative refund takes back: floor(grant * refunded / price)."""
    return grant_millicredits * refunded_cents // price_cents


@dataclass
class Purchase:
    purchase_id: str
    user_id: str
    package_code: str
    paid_by: str  # "sync", "async" or "unpaid" (an unpaid completion that never clears)
    payment: Outcome = "none"
    refunded_cents: int = 0  # highest cumulative refund confirmed delivered
    refunds_unknown: list[int] = field(default_factory=list)  # sent, never confirmed

    @property
    def price_cents(self) -> int:
        return CATALOG[self.package_code][0]

    @property
    def grant_millicredits(self) -> int:
        return CATALOG[self.package_code][1]

    def acceptable_clawbacks(self) -> set[int]:
        totals = {
            self.refunded_cents,
            *(c for c in self.refunds_unknown if c > self.refunded_cents),
        }
        return {clawback(self.grant_millicredits, c, self.price_cents) for c in totals}


@dataclass
class Charge:
    """A chat or reconcile call; ``charged`` is what the client's answer said."""

    kind: str  # "chat", "stream" or "reconcile"
    user_id: str
    key: str
    outcome: Outcome = "none"
    charged_millicredits: int = 0
    usage_id: str | None = None  # from the answer (reconcile) or the usage record (chat)

    @property
    def metering_key(self) -> str:
        """The key metering stores the usage record under (see metering's usage_records)."""
        if self.kind == "reconcile":
            return f"reconcile:{self.key}"
        return f"chat:{self.user_id}:{self.key}"


@dataclass
class Adjustment:
    user_id: str
    key: str
    amount_millicredits: int
    outcome: Outcome = "none"


@dataclass
class Model:
    users: list[str] = field(default_factory=list)
    purchases: list[Purchase] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)
    webhook_deliveries: int = 0
    refund_events: int = 0
    # (endpoint, status or exception name) -> count, as the clients saw them.
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Answers that break the API contract whatever the chaos (e.g. a 422 on a valid body).
    anomalies: list[str] = field(default_factory=list)

    def saw(self, endpoint: str, what: str) -> None:
        self.answers[(endpoint, what)] += 1

    def events(self) -> dict[str, int]:
        charged = [c for c in self.charges if c.outcome == "confirmed"]
        return {
            "purchases": len(self.purchases),
            "paymentsConfirmed": sum(p.payment == "confirmed" for p in self.purchases),
            "unpaidPurchases": sum(p.paid_by == "unpaid" for p in self.purchases),
            "webhookDeliveries": self.webhook_deliveries,
            "refundEvents": self.refund_events,
            "chats": sum(c.kind == "chat" for c in self.charges),
            "streams": sum(c.kind == "stream" for c in self.charges),
            "reconciles": sum(c.kind == "reconcile" for c in self.charges),
            "chargesConfirmed": len(charged),
            "adjustments": sum(a.outcome == "confirmed" for a in self.adjustments),
            "unknownOutcomes": sum(c.outcome == "unknown" for c in self.charges)
            + sum(a.outcome == "unknown" for a in self.adjustments)
            + sum(p.payment == "unknown" for p in self.purchases),
        }

    def http_summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (endpoint, what), n in sorted(self.answers.items()):
            out.setdefault(endpoint, {})[what] = n
        return out
