"""Wiring of the reconciler service: the one place its parts are put together.

Parts: the DB pool; the Kafka publisher, the outbox relay (alerts leave through the
outbox) and the consumers of the read model; the Stripe API (official SDK); the run
schedule and the gauge timer. Readiness checks the database and the broker.
"""

from __future__ import annotations

from billing_events import wiring
from billing_platform.app import Lifecycle
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.stripe_client import stripe_client
from fastapi import FastAPI

from reconciler import api, checks, handlers, service
from reconciler.findings import Schemas
from reconciler.scheduler import Gauges, scheduled_runs
from reconciler.settings import Settings
from reconciler.stripe_sessions import StripeSessions


def schemas_of(settings: Settings) -> Schemas:
    return Schemas(
        reconciler=settings.db_schema,
        ledger=settings.ledger_schema,
        metering=settings.metering_schema,
        webhook=settings.webhook_schema,
        checkout=settings.checkout_schema,
    )


def run_context(settings: Settings) -> service.RunContext:
    return service.RunContext(
        schemas=schemas_of(settings),
        topics=wiring.topics_for(settings),
        checks=checks.all_checks(settings.lag_grace_s),
        chain_settle_s=settings.chain_settle_s,
        audit=wiring.audit_trail_for(settings),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    ctx = run_context(settings)
    publisher = wiring.publisher_for(settings)
    relay = wiring.relay_for(settings, db, publisher)
    consumer = wiring.consumer_for(
        settings,
        publisher,
        handlers.handlers(db, ctx.topics),
        handlers.batch_handlers(db, ctx.topics),
        db=db,
    )
    gauges = Gauges(db, ctx.schemas)
    stripe = stripe_client(settings.infra, timeout_s=settings.stripe_timeout_s)
    sessions = StripeSessions(stripe, settings.stripe_sessions_max)
    reconciler = service.Reconciler(db, ctx, sessions, relay, gauges)
    parts: list[Lifecycle] = [
        db,
        publisher,
        relay,
        consumer,
        gauges.timer(settings.gauge_interval_s),
    ]
    if settings.schedule_interval_s > 0:
        parts.append(
            scheduled_runs(reconciler.run, settings.schedule_interval_s, settings.lag_grace_s)
        )
    return build_app(
        settings,
        routers=[api.router(api.Deps(reconciler))],
        lifecycle=parts,
        checks={
            "database": db.ping,
            "kafka": wiring.kafka_check(settings),
            "consumer": consumer.check,
        },
    )
