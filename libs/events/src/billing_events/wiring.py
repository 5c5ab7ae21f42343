"""Kafka parts a service plugs into its app: publisher, consumers, readiness check."""

from __future__ import annotations

from collections.abc import Mapping

from billing_platform.settings import ServiceSettings

from billing_events.kafka import ConsumerRunner, Handler, KafkaPublisher, probe
from billing_events.topics import Topics


def topics_for(settings: ServiceSettings) -> Topics:
    return Topics(settings.infra.topic_namespace)


def publisher_for(settings: ServiceSettings) -> KafkaPublisher:
    return KafkaPublisher(settings.infra.kafka_bootstrap, client_id=settings.service_name)


def consumer_for(
    settings: ServiceSettings, publisher: KafkaPublisher, handlers: Mapping[str, Handler]
) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap=settings.infra.kafka_bootstrap,
        group_id=settings.service_name,
        handlers=handlers,
        publisher=publisher,
    )


def kafka_check(settings: ServiceSettings) -> "KafkaCheck":
    return KafkaCheck(settings.infra.kafka_bootstrap)


class KafkaCheck:
    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap

    async def __call__(self) -> None:
        await probe(self._bootstrap)
