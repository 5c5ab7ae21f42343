"""The ledger's SQL protobuf encoder (migrations 0009 and 0010) on the real PostgreSQL: its
bytes must be what the generated classes write, at every edge of a 64-bit varint."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from billing_events.v1 import ledger_pb2
from billing_platform.db import Database

EDGES = [1, 127, 128, 300, 16_383, 16_384, 987_654_321, 2**31, 2**35 + 7, 2**62, 2**63 - 1]


@pytest.fixture
async def ledger_db(migrated_db: Any) -> Database:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "ledger")
    return db


@pytest.mark.parametrize("value", EDGES + [-v for v in EDGES] + [-(2**63)])
async def test_an_int64_field_is_encoded_as_protobuf_encodes_it(
    ledger_db: Database, value: int
) -> None:
    encoded = await ledger_db.pool.fetchval("SELECT pb_int(7, $1)", value)

    expected = ledger_pb2.LedgerTransactionPosted(balance_after_millicredits=value)
    assert bytes(encoded) == expected.SerializeToString()


async def test_a_zero_is_written_out_and_reads_back_as_zero(ledger_db: Database) -> None:
    # The generated classes leave a zero out; written out, it decodes the same.
    encoded = await ledger_db.pool.fetchval("SELECT pb_int(7, 0)")

    assert bytes(encoded) == b"\x38\x00"
    assert ledger_pb2.LedgerTransactionPosted.FromString(encoded).balance_after_millicredits == 0


async def test_a_usage_posting_decodes_to_its_fields(ledger_db: Database) -> None:
    txn, at = uuid.uuid4(), datetime(2026, 11, 26, 10, 0, 0, 123_456, tzinfo=UTC)

    payload = await ledger_db.pool.fetchval(
        "SELECT usage_posted_event($1, 'ünïcode-user', 'usage-1', 1234, -987654321, $2, 'c-1')",
        txn,
        at,
    )

    event = ledger_pb2.LedgerTransactionPosted.FromString(payload)
    assert (event.transaction_id, event.user_id, event.reference_id) == (
        str(txn),
        "ünïcode-user",
        "usage-1",
    )
    assert event.kind == ledger_pb2.TRANSACTION_KIND_USAGE
    assert [(e.account, e.amount_millicredits) for e in event.entries] == [
        ("wallet:ünïcode-user", -1234),
        ("revenue", 1234),
    ]
    assert event.balance_after_millicredits == -987_654_321
    assert event.posted_at.ToDatetime(UTC) == at == event.meta.occurred_at.ToDatetime(UTC)
    assert (event.meta.producer, event.meta.correlation_id) == ("ledger", "c-1")
    assert len(event.meta.event_id) == 32


# The event as the field helpers encode it (migrations 0009 and 0010), its id given.
HELPERS_ENCODING = """
SELECT pb_bytes(1, pb_text(1, $1) || pb_timestamp(2, $7) || pb_text(3, $8) || pb_text(4, 'ledger'))
    || pb_text(2, $2::uuid::text) || pb_int(3, 2) || pb_text(4, $3) || pb_text(5, $4)
    || pb_bytes(6, pb_text(1, 'wallet:' || $3) || pb_int(2, -$5::bigint))
    || pb_bytes(6, pb_text(1, 'revenue') || pb_int(2, $5::bigint))
    || pb_int(7, $6::bigint) || pb_timestamp(8, $7)
"""


@pytest.mark.parametrize(
    ("user", "charge", "balance", "at"),
    [
        ("alice", 1, 0, datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)),
        ("ünïcode-user", 1234, -987_654_321, datetime(2026, 11, 26, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("u" * 130, 128, 2**62, datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)),
        ("bob", 2**31, 2**63 - 1, datetime(2038, 1, 19, 3, 14, 8, 999_999, tzinfo=UTC)),
    ],
)
async def test_the_event_is_byte_for_byte_the_field_helpers_encoding(
    ledger_db: Database, user: str, charge: int, balance: int, at: datetime
) -> None:
    """usage_posted_event (migration 0011) writes its nested messages from constant tags;
    the helpers it replaced are the reference, long strings and varint edges included."""
    txn = uuid.uuid4()
    payload = await ledger_db.pool.fetchval(
        "SELECT usage_posted_event($1, $2, 'usage-1', $3, $4, $5, 'c-1')",
        txn,
        user,
        charge,
        balance,
        at,
    )
    event_id = ledger_pb2.LedgerTransactionPosted.FromString(payload).meta.event_id

    expected = await ledger_db.pool.fetchval(
        HELPERS_ENCODING, event_id, txn, user, "usage-1", charge, balance, at, "c-1"
    )

    assert bytes(payload) == bytes(expected)
