"""Wiring of the checkout service: the one place its parts are put together.

Checkout talks to Stripe and its own tables only; it has no Kafka dependency, so a broker
outage never blocks selling credits.
"""

from __future__ import annotations

from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from fastapi import FastAPI

from checkout.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    return build_app(settings, lifecycle=[db], checks={"database": db.ping})
