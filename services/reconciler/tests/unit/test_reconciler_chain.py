"""The journal hash chain: an entry's canonical text, digests, and extending the chain."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from reconciler import chain

ENTRY = [
    7,
    "8953ecc0-95c5-4100-a631-cdff6997c1d4",
    "wallet:u|1",
    "u|1",
    -50_000,
    950_000,
    datetime(2025, 1, 31, 23, 59, 59, 123456, tzinfo=UTC),
    "usage",
    "u|1",
    "usage-1",
    None,
    None,
    "corr-1",
    "hold:h1",
    '{"model": "gpt-4o"}',
    datetime(2025, 2, 1, 1, 0, 0, 5, tzinfo=timezone(timedelta(hours=1))),
]
# What PostgreSQL computes for ENTRY with chain.canonical_sql() (checked against a server).
# Every stored checkpoint depends on this text: a change here invalidates all of them.
GOLDEN_TEXT = (
    "1:7|36:8953ecc0-95c5-4100-a631-cdff6997c1d4|10:wallet:u|1|3:u|1|6:-50000|6:950000"
    "|27:2025-01-31T23:59:59.123456Z|5:usage|3:u|1|7:usage-1|-|-|6:corr-1|7:hold:h1"
    '|19:{"model": "gpt-4o"}|27:2025-02-01T00:00:00.000005Z'
)
GOLDEN_DIGEST = "a5b702e096b81a4a38820fe5f90c84a92cef09c9a1e0451a44ae9c2aa51d2efd"


def test_the_canonical_text_of_an_entry_is_stable() -> None:
    assert chain.canonical_text(ENTRY) == GOLDEN_TEXT
    assert chain.entry_digest(GOLDEN_TEXT).hex() == GOLDEN_DIGEST


def test_times_are_written_in_utc_with_microseconds() -> None:
    assert chain.render_field(datetime(2025, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))) == (
        "27:2025-01-01T00:00:00.000000Z"
    )


def test_null_is_not_the_empty_string() -> None:
    assert chain.render_field(None) == "-"
    assert chain.render_field("") == "0:"
    assert chain.render_field("-") == "1:-"


def test_length_prefixes_keep_separators_inside_values_unambiguous() -> None:
    # Without them both would read "a|b|c".
    first = chain.canonical_text(["a|b", "c", *ENTRY[2:]])
    second = chain.canonical_text(["a", "b|c", *ENTRY[2:]])

    assert first != second


def test_every_field_changes_the_digest() -> None:
    base = chain.entry_digest(chain.canonical_text(ENTRY))
    for index in range(len(ENTRY)):
        changed = list(ENTRY)
        changed[index] = "x" if ENTRY[index] is None else None
        assert chain.entry_digest(chain.canonical_text(changed)) != base, index


def test_the_text_needs_exactly_the_chain_fields() -> None:
    with pytest.raises(ValueError, match="expected 16 values"):
        chain.canonical_text(ENTRY[:-1])


def test_the_sql_twin_writes_the_same_fields_in_the_same_order() -> None:
    sql = chain.canonical_sql()

    positions = [sql.index(expr) for expr, _ in chain.CHAIN_FIELDS if expr != "e.id"]
    assert positions == sorted(positions)
    assert sql.count(" || '|' || ") == len(chain.CHAIN_FIELDS) - 1
    assert sql.count("AT TIME ZONE 'UTC'") == 2 * sum(t for _, t in chain.CHAIN_FIELDS)


def test_fold_is_sha256_of_state_and_item() -> None:
    expected = hashlib.sha256(hashlib.sha256(b"a").digest() + b"b").digest()

    assert chain.fold(b"", [b"a", b"b"]) == expected


def test_extending_a_chain_equals_computing_it_at_once() -> None:
    digests = [bytes([i]) * 32 for i in range(10)]

    head = chain.fold(b"", digests[:6])

    assert chain.fold(head, digests[6:]) == chain.fold(b"", digests)


def test_chain_hashes_continue_from_the_last_checkpoint() -> None:
    segments = [chain.segment_hash([bytes([i]) * 32]) for i in range(5)]
    stored = chain.chain_hashes(segments[:3])

    extended = chain.chain_hashes(segments[3:], state=stored[-1])

    assert stored + extended == chain.chain_hashes(segments)


def test_any_change_before_a_checkpoint_changes_every_later_chain_hash() -> None:
    segments = [chain.segment_hash([bytes([i]) * 32]) for i in range(4)]
    edited = [segments[0], chain.segment_hash([b"\xff" * 32]), *segments[2:]]

    before, after = chain.chain_hashes(segments), chain.chain_hashes(edited)

    assert before[0] == after[0]
    assert all(b != a for b, a in zip(before[1:], after[1:], strict=True))


@pytest.mark.parametrize(("entry_id", "segment"), [(1, 0), (10_000, 0), (10_001, 1), (25_000, 2)])
def test_entries_fall_into_segments_by_id(entry_id: int, segment: int) -> None:
    assert chain.segment_of(entry_id) == segment


def test_a_checkpoint_extends_only_while_it_is_still_the_prefix() -> None:
    stored = [(1, b"a" * 8), (2, b"b" * 8)]

    assert chain.covers_prefix(stored, [*stored, (3, b"c" * 8)])
    assert not chain.covers_prefix(stored, [(1, b"a" * 8), (2, b"X" * 8), (3, b"c" * 8)])
    assert not chain.covers_prefix(stored, [(1, b"a" * 8), (3, b"c" * 8)])
    assert not chain.covers_prefix(stored, [(1, b"a" * 8)])
