"""Charged usage records of a fetched batch, posted together: the ledger's hot path.

Per record the meaning is the one of the record-by-record path (``holds``): each usage id is
posted once, for at most what its user has available (balance minus held), in the order the
records came. Only the work is shared: the batch's balances are locked once (in user order,
as every path locks them), its postings, entries, balance moves and outbox records are
written in a handful of statements. Records already posted (the gateway captured their
hold) are answered from one look-up, without a lock (``settled_already``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from billing_events.topics import Topics

from ledger import holds, repository, service


@dataclass(frozen=True)
class UsageRecord:
    key: str
    user_id: str
    usage: holds.Usage
    hold_id: str
    charged: bool
    correlation_id: str


class NeedsOneByOne(Exception):
    """A record of the batch still has a hold to capture: that is the record path's work."""


class UsageConflict(Exception):
    """A usage id was already posted to another user."""


async def settled_already(conn: Any, records: Sequence[UsageRecord]) -> dict[str, str]:
    """The outcomes of the records there is nothing to do for, by inbox key: not billed, or
    posted already (most: the gateway captured their hold in the transaction that wrote
    them, and a posting is never undone). Neither changes anything whenever it is handled,
    so neither is claimed in the inbox: that was two more row writes per AI call. One
    look-up, without a lock (a lock would hold up the gateway's captures for the same
    users). A usage id posted to another user raises."""
    outcomes = {r.key: "not_billed" for r in records if not r.charged}
    await _not_posted_yet(conn, [r for r in records if r.charged], outcomes)
    return outcomes


async def post_usage_batch(
    conn: Any, topics: Topics, records: Sequence[UsageRecord]
) -> dict[str, str]:
    """Post the charges of records ``settled_already`` left (charged, not posted when it
    looked); the outcome of each record by its inbox key."""
    for record in records:
        if record.hold_id:
            raise NeedsOneByOne(f"usage {record.usage.usage_id} has a hold to capture")
    outcomes: dict[str, str] = {}
    balances = await repository.lock_balances(conn, sorted({r.user_id for r in records}))
    # Under the locks, no other path can post these users' usage: look again.
    new = await _not_posted_yet(conn, records, outcomes)
    charges = _charges(new, balances)
    for record, charge in charges:
        outcomes[record.key] = "posted" if charge else "uncollected"
    postings = [
        service.Batched(holds.usage_posting(r.user_id, r.usage, c, None), r.correlation_id)
        for r, c in charges
        if c
    ]
    await service.post_many(conn, topics, postings, {u: b for u, (b, _) in balances.items()})
    return outcomes


async def _not_posted_yet(
    conn: Any, records: Sequence[UsageRecord], outcomes: dict[str, str]
) -> list[UsageRecord]:
    """The records not posted yet; each posted one gets its outcome."""
    if not records:
        return []
    posted_to = await repository.usage_postings(conn, [r.usage.usage_id for r in records])
    new = []
    for record in records:
        owner = posted_to.get(record.usage.usage_id)
        if owner is not None and owner != record.user_id:
            raise UsageConflict(f"usage {record.usage.usage_id} was charged to another user")
        if owner is None:
            new.append(record)
        else:
            outcomes[record.key] = "posted"
    return new


def _charges(
    records: Sequence[UsageRecord], balances: dict[str, tuple[int, int]]
) -> list[tuple[UsageRecord, int]]:
    available = {user: balance - held for user, (balance, held) in balances.items()}
    charges = []
    for record in records:
        charge = holds.chargeable(record.usage, available.get(record.user_id, 0))
        available[record.user_id] = available.get(record.user_id, 0) - charge
        charges.append((record, charge))
    return charges
