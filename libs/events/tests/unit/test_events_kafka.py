"""Topic naming, retry policy, inbound messages and ConsumerRunner.handle without a broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
import pytest
from billing_events.inbox import first_claimed
from billing_events.kafka import (
    CORRELATION_HEADER,
    ConsumerRunner,
    Handler,
    InboundMessage,
    PermanentError,
    RetryPolicy,
    batch_groups,
    dead_letter_topic,
)
from billing_events.topics import (
    ALERTS,
    LEDGER,
    STRIPE_EVENTS,
    STRIPE_EVENTS_DLQ,
    USAGE,
    Topics,
)
from billing_events.v1 import dlq_pb2, stripe_pb2
from billing_platform.context import correlation_id_var
from google.protobuf.message import Message

TOPIC = "ns.stripe.events.v1"


FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.002)

# --- topics -------------------------------------------------------------------------------


def test_dead_letter_topic_keeps_the_version_suffix_last() -> None:
    assert dead_letter_topic("stripe.events.v1") == "stripe.events.dlq.v1"
    assert dead_letter_topic("ns.billing.usage.v12") == "ns.billing.usage.dlq.v12"


@pytest.mark.parametrize(
    ("topic", "dlq"),
    [("orders", "orders.dlq"), ("a.b.version", "a.b.version.dlq"), ("a.v", "a.v.dlq")],
)
def test_dead_letter_topic_without_version_suffix_appends_dlq(topic: str, dlq: str) -> None:
    assert dead_letter_topic(topic) == dlq


def test_dead_letter_topic_matches_the_contract_name() -> None:
    assert dead_letter_topic(STRIPE_EVENTS) == STRIPE_EVENTS_DLQ
    assert dead_letter_topic(Topics("ns").stripe_events) == Topics("ns").stripe_events_dlq


def test_topics_are_prefixed_by_namespace() -> None:
    topics = Topics("ns")

    assert topics.stripe_events == "ns.stripe.events.v1"
    assert topics.usage == "ns.billing.usage.v1"
    assert topics.ledger == "ns.billing.ledger.v1"
    assert topics.alerts == "ns.billing.alerts.v1"


def test_topics_without_namespace_are_the_contract_names() -> None:
    assert Topics().stripe_events == "stripe.events.v1"


def test_all_topics_include_the_five_contract_topics() -> None:
    every = Topics().all()

    assert {STRIPE_EVENTS, STRIPE_EVENTS_DLQ, USAGE, LEDGER, ALERTS} <= every.keys()
    assert all(partitions >= 1 for partitions in every.values())


def test_all_topics_carry_the_namespace() -> None:
    assert all(name.startswith("ns.") for name in Topics("ns").all())
    assert len(Topics("ns").all()) == len(Topics().all())


# --- retry policy -----------------------------------------------------------------------


def test_retry_delay_doubles_from_initial_backoff_and_caps() -> None:
    policy = RetryPolicy()

    delays = [policy.delay(n) for n in range(1, 9)]

    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_retry_policy_defaults_to_five_attempts() -> None:
    assert RetryPolicy().max_attempts == 5


# --- inbound messages -------------------------------------------------------------------


def _message(
    value: bytes = b"payload",
    headers: tuple[tuple[str, bytes], ...] = ((CORRELATION_HEADER, b"corr-abc"),),
    key: bytes | None = b"user-1",
) -> InboundMessage:
    return InboundMessage(TOPIC, 3, 1234, key, value, headers, 1_700_000_000_000)


def test_decode_parses_a_valid_message() -> None:
    sent = stripe_pb2.StripeEventReceived(stripe_event_id="evt_1", type="checkout.completed")

    decoded = _message(sent.SerializeToString()).decode(stripe_pb2.StripeEventReceived)

    assert decoded == sent


def test_decode_of_garbage_raises_permanent_error() -> None:
    with pytest.raises(PermanentError, match="StripeEventReceived"):
        _message(b"\x0a\xff\xff\xff\xff").decode(stripe_pb2.StripeEventReceived)


def test_header_and_correlation_id_are_read_from_headers() -> None:
    message = _message(headers=(("traceparent", b"00-abc"), (CORRELATION_HEADER, b"corr-9")))

    assert message.header("traceparent") == "00-abc"
    assert message.header("missing") is None
    assert message.correlation_id == "corr-9"


def test_message_without_correlation_header_has_none() -> None:
    assert _message(headers=()).correlation_id is None


def test_a_fetched_record_becomes_an_inbound_message() -> None:
    record = confluent_kafka.Message(
        topic=TOPIC,
        partition=3,
        offset=1234,
        key=b"user-1",
        value=b"payload",
        headers=[(CORRELATION_HEADER, b"corr-abc")],
        timestamp=(confluent_kafka.TIMESTAMP_CREATE_TIME, 1_700_000_000_000),
    )

    assert InboundMessage.from_record(record) == _message()


def test_a_fetched_record_without_headers_or_value_has_empty_ones() -> None:
    record = confluent_kafka.Message(topic=TOPIC, partition=0, offset=7, timestamp=(0, 0))

    message = InboundMessage.from_record(record)

    assert (message.key, message.value, message.headers) == (None, b"", ())


# --- ConsumerRunner.handle --------------------------------------------------------------


@dataclass
class FakePublisher:
    sent: list[tuple[str, Any, Any, str | None]] = field(default_factory=list)

    async def publish(
        self,
        topic: str,
        key: str | bytes | None,
        message: Message | bytes,
        *,
        correlation_id: str | None = None,
    ) -> None:
        self.sent.append((topic, key, message, correlation_id))

    def letters(self) -> list[tuple[str, dlq_pb2.DeadLetter]]:
        out = []
        for topic, _, message, _ in self.sent:
            raw = message if isinstance(message, bytes) else message.SerializeToString()
            out.append((topic, dlq_pb2.DeadLetter.FromString(raw)))
        return out


class CountingHandler:
    def __init__(self, fail_times: int, error: Exception | None = None) -> None:
        self.fail_times = fail_times
        self.error = error or RuntimeError("handler blew up")
        self.calls = 0
        self.correlation_ids: list[str | None] = []

    async def __call__(self, message: InboundMessage) -> None:
        self.calls += 1
        self.correlation_ids.append(correlation_id_var.get())
        if self.calls <= self.fail_times:
            raise self.error


def _runner(publisher: FakePublisher, handler: Handler) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap="unused:9092",
        group_id="test-group",
        handlers={TOPIC: handler},
        publisher=publisher,  # type: ignore[arg-type]
        retry=FAST_RETRY,
    )


async def test_handler_that_recovers_is_retried_and_not_dead_lettered() -> None:
    publisher, handler = FakePublisher(), CountingHandler(fail_times=2)

    await _runner(publisher, handler).handle(_message())

    assert handler.calls == 3
    assert publisher.sent == []


async def test_handler_that_succeeds_is_called_once() -> None:
    publisher, handler = FakePublisher(), CountingHandler(fail_times=0)

    await _runner(publisher, handler).handle(_message())

    assert handler.calls == 1
    assert publisher.sent == []


async def test_always_failing_handler_is_dead_lettered_after_max_attempts() -> None:
    publisher = FakePublisher()
    handler = CountingHandler(fail_times=99, error=ValueError("amount must be positive"))
    message = _message(headers=((CORRELATION_HEADER, b"corr-dlq"), ("x-extra", b"\x00\x01")))

    await _runner(publisher, handler).handle(message)

    assert handler.calls == 5
    [(topic, letter)] = publisher.letters()
    assert topic == "ns.stripe.events.dlq.v1"
    assert publisher.sent[0][1] == b"user-1"
    assert letter.original_topic == TOPIC
    assert letter.original_partition == 3
    assert letter.original_offset == 1234
    assert letter.original_key == b"user-1"
    assert letter.original_value == b"payload"
    assert dict(letter.original_headers) == {
        CORRELATION_HEADER: b"corr-dlq",
        "x-extra": b"\x00\x01",
    }
    assert letter.consumer_group == "test-group"
    assert letter.error_type == "ValueError"
    assert letter.error_message == "amount must be positive"
    assert letter.attempts == 5
    assert letter.meta.correlation_id == "corr-dlq"
    assert letter.meta.event_id
    assert letter.first_failed_at.ToNanoseconds() <= letter.last_failed_at.ToNanoseconds()


async def test_permanent_error_is_dead_lettered_at_once() -> None:
    publisher = FakePublisher()
    handler = CountingHandler(fail_times=99, error=PermanentError("cannot decode"))

    await _runner(publisher, handler).handle(_message())

    assert handler.calls == 1
    [(topic, letter)] = publisher.letters()
    assert topic == "ns.stripe.events.dlq.v1"
    assert (letter.error_type, letter.attempts) == ("PermanentError", 1)


async def test_record_without_key_is_dead_lettered_with_empty_key() -> None:
    publisher = FakePublisher()
    handler = CountingHandler(fail_times=99, error=PermanentError("bad"))

    await _runner(publisher, handler).handle(_message(key=None))

    [(_, letter)] = publisher.letters()
    assert letter.original_key == b""


async def test_correlation_id_from_header_is_in_context_during_handler() -> None:
    handler = CountingHandler(fail_times=1)

    await _runner(FakePublisher(), handler).handle(_message())

    assert handler.correlation_ids == ["corr-abc", "corr-abc"]


async def test_message_without_correlation_header_gets_a_fresh_id() -> None:
    first, second = CountingHandler(fail_times=0), CountingHandler(fail_times=0)

    await _runner(FakePublisher(), first).handle(_message(headers=()))
    await _runner(FakePublisher(), second).handle(_message(headers=()))

    [id_a], [id_b] = first.correlation_ids, second.correlation_ids
    assert id_a
    assert id_b
    assert id_a != id_b


async def test_first_failed_at_is_when_the_first_attempt_failed() -> None:
    publisher = FakePublisher()

    async def slow_then_fails(message: InboundMessage) -> None:
        await asyncio.sleep(0.3)
        raise PermanentError("gave up")

    before_ns = time.time_ns()
    await _runner(publisher, slow_then_fails).handle(_message())

    [(_, letter)] = publisher.letters()
    assert letter.first_failed_at.ToNanoseconds() >= before_ns + 250_000_000


# --- outages of the handler's dependencies ----------------------------------------------

OUTAGE_RETRY = RetryPolicy(
    max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.002, max_outage_backoff_s=0.002
)


class DatabaseStartingUp(Exception):
    """Shaped like asyncpg's CannotConnectNowError: only the SQLSTATE tells what it is."""

    sqlstate = "57P03"


