"""Wiring of the reconciler service: the one place its parts are put together."""

from __future__ import annotations

from billing_events import wiring
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from fastapi import FastAPI

from reconciler.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    publisher = wiring.publisher_for(settings)
    return build_app(
        settings,
        lifecycle=[db, publisher],
        checks={"database": db.ping, "kafka": wiring.kafka_check(settings)},
    )
