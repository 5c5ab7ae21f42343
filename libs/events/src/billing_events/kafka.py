"""Kafka publish/consume layer on aiokafka.

Guarantees the rest of the platform builds on:
- the producer is idempotent (``acks=all``), so a retried send never duplicates a record;
- a consumer commits an offset only after the handler for that record returned, i.e. after
  its effect is durable; a crash before the commit means the record is seen again, so every
  handler must be idempotent by a natural key;
- a failing record is retried with exponential backoff, and after the last attempt it is
  published to its dead-letter topic with the error, and the partition moves on;
- an outage of the infrastructure a handler depends on (the database or the broker unreachable,
  restarting, out of connections) is not the record's fault: the partition is held and the
  record retried with capped backoff for as long as the outage lasts, without counting towards
  its dead letter, and the consumer reports itself not ready meanwhile;
- trace context and the correlation id travel in record headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from billing_platform import context, metrics, tracing
from billing_platform.outages import DependencyUnavailable, is_outage
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

CORRELATION_HEADER = "correlation-id"
M = TypeVar("M", bound=Message)


class PermanentError(Exception):
    """A failure that retrying cannot fix (e.g. an undecodable record): dead-letter at once."""


class _Interrupted(Exception):
    """The consumer is stopping while a record waits for its infrastructure: commit nothing."""


def dead_letter_topic(topic: str) -> str:
    """``stripe.events.v1`` -> ``stripe.events.dlq.v1``; the contract's naming, generalised."""
    base, dot, version = topic.rpartition(".")
    if dot and version.startswith("v") and version[1:].isdigit():
        return f"{base}.dlq.{version}"
    return f"{topic}.dlq"


def timestamp_now() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @classmethod
    def from_record(cls, record: ConsumerRecord[bytes, bytes]) -> InboundMessage:
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value or b"",
            tuple(record.headers or ()),
            record.timestamp,
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def correlation_id(self) -> str | None:
        return self.header(CORRELATION_HEADER)

    def decode(self, message_type: type[M]) -> M:
        message = message_type()
        try:
            message.ParseFromString(self.value)
        except DecodeError as exc:
            raise PermanentError(f"cannot decode {message_type.__name__}: {exc}") from exc
        return message


Handler = Callable[[InboundMessage], Awaitable[None]]
# Applies a partition's fetched records together (one transaction); it must be all or
# nothing, since a failed batch is handled again record by record.
BatchHandler = Callable[[Sequence[InboundMessage]], Awaitable[None]]


async def probe(bootstrap: str) -> None:
    """Raise unless a broker answers a metadata request now (used by ``/readyz``)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
    finally:
        await client.close()


async def ensure_topics(bootstrap: str, topics: Mapping[str, int]) -> list[str]:
    """Create the topics that do not exist yet; returns those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, p, 1) for t, p in topics.items() if t not in existing]
        if missing:
            await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions as the broker describes them; [] when the topic is missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:
        return []
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


class KafkaPublisher:
    """Idempotent producer that stamps trace context and correlation id on every record."""

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
        )
        self._tracer = tracing.tracer("billing.kafka")

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(
        self,
        topic: str,
        key: str | bytes | None,
        message: Message | bytes,
        *,
        correlation_id: str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish one record and wait until the broker has it."""
        future = await self.enqueue(
            topic, key, message, correlation_id=correlation_id, headers=headers
        )
        await future

    async def enqueue(
        self,
        topic: str,
        key: str | bytes | None,
        message: Message | bytes,
        *,
        correlation_id: str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a record for a batch; await the returned future for the broker's ack.

        ``headers`` given explicitly (an outbox row's, captured when it was written) are
        sent as they are instead of the current trace and correlation context.
        """
        with self._tracer.start_as_current_span(f"{topic} publish", kind=SpanKind.PRODUCER):
            if headers is None:
                corr = correlation_id or context.current_correlation_id()
                headers = tracing.inject_headers({CORRELATION_HEADER: corr})
            value = message if isinstance(message, bytes) else message.SerializeToString()
            raw_key = key.encode() if isinstance(key, str) else key
            future: asyncio.Future[Any] = await self._producer.send(
                topic, value, key=raw_key, headers=headers
            )
        metrics.KAFKA_PUBLISHED.labels(topic).inc()
        return future


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    max_outage_backoff_s: float = 2.0

    def delay(self, failed_attempts: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2 ** (failed_attempts - 1)))

    def outage_delay(self, attempts: int) -> float:
        """Short and capped: the partition resumes within a couple of seconds of recovery."""
        exponent = min(attempts - 1, 16)
        return float(min(self.max_outage_backoff_s, self.initial_backoff_s * 2**exponent))