def _outage_runner(publisher: FakePublisher, handler: Handler) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap="unused:9092",
        group_id="test-group",
        handlers={TOPIC: handler},
        publisher=publisher,  # type: ignore[arg-type]
        retry=OUTAGE_RETRY,
    )


async def test_an_outage_longer_than_the_attempts_is_waited_out_not_dead_lettered() -> None:
    publisher = FakePublisher()
    handler = CountingHandler(fail_times=25, error=DatabaseStartingUp("starting up"))

    await _outage_runner(publisher, handler).handle(_message())

    assert handler.calls == 26
    assert publisher.sent == []


async def test_readiness_fails_while_a_partition_waits_for_its_database() -> None:
    release = asyncio.Event()
    states: list[bool] = []
    runner: ConsumerRunner

    async def handler(message: InboundMessage) -> None:
        if not release.is_set():
            raise DatabaseStartingUp("starting up")

    async def observe() -> None:
        await asyncio.sleep(0.02)
        states.append(await _check_fails(runner))
        release.set()

    runner = _outage_runner(FakePublisher(), handler)
    await asyncio.gather(runner.handle(_message()), observe())

    assert states == [True]
    assert not await _check_fails(runner)


async def test_a_record_failing_after_the_outage_counts_only_its_own_failures() -> None:
    publisher = FakePublisher()
    errors: list[Exception] = [DatabaseStartingUp("down")] * 7 + [ValueError("bad")] * 99

    async def handler(message: InboundMessage) -> None:
        raise errors.pop(0)

    await _outage_runner(publisher, handler).handle(_message())

    [(_, letter)] = publisher.letters()
    assert letter.attempts == 5
    assert letter.error_type == "ValueError"


