"""Listing and replaying dead letters (``billing_events.v1.DeadLetter`` records).

What was already replayed is not stored anywhere but in Kafka: a replay consumer group
(``<namespace>.dlq-replay``) commits, per DLQ partition, the offset up to which letters have
been re-published. Listing never commits; only a replay moves that group forward.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from billing_events.audit import DLQ_REPLAY, AdminAction, AuditTrail
from billing_events.audit import target as audit_target
from billing_events.kafka import KafkaPublisher, topic_partitions
from billing_events.topics import Topics
from billing_events.v1 import audit_pb2, dlq_pb2
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

REPLAYED_FROM_HEADER = "dlq-replayed-from"
REPLAY_GROUP = "dlq-replay"
READ_TIMEOUT_S = 60.0


class DlqError(Exception):
    """The DLQ cannot be read or replayed (missing topic, broker gone mid-read, ...)."""


def replay_group_for(namespace: str) -> str:
    return Topics(namespace).name(REPLAY_GROUP)


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int
    original_topic: str
    key: str
    consumer_group: str
    error_type: str
    error_message: str
    attempts: int
    first_failed_at: str
    last_failed_at: str
    replayed: bool = False
    message: dlq_pb2.DeadLetter = field(
        default_factory=dlq_pb2.DeadLetter, repr=False, compare=False
    )

    @property
    def replayable(self) -> bool:
        """An undecodable DLQ record names no original topic: nothing to re-publish."""
        return bool(self.original_topic)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "originalTopic": self.original_topic,
            "originalPartition": self.message.original_partition,
            "originalOffset": self.message.original_offset,
            "key": self.key,
            "consumerGroup": self.consumer_group,
            "errorType": self.error_type,
            "errorMessage": self.error_message,
            "attempts": self.attempts,
            "firstFailedAt": self.first_failed_at,
            "lastFailedAt": self.last_failed_at,
            "replayed": self.replayed,
        }


def _iso(ts: Timestamp) -> str:
    # An unset timestamp reads as the epoch, never a real failure time.
    return ts.ToDatetime(tzinfo=UTC).isoformat() if ts != Timestamp() else ""


def letter_from_bytes(partition: int, offset: int, value: bytes) -> Letter:
    """Decode one DLQ record; a corrupt one becomes a visible, non-replayable letter."""
    message = dlq_pb2.DeadLetter()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        return Letter(partition, offset, "", "", "", "UndecodableDeadLetter", str(exc), 0, "", "")
    return Letter(
        partition=partition,
        offset=offset,
        original_topic=message.original_topic,
        key=message.original_key.decode(errors="replace"),
        consumer_group=message.consumer_group,
        error_type=message.error_type,
        error_message=message.error_message,
        attempts=message.attempts,
        first_failed_at=_iso(message.first_failed_at),
        last_failed_at=_iso(message.last_failed_at),
        message=message,
    )


def mark_replayed(letters: Iterable[Letter], committed: Mapping[int, int]) -> list[Letter]:
    """A letter was replayed iff it sits below its partition's committed replay offset."""
    return [replace(x, replayed=x.offset < committed.get(x.partition, 0)) for x in letters]


def select(letters: Iterable[Letter], offsets: Collection[int] | None = None) -> list[Letter]:
    """Pending, replayable letters; only those at ``offsets`` (in any partition) if given."""
    return [
        x
        for x in letters
        if not x.replayed and x.replayable and (offsets is None or x.offset in offsets)
    ]


