"""Kafka parts a service plugs into its app: publisher, consumers, readiness check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from billing_platform.db import Database, HasPool
from billing_platform.settings import ServiceSettings

from billing_events.audit import AuditTrail
from billing_events.kafka import (
    BatchHandler,
    ConsumerRunner,
    Handler,
    KafkaPublisher,
    Wanted,
    probe,
)
from billing_events.offsets import OffsetStore
from billing_events.outbox import OutboxRelay
from billing_events.topics import Topics


def topics_for(settings: ServiceSettings) -> Topics:
    return Topics(settings.infra.topic_namespace)


def audit_trail_for(settings: ServiceSettings) -> AuditTrail:
    return AuditTrail(topics_for(settings), settings.service_name)


def publisher_for(settings: ServiceSettings) -> KafkaPublisher:
    return KafkaPublisher(settings.infra.kafka_bootstrap, client_id=settings.service_name)


def relay_for(settings: ServiceSettings, db: Database, publisher: KafkaPublisher) -> OutboxRelay:
    return OutboxRelay(
        db,
        publisher,
        linger_s=settings.outbox_linger_ms / 1000,
        linger_rows=settings.outbox_linger_rows,
    )


def consumer_for(
    settings: ServiceSettings,
    publisher: KafkaPublisher,
    handlers: Mapping[str, Handler],
    batch_handlers: Mapping[str, BatchHandler] | None = None,
    *,
    db: HasPool | None,
    wanted: Mapping[str, Wanted] | None = None,
    part: str | None = None,
    linger_ms: int | None = None,
) -> ConsumerRunner:
    """The service's consumer; with ``db`` its positions are kept in that database.

    A service may run several, one ``part`` each (its own topics and linger), all in the
    service's consumer group: the group's positions stay where they are."""
    namespace = settings.infra.topic_namespace
    group = f"{namespace}.{settings.service_name}" if namespace else settings.service_name
    return ConsumerRunner(
        bootstrap=settings.infra.kafka_bootstrap,
        group_id=group,
        client_id=f"{group}.{part}" if part else group,
        handlers=handlers,
        publisher=publisher,
        batch_handlers=batch_handlers,
        offsets=OffsetStore(db) if db is not None else None,
        wanted=wanted,
        linger_ms=settings.consumer_linger_ms if linger_ms is None else linger_ms,
    )


def kafka_check(settings: ServiceSettings) -> Callable[[], Awaitable[None]]:
    bootstrap = settings.infra.kafka_bootstrap

    async def check() -> None:
        await probe(bootstrap)

    return check
