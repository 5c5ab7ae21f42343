"""Wiring of the webhook-ingest service: the one place its parts are put together."""

from __future__ import annotations

from billing_events import wiring
from billing_events.outbox import OutboxRelay
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from fastapi import FastAPI

from webhook_ingest import api
from webhook_ingest.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    publisher = wiring.publisher_for(settings)
    relay = OutboxRelay(db, publisher)
    deps = api.Deps(db=db, topics=wiring.topics_for(settings), relay=relay, settings=settings)
    return build_app(
        settings,
        routers=[api.router(deps)],
        lifecycle=[db, publisher, relay],
        checks={"database": db.ping, "kafka": wiring.kafka_check(settings)},
    )