async def _check_fails(runner: ConsumerRunner) -> bool:
    try:
        await runner.check()
    except Exception:
        return True
    return False


# --- a partition's records handled together -----------------------------------------------


def _records(*values: bytes) -> list[InboundMessage]:
    return [
        InboundMessage(TOPIC, 3, offset, b"user-1", value, (), 0)
        for offset, value in enumerate(values)
    ]


class BatchHandler:
    def __init__(self, errors: list[Exception] | None = None) -> None:
        self.errors = errors or []
        self.batches: list[list[bytes]] = []

    async def __call__(self, messages: Sequence[InboundMessage]) -> None:
        self.batches.append([m.value for m in messages])
        if self.errors:
            raise self.errors.pop(0)


def _batch_runner(one: Handler, together: BatchHandler) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap="unused:9092",
        group_id="test-group",
        handlers={TOPIC: one},
        batch_handlers={TOPIC: together},
        publisher=FakePublisher(),  # type: ignore[arg-type]
        retry=OUTAGE_RETRY,
    )


async def test_a_partitions_records_go_to_the_batch_handler_together() -> None:
    one, together = CountingHandler(fail_times=0), BatchHandler()

    await _batch_runner(one, together)._handle_partition(_records(b"a", b"b", b"c"))

    assert together.batches == [[b"a", b"b", b"c"]]
    assert one.calls == 0