@dataclass
class _Failure:
    attempts: int = 0
    first_at: Timestamp | None = None
    error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        if self.first_at is None:
            self.first_at = timestamp_now()
        self.attempts += 1
        self.error = error


class ConsumerRunner:
    """Consumes topics with one handler each; commits only what was handled or dead-lettered.

    Partitions of a fetched batch are handled concurrently, records within a partition in
    order. A handler failing because its database or broker is down holds its partition and
    retries until the dependency is back (``check`` fails meanwhile, for readiness); only
    failures of the record itself count towards its dead letter. If the broker goes away the
    loop reconnects; if the dead-letter publish itself
    fails, nothing of that batch is committed and the records come back.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        handlers: Mapping[str, Handler],
        publisher: KafkaPublisher,
        retry: RetryPolicy | None = None,
        client_id: str | None = None,
        batch_handlers: Mapping[str, BatchHandler] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self.group_id = group_id
        self._handlers = dict(handlers)
        self._batch_handlers = dict(batch_handlers or {})
        self._publisher = publisher
        self._retry = retry or RetryPolicy()
        self._client_id = client_id or group_id
        self._tracer = tracing.tracer("billing.kafka")
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stalled: set[tuple[str, int]] = set()
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run_forever(), name=f"consumer:{self.group_id}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def _run_forever(self) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            try:
                await self._consume_until_stopped()
                return
            except asyncio.CancelledError:
                raise
            except _Interrupted:
                return  # stopping mid-outage: the uncommitted records come back on restart
            except Exception:
                log.exception("consumer loop failed; reconnecting", extra={"group": self.group_id})
                await self._sleep_unless_stopping(pause)
                pause = min(pause * 2, 10.0)

    async def _consume_until_stopped(self) -> None:
        consumer = AIOKafkaConsumer(
            *self._handlers,
            bootstrap_servers=self._bootstrap,
            group_id=self.group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        self.consumer = consumer
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=200)
                if batch:
                    await self._handle_batch(consumer, batch)
        finally:
            self.consumer = None
            await consumer.stop()

    async def _handle_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        await asyncio.gather(*(self._handle_partition(records) for records in batch.values()))
        await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})

    async def _handle_partition(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        messages = [InboundMessage.from_record(record) for record in records]
        together = self._batch_handlers.get(messages[0].topic)
        if (
            together is None
            or len(messages) == 1
            or not await self.handle_batch(together, messages)
        ):
            for message in messages:
                await self.handle(message)

    async def handle_batch(
        self, batch_handler: BatchHandler, messages: Sequence[InboundMessage]
    ) -> bool:
        """Apply the records in one go; False when that failed and each must go on its own.

        Only an outage is waited out here: any other failure may be one poison record, which
        the record-by-record path isolates (its attempts, then its dead letter).
        """
        first = messages[0]
        context.correlation_id_var.set(first.correlation_id or context.new_id())
        parent = tracing.extract_context(first.headers)
        name = f"{first.topic} process batch"
        with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER):
            outages = 0
            while True:
                try:
                    await batch_handler(messages)
                    break
                except Exception as exc:
                    if not is_outage(exc):
                        log.warning(
                            "batch failed; handling its records one by one",
                            extra={"topic": first.topic, "records": len(messages)},
                            exc_info=exc,
                        )
                        return False
                    outages += 1
                    await self._wait_out_outage(first, exc, outages)
        self._stalled.discard((first.topic, first.partition))
        metrics.KAFKA_CONSUMED.labels(first.topic, self.group_id, "ok").inc(len(messages))
        return True

    async def handle(self, message: InboundMessage) -> None:
        """Run the handler with retries; dead-letter after the last attempt."""
        context.correlation_id_var.set(message.correlation_id or context.new_id())
        parent = tracing.extract_context(message.headers)
        name = f"{message.topic} process"
        with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER):
            failure = await self._attempt(message)
            self._stalled.discard((message.topic, message.partition))
            if failure is None:
                metrics.KAFKA_CONSUMED.labels(message.topic, self.group_id, "ok").inc()
                return
            await self._dead_letter(message, failure)

    async def _attempt(self, message: InboundMessage) -> _Failure | None:
        handler = self._handlers[message.topic]
        failure = _Failure()
        outage_attempts = 0
        while True:
            try:
                await handler(message)
                return None
            except Exception as exc:
                if not isinstance(exc, PermanentError) and is_outage(exc):
                    outage_attempts += 1
                    await self._wait_out_outage(message, exc, outage_attempts)
                    continue
                failure.record(exc)
                if isinstance(exc, PermanentError) or failure.attempts >= self._retry.max_attempts:
                    return failure
                metrics.KAFKA_HANDLER_RETRIES.labels(message.topic, self.group_id).inc()
                log.warning(
                    "handler failed; will retry",
                    extra={
                        "topic": message.topic,
                        "offset": message.offset,
                        "attempt": failure.attempts,
                        "error": type(exc).__name__,
                    },
                )
                await asyncio.sleep(self._retry.delay(failure.attempts))

    async def _wait_out_outage(
        self, message: InboundMessage, error: Exception, attempts: int
    ) -> None:
        """Hold the partition until the dependency is back; the record is not at fault."""
        self._stalled.add((message.topic, message.partition))
        metrics.KAFKA_OUTAGE_RETRIES.labels(message.topic, self.group_id).inc()
        if attempts == 1 or attempts % 20 == 0:
            log.warning(
                "dependency unavailable; holding the partition and retrying",
                extra={
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "attempt": attempts,
                    "error": type(error).__name__,
                },
            )
        await self._sleep_unless_stopping(self._retry.outage_delay(attempts))
        if self._stopping.is_set():
            raise _Interrupted(f"{message.topic}[{message.partition}]@{message.offset}")

    async def check(self) -> None:
        """Readiness: fails while any partition waits for its database or broker."""
        if self._stalled:
            held = ", ".join(f"{t}[{p}]" for t, p in sorted(self._stalled))
            raise DependencyUnavailable(f"waiting for a dependency on {held}")

    async def _dead_letter(self, message: InboundMessage, failure: _Failure) -> None:
        from billing_events.v1 import common_pb2, dlq_pb2

        error = failure.error
        letter = dlq_pb2.DeadLetter(
            meta=common_pb2.EventMeta(
                event_id=context.new_id(),
                occurred_at=timestamp_now(),
                correlation_id=context.current_correlation_id(),
                producer=self._client_id,
            ),
            original_topic=message.topic,
            original_partition=message.partition,
            original_offset=message.offset,
            original_key=message.key or b"",
            original_value=message.value,
            original_headers=dict(message.headers),
            consumer_group=self.group_id,
            error_type=type(error).__name__,
            error_message=str(error)[:2000],
            attempts=failure.attempts,
            first_failed_at=failure.first_at or timestamp_now(),
            last_failed_at=timestamp_now(),
        )
        dlq = dead_letter_topic(message.topic)
        await self._publisher.publish(dlq, message.key, letter)
        metrics.KAFKA_DEAD_LETTERED.labels(message.topic, self.group_id).inc()
        metrics.KAFKA_CONSUMED.labels(message.topic, self.group_id, "dead_lettered").inc()
        log.error(
            "record dead-lettered",
            extra={
                "topic": message.topic,
                "offset": message.offset,
                "dlq": dlq,
                "attempts": failure.attempts,
                "error": type(error).__name__,
            },
        )

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
