"""Wiring of the checkout service: the one place its parts are put together.

Parts: the DB pool, the billing switches (seeded from the settings once the pool is up,
then read through a short cache), the Kafka publisher (used by the consumer for dead
letters and by the outbox relay for the audit records of switch changes) and the purchase
status consumer (Stripe events and ledger transactions -> purchase status).

Readiness checks the database only: selling credits needs Postgres and Stripe, not the
broker, so checkout must keep selling during a broker outage. The consumer reconnects by
itself when the broker returns, and the publisher is started in the background (retrying)
so that even a start during an outage does not keep checkout down; status updates simply
wait in Kafka meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from billing_events import wiring
from billing_events.kafka import KafkaPublisher
from billing_platform import tasks
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.ratelimit import DbLimiter, Limit, RateLimitSweeper
from billing_platform.stripe_client import stripe_client
from fastapi import FastAPI

from checkout import api
from checkout.handlers import batch_handlers_for, handlers_for, wanted_for
from checkout.idempotency import IdempotencyKeys
from checkout.service import PurchaseService, StoredSwitches, SwitchService
from checkout.settings import Settings
from checkout.stripe_checkout import StripeCheckout
from checkout.switches import Switches, defaults_from, forced_from

log = logging.getLogger(__name__)


class BackgroundStart:
    """Starts a publisher without blocking startup, retrying while the broker is away."""

    def __init__(self, publisher: KafkaPublisher, max_pause_s: float = 30.0) -> None:
        self._publisher = publisher
        self._max_pause_s = max_pause_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._start_until_done(), name="publisher-start")

    async def _start_until_done(self) -> None:
        pause = 0.5
        while True:
            try:
                await self._publisher.start()
                return
            except Exception:
                log.warning("kafka publisher not started; retrying", exc_info=True)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._max_pause_s)

    async def stop(self) -> None:
        await tasks.cancel(self._task)
        self._task = None
        await self._publisher.stop()


class SeedSwitches:
    """Writes the settings' switch values where no row exists yet, before serving."""

    def __init__(self, switches: SwitchService) -> None:
        self._switches = switches

    async def start(self) -> None:
        await self._switches.seed()

    async def stop(self) -> None:
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    publisher = wiring.publisher_for(settings)
    topics = wiring.topics_for(settings)
    consumer = wiring.consumer_for(
        settings,
        publisher,
        handlers_for(db, topics),
        batch_handlers_for(db, topics),
        db=db,
        wanted=wanted_for(topics),
    )
    sessions = StripeCheckout(stripe_client(settings.infra, timeout_s=settings.stripe_timeout_s))
    defaults = defaults_from(settings)
    switches = Switches(StoredSwitches(db), defaults, settings.switch_cache_s)
    switch_admin = SwitchService(
        db, switches, defaults, wiring.audit_trail_for(settings), forced_from(settings)
    )
    # Admin actions leave through the outbox; like status updates they wait out an outage.
    relay = wiring.relay_for(settings, db, publisher)
    routes = api.router(
        PurchaseService(db, sessions, settings.public_base_url),
        IdempotencyKeys(db),
        limiter=DbLimiter(db, Limit("purchases-per-ip", settings.purchase_rate_limit_per_minute)),
        switches=switches,
    )
    return build_app(
        settings,
        routers=[routes, api.features_router(switches, switch_admin)],
        lifecycle=[
            db,
            SeedSwitches(switch_admin),
            BackgroundStart(publisher),
            relay,
            consumer,
            RateLimitSweeper(db),
        ],
        checks={"database": db.ping, "consumer": consumer.check},
        browser_facing=True,
    )