def commit_positions(
    letters: Iterable[Letter],
    replayed: Iterable[Letter],
    committed: Mapping[int, int],
    ends: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Where the replay group's offset moves per partition after replaying ``replayed``.

    With ``ends`` (everything pending was replayed) each partition moves to its end. Without,
    it moves only over the contiguous run of letters, from the committed offset on, that are
    now replayed (or cannot be). Partitions that do not move are left out; nothing moves back.
    """
    if ends is not None:
        targets = dict(ends)
    else:
        done = {(x.partition, x.offset) for x in replayed}
        targets = _contiguous(letters, done, committed)
    return {p: o for p, o in targets.items() if o > committed.get(p, 0)}


def _contiguous(
    letters: Iterable[Letter], done: set[tuple[int, int]], committed: Mapping[int, int]
) -> dict[int, int]:
    positions: dict[int, int] = {}
    blocked: set[int] = set()
    for x in sorted(letters, key=lambda x: (x.partition, x.offset)):
        if x.partition in blocked or x.offset < committed.get(x.partition, 0):
            continue
        if (x.partition, x.offset) in done or not x.replayable:
            positions[x.partition] = x.offset + 1
        else:
            blocked.add(x.partition)
    return positions


def replay_headers(letter: Letter, dlq_topic: str) -> list[tuple[str, bytes]]:
    """The original headers, plus where this copy came from (replacing an older such mark)."""
    kept = [(k, v) for k, v in letter.message.original_headers.items() if k != REPLAYED_FROM_HEADER]
    mark = f"{dlq_topic}:{letter.partition}:{letter.offset}".encode()
    return [*kept, (REPLAYED_FROM_HEADER, mark)]


@dataclass
class _Snapshot:
    letters: list[Letter]
    ends: dict[int, int]
    committed: dict[int, int]


async def read_letters(bootstrap: str, dlq_topic: str, replay_group: str) -> list[Letter]:
    """Every letter up to the end offsets seen at the start, marked replayed or not."""
    return (await _snapshot(bootstrap, dlq_topic, replay_group)).letters


async def replay(
    bootstrap: str,
    dlq_topic: str,
    replay_group: str,
    offsets: Collection[int] | None = None,
) -> list[Letter]:
    """Re-publish pending letters to their original topics; returns those re-published.

    ``offsets=None`` replays everything pending and moves the replay group to the end seen at
    the start. With explicit ``offsets`` (DLQ offsets, matched in every partition) the group
    only moves over the contiguous run of replayed letters starting at its committed offset:
    a letter replayed beyond a gap of still-pending ones is not remembered as replayed, so it
    is listed as pending and re-published again by a later replay of everything.
    Consumers are idempotent by natural key, which makes such a second copy harmless.
    """
    snap = await _snapshot(bootstrap, dlq_topic, replay_group)
    chosen = select(snap.letters, offsets)
    await _republish(bootstrap, dlq_topic, chosen)
    ends = snap.ends if offsets is None else None
    moves = commit_positions(snap.letters, chosen, snap.committed, ends)
    if moves:
        tps = [TopicPartition(dlq_topic, p) for p in snap.ends]
        async with _group_consumer(bootstrap, replay_group, tps) as consumer:
            await consumer.commit({TopicPartition(dlq_topic, p): o for p, o in moves.items()})
    return chosen


AUDIT_PRODUCER = "billing-cli"


@dataclass(frozen=True)
class ReplayedBy:
    actor: str
    reason: str
    correlation_id: str


def replay_action(dlq_topic: str, letters: Sequence[Letter], by: ReplayedBy) -> AdminAction:
    return AdminAction(
        actor=by.actor,
        action=DLQ_REPLAY,
        target=audit_target("dlq", dlq_topic),
        reason=by.reason,
        details={"letters": [f"{x.partition}:{x.offset}" for x in letters], "count": len(letters)},
    )


async def record_replay(
    bootstrap: str, topics: Topics, dlq_topic: str, letters: Sequence[Letter], by: ReplayedBy
) -> audit_pb2.AdminActionRecorded:
    """Publish the replay's audit record (the CLI has no outbox: straight to Kafka, after)."""
    publisher = KafkaPublisher(bootstrap, client_id="billing-cli-audit")
    await publisher.start()
    try:
        trail = AuditTrail(topics, AUDIT_PRODUCER)
        action = replay_action(dlq_topic, letters, by)
        return await trail.publish(publisher, action, by.correlation_id)
    finally:
        await publisher.stop()


async def _republish(bootstrap: str, dlq_topic: str, letters: Sequence[Letter]) -> None:
    if not letters:
        return
    publisher = KafkaPublisher(bootstrap, client_id="billing-cli-dlq-replay")
    await publisher.start()
    try:
        for x in letters:
            key = x.message.original_key or None
            value = x.message.original_value
            headers = replay_headers(x, dlq_topic)
            await publisher.publish(x.original_topic, key, value, headers=headers)
    finally:
        await publisher.stop()


async def _snapshot(bootstrap: str, dlq_topic: str, replay_group: str) -> _Snapshot:
    letters, ends = await _read_to_end(bootstrap, dlq_topic)
    tps = [TopicPartition(dlq_topic, p) for p in ends]
    async with _group_consumer(bootstrap, replay_group, tps) as consumer:
        committed = {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}
    return _Snapshot(mark_replayed(letters, committed), ends, committed)


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    # Asked up front: a consumer would wait out its whole request timeout on a missing topic.
    partitions = await topic_partitions(bootstrap, topic)
    if not partitions:
        raise DlqError(f"topic {topic} does not exist")
    return partitions


async def _read_to_end(bootstrap: str, topic: str) -> tuple[list[Letter], dict[int, int]]:
    tps = await _partitions(bootstrap, topic)
    # No group: reading the DLQ must never move any committed offset. "earliest" as well as
    # the seek: the initial position reset would otherwise land on the end after the seek.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.assign(tps)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        letters = await _consume_until(consumer, ends)
    finally:
        await consumer.stop()
    return letters, {tp.partition: o for tp, o in ends.items()}


async def _consume_until(
    consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]
) -> list[Letter]:
    letters: list[Letter] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    # Positions, not record offsets, decide "done": transaction markers leave offset gaps.
    while await _behind(consumer, ends):
        if time.monotonic() > deadline:
            raise DlqError(f"could not read the DLQ to its end within {READ_TIMEOUT_S:.0f}s")
        batch = await consumer.getmany(timeout_ms=500)
        letters.extend(_within(batch, ends))
    return letters


async def _behind(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


def _within(
    batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
    ends: Mapping[TopicPartition, int],
) -> Iterable[Letter]:
    for tp, records in batch.items():
        for r in records:
            if r.offset < ends[tp]:
                yield letter_from_bytes(r.partition, r.offset, r.value or b"")


@asynccontextmanager
async def _group_consumer(
    bootstrap: str, group: str, tps: Sequence[TopicPartition]
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer in the replay group, used for its committed offsets only (never fetched)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    consumer.assign(list(tps))
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
