"""Wiring of the ledger service: the one place its parts are put together."""

from __future__ import annotations

from billing_events import wiring
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from fastapi import FastAPI

from ledger.handlers import stripe_event_handler
from ledger.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    topics = wiring.topics_for(settings)
    publisher = wiring.publisher_for(settings)
    consumer = wiring.consumer_for(
        settings, publisher, {topics.stripe_events: stripe_event_handler(db)}
    )
    return build_app(
        settings,
        lifecycle=[db, publisher, consumer],
        checks={"database": db.ping, "kafka": wiring.kafka_check(settings)},
    )
