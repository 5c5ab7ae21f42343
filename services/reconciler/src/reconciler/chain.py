"""The hash chain over the ledger journal: the pure parts, and their SQL twin.

Each journal entry, with its transaction, is written as one canonical text; its digest is
sha256 of that text. Entries fall into segments by id (``SEGMENT_SIZE`` ids each); a
segment's hash chains its entries' digests in id order, and the chain hash of a segment
chains the segment hashes from the first segment up to it:

    fold(state, item) = sha256(state || item), starting from the empty string
    segment_hash      = fold over the digests of the segment's entries, by id
    chain_hash[k]     = fold over segment_hash[0..k], by segment

So any change to an entry or its transaction (amount, account, user, reference, time...),
a deleted entry or an entry slipped in below the last checkpoint changes its segment's
hash and every chain hash after it. Checkpoints also keep an 8-byte prefix of each entry's
digest, which names the first entry that differs inside a segment that does not match.

The database computes all of this (``canonical_sql`` and the ``chain_agg`` aggregate of
the migrations); the functions here say the same in Python so the rules can be read and
tested, and so a checkpoint can be re-derived outside the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

SEGMENT_SIZE = 10_000
ENTRY_DIGEST_PREFIX = 8
NULL_FIELD = "-"

# (SQL expression over e = journal_entries and t = journal_transactions, is a timestamp).
# The order is part of the chain: changing it changes every hash.
CHAIN_FIELDS: tuple[tuple[str, bool], ...] = (
    ("e.id", False),
    ("e.transaction_id", False),
    ("e.account", False),
    ("e.user_id", False),
    ("e.amount_millicredits", False),
    ("e.balance_after_millicredits", False),
    ("e.created_at", True),
    ("t.kind", False),
    ("t.user_id", False),
    ("t.reference_id", False),
    ("t.reverses_id", False),
    ("t.idempotency_key", False),
    ("t.correlation_id", False),
    ("t.source", False),
    ("t.details", False),
    ("t.created_at", True),
)
_SQL_TIME_FORMAT = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_PY_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def render_field(value: object) -> str:
    """Length-prefixed (``5:hello``) so no value can be mistaken for a separator; NULL is -."""
    if value is None:
        return NULL_FIELD
    text = (
        value.astimezone(UTC).strftime(_PY_TIME_FORMAT)
        if isinstance(value, datetime)
        else str(value)
    )
    return f"{len(text)}:{text}"


def canonical_text(values: Sequence[object]) -> str:
    """One entry with its transaction, ``values`` in ``CHAIN_FIELDS`` order.

    ``t.details`` is given as PostgreSQL renders the jsonb (``details::text``).
    """
    if len(values) != len(CHAIN_FIELDS):
        raise ValueError(f"expected {len(CHAIN_FIELDS)} values, got {len(values)}")
    return "|".join(render_field(v) for v in values)


def _sql_field(expression: str, is_time: bool) -> str:
    text = (
        f"to_char({expression} AT TIME ZONE 'UTC', {_SQL_TIME_FORMAT})"
        if is_time
        else f"{expression}::text"
    )
    return f"COALESCE(length({text})::text || ':' || {text}, '{NULL_FIELD}')"


def canonical_sql() -> str:
    """The SQL twin of ``canonical_text`` over ``e`` and ``t``."""
    return " || '|' || ".join(_sql_field(expr, is_time) for expr, is_time in CHAIN_FIELDS)


def digest_sql() -> str:
    return f"sha256(convert_to({canonical_sql()}, 'UTF8'))"


def entry_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def fold(state: bytes, items: Iterable[bytes]) -> bytes:
    """Extend a chain: each item is hashed onto the state (``chain_agg`` in SQL)."""
    for item in items:
        state = hashlib.sha256(state + item).digest()
    return state


def segment_of(entry_id: int) -> int:
    return (entry_id - 1) // SEGMENT_SIZE


def segment_hash(digests: Iterable[bytes]) -> bytes:
    return fold(b"", digests)


def chain_hashes(segment_hashes: Iterable[bytes], state: bytes = b"") -> list[bytes]:
    """The chain hash after each segment; ``state`` is the chain hash before the first."""
    hashes = []
    for item in segment_hashes:
        state = fold(state, [item])
        hashes.append(state)
    return hashes


def covers_prefix(
    stored: Sequence[tuple[int, bytes]], current: Sequence[tuple[int, bytes]]
) -> bool:
    """Whether a checkpointed segment (ids, digest prefixes) is still the head of ``current``.

    A checkpoint is only extended while what it covered is unchanged; otherwise it stays as
    the evidence of the edit.
    """
    return len(current) >= len(stored) and list(current[: len(stored)]) == list(stored)
