"""Dead letters: decoding, replayed-marking, selection, commit positions, and the commands."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from pathlib import Path

import pytest
from billing_cli import dlq, main
from billing_cli.dlq import Letter
from billing_cli.layout import Layout
from billing_events.audit import admin_action_message
from billing_events.topics import Topics
from billing_events.v1 import audit_pb2, dlq_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner

DLQ = "stripe.events.dlq.v1"


def _ts(iso: str) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(iso))
    return ts


def dead_letter(**overrides: object) -> dlq_pb2.DeadLetter:
    fields: dict[str, object] = {
        "original_topic": "stripe.events.v1",
        "original_partition": 3,
        "original_offset": 41,
        "original_key": b"cs_test_1",
        "original_value": b"\x0a\x03abc",
        "original_headers": {"correlation-id": b"corr-1", "traceparent": b"00-ab-cd-01"},
        "consumer_group": "ledger",
        "error_type": "ValidationError",
        "error_message": "amount mismatch",
        "attempts": 5,
        "first_failed_at": _ts("2025-01-02T03:04:05+00:00"),
        "last_failed_at": _ts("2025-01-02T03:04:09+00:00"),
    }
    return dlq_pb2.DeadLetter(**{**fields, **overrides})  # type: ignore[arg-type]


def letter(offset: int, partition: int = 0, **overrides: object) -> Letter:
    return dlq.letter_from_bytes(partition, offset, dead_letter(**overrides).SerializeToString())


# --- decoding ----------------------------------------------------------------------------------


def test_a_dead_letter_record_decodes_into_a_letter() -> None:
    x = letter(7, partition=1)

    assert (x.partition, x.offset) == (1, 7)
    assert x.original_topic == "stripe.events.v1"
    assert x.key == "cs_test_1"
    assert (x.consumer_group, x.error_type, x.error_message) == (
        "ledger",
        "ValidationError",
        "amount mismatch",
    )
    assert x.attempts == 5
    assert x.first_failed_at == "2025-01-02T03:04:05+00:00"
    assert x.last_failed_at == "2025-01-02T03:04:09+00:00"
    assert x.replayed is False
    assert x.replayable
    assert x.message.original_value == b"\x0a\x03abc"


def test_unset_failure_times_are_empty() -> None:
    message = dlq_pb2.DeadLetter(original_topic="t")

    x = dlq.letter_from_bytes(0, 0, message.SerializeToString())

    assert (x.first_failed_at, x.last_failed_at) == ("", "")


def test_an_undecodable_record_is_listed_but_not_replayable() -> None:
    x = dlq.letter_from_bytes(0, 3, b"\xff\xff\xff")

    assert x.error_type == "UndecodableDeadLetter"
    assert not x.replayable


def test_the_raw_message_is_not_printed() -> None:
    x = letter(0)

    assert "original_value" not in repr(x)
    assert "message" not in x.as_dict()
    assert x.as_dict()["originalOffset"] == 41
    json.dumps(x.as_dict())


# --- replayed marking and selection ------------------------------------------------------------


def test_letters_below_the_committed_offset_are_replayed() -> None:
    letters = [letter(0), letter(1), letter(2), letter(0, partition=1)]

    marked = dlq.mark_replayed(letters, {0: 2})

    assert [(x.partition, x.offset, x.replayed) for x in marked] == [
        (0, 0, True),
        (0, 1, True),
        (0, 2, False),
        (1, 0, False),
    ]
    assert marked[0].message == letters[0].message


def test_select_takes_every_pending_replayable_letter() -> None:
    letters = dlq.mark_replayed(
        [letter(0), letter(1), dlq.letter_from_bytes(0, 2, b"\xff"), letter(3)], {0: 1}
    )

    assert [x.offset for x in dlq.select(letters)] == [1, 3]


def test_select_by_offsets_skips_replayed_and_unknown_ones() -> None:
    letters = dlq.mark_replayed([letter(0), letter(1), letter(2)], {0: 1})

    assert [x.offset for x in dlq.select(letters, {0, 2, 99})] == [2]


# --- commit positions --------------------------------------------------------------------------


def test_replaying_everything_commits_the_ends() -> None:
    letters = [letter(0), letter(1), letter(0, partition=1)]

    moves = dlq.commit_positions(letters, letters, {0: 0}, ends={0: 2, 1: 1, 2: 0})

    assert moves == {0: 2, 1: 1}


def test_the_commit_never_moves_back() -> None:
    assert dlq.commit_positions([], [], {0: 5}, ends={0: 5}) == {}
    assert dlq.commit_positions([letter(2)], [letter(2)], {0: 5}) == {}


def test_explicit_offsets_commit_only_the_contiguous_run() -> None:
    letters = [letter(o) for o in range(5)]

    moves = dlq.commit_positions(letters, [letter(0), letter(1), letter(3)], {})

    assert moves == {0: 2}


def test_a_gap_at_the_committed_offset_blocks_the_commit() -> None:
    letters = [letter(o) for o in range(4)]

    assert dlq.commit_positions(letters, [letter(3)], {0: 2}) == {}


def test_the_run_continues_from_the_committed_offset() -> None:
    letters = [letter(o) for o in range(6)]

    moves = dlq.commit_positions(letters, [letter(3), letter(4)], {0: 3})

    assert moves == {0: 5}


def test_offset_gaps_in_the_log_do_not_break_the_run() -> None:
    # Transaction markers and compaction leave offsets with no record.
    letters = [letter(0), letter(2), letter(5)]

    assert dlq.commit_positions(letters, letters, {}) == {0: 6}


def test_unreplayable_letters_do_not_block_the_run() -> None:
    corrupt = dlq.letter_from_bytes(0, 1, b"\xff")
    letters = [letter(0), corrupt, letter(2), letter(3)]

    assert dlq.commit_positions(letters, [letter(0), letter(2)], {}) == {0: 3}


def test_partitions_advance_independently() -> None:
    letters = [letter(0), letter(1), letter(0, partition=1), letter(1, partition=1)]
    replayed = [letter(0), letter(1, partition=1)]

    assert dlq.commit_positions(letters, replayed, {}) == {0: 1}


# --- replayed records --------------------------------------------------------------------------


def test_replay_keeps_the_original_headers_and_adds_its_source() -> None:
    headers = dlq.replay_headers(letter(4, partition=0), "ns.stripe.events.dlq.v1")

    assert dict(headers) == {
        "correlation-id": b"corr-1",
        "traceparent": b"00-ab-cd-01",
        "dlq-replayed-from": b"ns.stripe.events.dlq.v1:0:4",
    }


def test_a_second_replay_replaces_the_older_source_header() -> None:
    again = letter(9, original_headers={"dlq-replayed-from": b"x:0:1", "traceparent": b"t"})

    headers = dlq.replay_headers(again, DLQ)

    assert headers == [("traceparent", b"t"), ("dlq-replayed-from", f"{DLQ}:0:9".encode())]


@pytest.mark.parametrize(("namespace", "group"), [("", "dlq-replay"), ("t1", "t1.dlq-replay")])
def test_replay_group_follows_the_topic_namespace(namespace: str, group: str) -> None:
    assert dlq.replay_group_for(namespace) == group


# --- the CLI -----------------------------------------------------------------------------------

runner = CliRunner(mix_stderr=False)


@pytest.fixture
def layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Layout:
    chosen = Layout("t", tmp_path)
    monkeypatch.setattr(Layout, "selected", classmethod(lambda cls: chosen))
    monkeypatch.delenv("BILLING_TOPIC_NAMESPACE", raising=False)
    return chosen


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dlq", "--help"], ["list", "replay"]),
        (["dlq", "list", "--help"], ["--topic", "--json"]),
        (["dlq", "replay", "--help"], ["--topic", "--offset"]),
        (["webhook", "--help"], ["replay"]),
        (["webhook", "replay", "--help"], ["--event-id"]),
        (["--help"], ["stripe", "dlq", "webhook", "up", "token"]),
    ],
)
def test_help_lists_the_commands(args: list[str], expected: list[str]) -> None:
    result = runner.invoke(main.app, args)

    assert result.exit_code == 0
    for word in expected:
        assert word in result.stdout


def _fake_read(letters: list[Letter], calls: list[tuple[str, ...]]) -> object:
    async def read(bootstrap: str, topic: str, group: str) -> list[Letter]:
        calls.append((bootstrap, topic, group))
        return letters

    return read


def test_list_prints_a_table(monkeypatch: pytest.MonkeyPatch, layout: Layout) -> None:
    calls: list[tuple[str, ...]] = []
    letters = dlq.mark_replayed([letter(0), letter(1, error_message="bad\nthing")], {0: 1})
    monkeypatch.setattr(dlq, "read_letters", _fake_read(letters, calls))

    result = runner.invoke(main.app, ["dlq", "list"])

    assert result.exit_code == 0, result.stderr
    header, first, second = result.stdout.splitlines()
    assert header.startswith("WHERE")
    assert first.split()[:2] == ["0:0", "replayed"]
    assert second.split()[:2] == ["0:1", "pending"]
    assert second.endswith("ValidationError: bad thing")
    assert calls == [(f"127.0.0.1:{layout.kafka_port}", DLQ, "dlq-replay")]


def test_list_as_json_lines_in_a_namespace(monkeypatch: pytest.MonkeyPatch, layout: Layout) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(dlq, "read_letters", _fake_read([letter(0), letter(1)], calls))
    monkeypatch.setenv("BILLING_TOPIC_NAMESPACE", "run7")

    result = runner.invoke(main.app, ["dlq", "list", "--json"])

    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["offset"] for r in rows] == [0, 1]
    assert calls[0][1:] == (f"run7.{DLQ}", "run7.dlq-replay")


def test_list_reports_a_missing_topic(monkeypatch: pytest.MonkeyPatch, layout: Layout) -> None:
    async def missing(bootstrap: str, topic: str, group: str) -> list[Letter]:
        raise dlq.DlqError(f"topic {topic} does not exist")

    monkeypatch.setattr(dlq, "read_letters", missing)

    result = runner.invoke(main.app, ["dlq", "list", "--topic", "nope.dlq.v1"])

    assert result.exit_code == 1
    assert "topic nope.dlq.v1 does not exist" in result.stderr


def test_replay_prints_what_was_replayed_and_flags_the_rest(
    monkeypatch: pytest.MonkeyPatch, layout: Layout
) -> None:
    asked: list[Collection[int] | None] = []

    async def fake_replay(
        bootstrap: str, topic: str, group: str, offsets: Collection[int] | None = None
    ) -> list[Letter]:
        asked.append(offsets)
        return [letter(2)]

    monkeypatch.setattr(dlq, "replay", fake_replay)
    audited = record_replays(monkeypatch)

    result = runner.invoke(main.app, ["dlq", "replay", "--offset", "2", "--offset", "5"])

    assert asked == [[2, 5]]
    assert result.stdout == f"replayed {DLQ}:0:2 -> stripe.events.v1 key=cs_test_1\n"
    assert result.exit_code == 1
    assert "5" in result.stderr
    assert [offsets for offsets, _ in audited] == [[2]]


def record_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[list[int], dlq.ReplayedBy]]:
    """Stands in for the broker: keeps the audit records the command asks to publish."""
    audited: list[tuple[list[int], dlq.ReplayedBy]] = []

    async def fake_record(
        bootstrap: str, topics: Topics, dlq_topic: str, letters: list[Letter], by: dlq.ReplayedBy
    ) -> audit_pb2.AdminActionRecorded:
        audited.append(([x.offset for x in letters], by))
        action = dlq.replay_action(dlq_topic, letters, by)
        return admin_action_message(action, "billing-cli", correlation_id=by.correlation_id)

    monkeypatch.setattr(dlq, "record_replay", fake_record)
    return audited


def test_a_replay_is_recorded_for_the_audit_trail(
    monkeypatch: pytest.MonkeyPatch, layout: Layout
) -> None:
    async def fake_replay(
        bootstrap: str, topic: str, group: str, offsets: Collection[int] | None = None
    ) -> list[Letter]:
        return [letter(2), letter(3)]

    monkeypatch.setattr(dlq, "replay", fake_replay)
    audited = record_replays(monkeypatch)
    args = ["dlq", "replay", "--actor", "ops-3", "--reason", "fixed", "--correlation-id", "c-1"]

    result = runner.invoke(main.app, args)

    assert result.exit_code == 0, result.stderr
    [(offsets, by)] = audited
    assert offsets == [2, 3]
    assert by == dlq.ReplayedBy("ops-3", "fixed", "c-1")
    assert "c-1" in result.stderr


def test_the_replay_record_names_the_dlq_and_its_letters() -> None:
    by = dlq.ReplayedBy("ops-3", "fixed", "c-1")

    action = dlq.replay_action(DLQ, [letter(2), letter(4, partition=1)], by)

    assert (action.actor, action.action, action.reason) == ("ops-3", "dlq_replay", "fixed")
    assert action.target == f"dlq:{DLQ}"
    assert action.details == {"letters": ["0:2", "1:4"], "count": 2}


def test_replay_everything_pending(monkeypatch: pytest.MonkeyPatch, layout: Layout) -> None:
    asked: list[Collection[int] | None] = []

    async def fake_replay(
        bootstrap: str, topic: str, group: str, offsets: Collection[int] | None = None
    ) -> list[Letter]:
        asked.append(offsets)
        return []

    monkeypatch.setattr(dlq, "replay", fake_replay)
    audited = record_replays(monkeypatch)

    result = runner.invoke(main.app, ["dlq", "replay"])

    assert result.exit_code == 0, result.stderr
    assert asked == [None]
    assert "0 letter(s) replayed" in result.stderr
    assert audited == []  # nothing was done, so there is nothing to record
