"""A run's JSON body, and when an Idempotency-Key runs, replays or conflicts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from reconciler.findings import Finding
from reconciler.period import Period
from reconciler.runs import (
    ChainHead,
    Decision,
    RunRecord,
    build_record,
    decide,
    request_hash,
    run_body,
    valid_key,
)

STARTED = datetime(2025, 3, 1, 0, 5, tzinfo=UTC)
PERIOD = Period(date(2025, 2, 28))
DRIFT = Finding(
    check="balances_match_journal",
    kind="balance_drift",
    user_id="u1",
    expected_millicredits=5000,
    actual_millicredits=4000,
    detail="balance 4000, wallet entries sum to 5000 (2 entries)",
)
LAG = Finding(
    check="stream_lag",
    kind="stream_lag",
    detail="paid session cs_1 has no grant",
    references=("p1", "evt_1"),
)


def record(results: list[tuple[str, list[Finding]]], head: ChainHead | None = None) -> RunRecord:
    finished = STARTED + timedelta(milliseconds=1234)
    return build_record("run-1", PERIOD, STARTED, finished, results, 7, head)


def test_a_clean_run_has_every_check_with_zero_findings() -> None:
    body = run_body(record([("transactions_balanced", []), ("refunds", [])]))

    assert body == {
        "runId": "run-1",
        "period": {"from": "2025-02-28T00:00:00Z", "to": "2025-03-01T00:00:00Z"},
        "status": "clean",
        "startedAt": "2025-03-01T00:05:00Z",
        "finishedAt": "2025-03-01T00:05:01.234000Z",
        "durationMs": 1234,
        "checks": [
            {"name": "transactions_balanced", "findings": 0},
            {"name": "refunds", "findings": 0},
        ],
        "findings": [],
        "stripeApiSessionsSeen": 7,
        "journalChain": None,
    }


def test_findings_are_listed_in_check_order_with_camel_case_fields() -> None:
    results = [("balances_match_journal", [DRIFT]), ("stream_lag", [LAG])]
    body = run_body(record(results))

    assert body["status"] == "findings"
    assert body["checks"] == [
        {"name": "balances_match_journal", "findings": 1},
        {"name": "stream_lag", "findings": 1},
    ]
    assert body["findings"] == [
        {
            "check": "balances_match_journal",
            "kind": "balance_drift",
            "userId": "u1",
            "references": [],
            "expectedMillicredits": 5000,
            "actualMillicredits": 4000,
            "detail": "balance 4000, wallet entries sum to 5000 (2 entries)",
        },
        {
            "check": "stream_lag",
            "kind": "stream_lag",
            "userId": None,
            "references": ["p1", "evt_1"],
            "expectedMillicredits": None,
            "actualMillicredits": None,
            "detail": "paid session cs_1 has no grant",
        },
    ]


def test_amounts_stay_integers_in_the_json() -> None:
    big = Finding("c", "k", "d", expected_millicredits=9_007_199_254_740_993, actual_millicredits=0)
    body = run_body(record([("c", [big])]))

    assert body["findings"][0]["expectedMillicredits"] == 9_007_199_254_740_993


def test_the_chain_head_is_shown_as_hex() -> None:
    head = ChainHead(last_entry_id=42, chain_hash=bytes.fromhex("ab" * 32))
    body = run_body(record([], head))

    assert body["journalChain"] == {"lastEntryId": 42, "chainHash": "ab" * 32}


def test_a_key_not_used_yet_runs() -> None:
    assert decide(None, request_hash("2025-02-28")) is Decision.NEW


def test_the_same_key_and_body_replays() -> None:
    assert decide(request_hash("2025-02-28"), request_hash("2025-02-28")) is Decision.REPLAY


def test_the_same_key_with_another_body_conflicts() -> None:
    assert decide(request_hash("2025-02-28"), request_hash("2025-02-27")) is Decision.CONFLICT


def test_a_body_without_date_is_not_the_same_as_one_naming_yesterday() -> None:
    # "Yesterday" moves: a key first used without a date keeps meaning "the day it ran".
    assert request_hash(None) != request_hash("2025-02-28")


@pytest.mark.parametrize(
    ("key", "ok"), [("k", True), ("x" * 255, True), ("", False), ("  ", False), ("x" * 256, False)]
)
def test_keys_are_1_to_255_characters(key: str, ok: bool) -> None:
    assert valid_key(key) is ok