async def test_a_failed_batch_is_handled_again_record_by_record() -> None:
    one, together = CountingHandler(fail_times=0), BatchHandler([ValueError("poison inside")])

    await _batch_runner(one, together)._handle_partition(_records(b"a", b"b", b"c"))

    assert len(together.batches) == 1
    assert one.calls == 3


async def test_an_outage_during_a_batch_is_waited_out_not_split() -> None:
    one, together = CountingHandler(fail_times=0), BatchHandler([DatabaseStartingUp("down")] * 3)

    await _batch_runner(one, together)._handle_partition(_records(b"a", b"b"))

    assert len(together.batches) == 4
    assert one.calls == 0


async def test_a_single_record_takes_the_record_path() -> None:
    one, together = CountingHandler(fail_times=0), BatchHandler()

    await _batch_runner(one, together)._handle_partition(_records(b"a"))

    assert (one.calls, together.batches) == (1, [])


async def test_a_partition_reports_the_position_its_records_reached() -> None:
    runner = _batch_runner(CountingHandler(fail_times=0), BatchHandler())

    position = await runner._handle_partition(_records(b"a", b"b", b"c"))

    # Without an offset store nothing saves it in a unit of work: Kafka gets it.
    assert position == ((TOPIC, 3), 3, False)


# --- a topic's fetched partitions handled together ---------------------------------------


def _partition(partition: int, *values: bytes) -> list[InboundMessage]:
    return [
        InboundMessage(TOPIC, partition, offset, b"user-1", value, (), 0)
        for offset, value in enumerate(values, start=10)
    ]


async def test_a_topics_fetched_partitions_go_to_the_batch_handler_in_one_call() -> None:
    one, together = CountingHandler(fail_times=0), BatchHandler()
    fetched = [_partition(0, b"a", b"b"), _partition(4, b"c")]

    positions = await _batch_runner(one, together)._handle_partitions(fetched)

    assert together.batches == [[b"a", b"b", b"c"]]
    assert one.calls == 0
    assert positions == [((TOPIC, 0), 12, False), ((TOPIC, 4), 11, False)]


def test_partitions_are_grouped_by_at_least_so_many_records_the_rest_joining_the_last() -> None:
    sizes = [60, 50, 10, 80, 30, 5]
    partitions = [_partition(p, *[b"x"] * n) for p, n in enumerate(sizes)]

    groups = batch_groups(partitions, 100)

    assert [[ms[0].partition for ms in g] for g in groups] == [[0, 1], [2, 3, 4, 5]]
    assert batch_groups(partitions[:3], 1000) == [partitions[:3]]
    assert batch_groups([], 100) == []


async def test_a_failed_topic_batch_is_handled_again_partition_by_partition() -> None:
    one = CountingHandler(fail_times=0)
    together = BatchHandler([ValueError("poison inside"), ValueError("poison here too")])
    fetched = [_partition(0, b"a", b"b"), _partition(1, b"c", b"d"), _partition(2, b"e")]

    positions = await _batch_runner(one, together)._handle_partitions(fetched)

    # The topic's batch, then each partition of several records as a batch of its own (one
    # of them failing again, so record by record); a lone record takes the record path.
    assert together.batches[0] == [b"a", b"b", b"c", b"d", b"e"]
    assert sorted(map(tuple, together.batches[1:])) == [(b"a", b"b"), (b"c", b"d")]
    assert one.calls == 2 + 1
    assert [p[:2] for p in positions] == [((TOPIC, 0), 12), ((TOPIC, 1), 12), ((TOPIC, 2), 11)]


