"""Wiring of the reconciler service: the one place its parts are put together.

Parts: the DB pool; the Kafka publisher, the outbox relay (alerts leave through the
outbox) and the consumers of the read model and, with a webhook configured, of the alerts;
the Stripe API (official SDK); the run schedule and the gauge timer. Readiness checks the
database and the broker.
"""

from __future__ import annotations

from billing_events import wiring
from billing_platform.app import Lifecycle
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.http_client import traced_client
from billing_platform.stripe_client import stripe_client
from fastapi import FastAPI

from reconciler import api, checks, handlers, service
from reconciler.alerts import AlertForwarder, AlertTarget
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


def alert_forwarder(settings: Settings) -> AlertForwarder | None:
    """The alert webhook, when one is configured."""
    if not settings.alerts_webhook_url:
        return None
    target = AlertTarget(
        settings.alerts_webhook_url,
        settings.alerts_webhook_format,
        settings.alerts_pagerduty_routing_key.get_secret_value(),
    )
    return AlertForwarder(traced_client(timeout=settings.alerts_timeout_s), target)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    ctx = run_context(settings)
    publisher = wiring.publisher_for(settings)
    relay = wiring.relay_for(settings, db, publisher)
    forwarder = alert_forwarder(settings)
    to_consume = handlers.handlers(db, ctx.topics)
    if forwarder is not None:
        to_consume[ctx.topics.alerts] = handlers.alerts_handler(db, forwarder)
    consumer = wiring.consumer_for(
        settings, publisher, to_consume, handlers.batch_handlers(db, ctx.topics), db=db
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
    if forwarder is not None:
        parts.append(forwarder)
    if settings.schedule_interval_s > 0:
        parts.append(
            scheduled_runs(reconciler.run, settings.schedule_interval_s, settings.lag_grace_s)
        )
    return build_app(
        settings,
        routers=[api.router(api.Deps(reconciler))],
        lifecycle=parts,
        browser_facing=True,
        checks={
            "database": db.ping,
            "kafka": wiring.kafka_check(settings),
            "consumer": consumer.check,
        },
    )