async def test_an_outage_during_a_topic_batch_holds_each_of_its_partitions() -> None:
    release = asyncio.Event()
    batches: list[int] = []

    async def together(messages: Sequence[InboundMessage]) -> None:
        batches.append(len(messages))
        if not release.is_set():
            raise DatabaseStartingUp("down")

    runner = _batch_runner(CountingHandler(fail_times=0), together)  # type: ignore[arg-type]
    held: list[str] = []

    async def observe() -> None:
        await asyncio.sleep(0.02)
        with pytest.raises(Exception, match="waiting for a dependency") as failed:
            await runner.check()
        held.append(str(failed.value))
        release.set()

    fetched = [_partition(0, b"a"), _partition(5, b"b")]
    await asyncio.gather(runner._handle_partitions(fetched), observe())

    assert held == [f"waiting for a dependency on {TOPIC}[0], {TOPIC}[5]"]
    assert len(batches) > 1  # waited out,
    assert set(batches) == {2}  # never split
    await runner.check()  # both released once it went through


def test_first_claimed_keeps_newly_claimed_items_once_in_order() -> None:
    items = ["a1", "b1", "a2", "c1", "b2"]

    assert first_claimed(items, lambda s: s[0], {"a", "b"}) == ["a1", "b1"]
    assert first_claimed(items, lambda s: s[0], set()) == []


# --- records a consumer does not want --------------------------------------------------


def _fetched(partition: int, offset: int, value: bytes) -> confluent_kafka.Message:
    return confluent_kafka.Message(
        topic=TOPIC, partition=partition, offset=offset, value=value, timestamp=(0, 0)
    )


def test_records_a_consumer_does_not_want_are_passed_over_but_still_move_the_position() -> None:
    runner = ConsumerRunner(
        bootstrap="unused:9092",
        group_id="test-group",
        handlers={TOPIC: CountingHandler(fail_times=0)},
        publisher=FakePublisher(),  # type: ignore[arg-type]
        wanted={TOPIC: lambda m: not m.value.startswith(b"usage")},
    )
    fetched = [
        _fetched(0, 10, b"purchase-1"),
        _fetched(0, 11, b"usage-1"),
        _fetched(1, 4, b"usage-2"),
        _fetched(0, 12, b"usage-3"),
    ]

    by_partition, reached = runner._sorted(fetched)

    assert {tp: [m.value for m in ms] for tp, ms in by_partition.items()} == {
        (TOPIC, 0): [b"purchase-1"]
    }
    assert reached == {(TOPIC, 0): 13, (TOPIC, 1): 5}


def test_a_copy_of_positions_that_did_not_reach_kafka_goes_again_unless_a_newer_waits() -> None:
    runner = _runner(FakePublisher(), CountingHandler(fail_times=0))
    failed = confluent_kafka.KafkaError(confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS)
    runner._to_commit = {(TOPIC, 1): 9}
    runner._owned = {(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)}  # not 3: it went to another member

    runner._on_commit(failed, [confluent_kafka.TopicPartition(TOPIC, p, 5) for p in (0, 1, 3)])
    runner._on_commit(None, [confluent_kafka.TopicPartition(TOPIC, 2, 7)])

    assert runner._to_commit == {(TOPIC, 0): 5, (TOPIC, 1): 9}


async def test_the_rebuild_backoff_starts_afresh_after_a_client_that_worked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = _runner(FakePublisher(), CountingHandler(fail_times=0))
    # Each entry is one client's life: whether it fetched before its loop failed.
    lives = iter([False, False, True, False])
    pauses: list[float] = []

    async def one_client() -> None:
        worked = next(lives, None)
        if worked is None:
            runner._stopping.set()
            return
        if worked:
            runner._failing = None  # what a successful fetch does
        raise RuntimeError("client loop failed")

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(runner, "_consume_until_stopped", one_client)
    monkeypatch.setattr(runner, "_sleep_unless_stopping", sleep)
    await runner._run_forever()

    assert pauses == [0.5, 1.0, 0.5, 1.0]
