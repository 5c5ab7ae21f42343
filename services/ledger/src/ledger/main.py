"""Wiring of the ledger service: the one place its parts are put together."""

from __future__ import annotations

from billing_events import wiring
from billing_events.dlq_depth import DlqDepthMonitor, replay_group
from billing_events.topics import AUDIT_DLQ, USAGE_DLQ
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.stripe_client import stripe_client
from fastapi import FastAPI

from ledger import api, audit_api, holds_api, service
from ledger.handlers import (
    audit_handler,
    stripe_event_handler,
    stripe_events_batch_handler,
    usage_batch_handler,
    usage_handler,
)
from ledger.holds import HoldSweeper
from ledger.settings import Settings


def ledger_context(settings: Settings) -> service.LedgerContext:
    return service.LedgerContext(
        topics=wiring.topics_for(settings),
        checkout_schema=settings.checkout_schema,
        grace_s=settings.unknown_purchase_grace_s,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    ctx = ledger_context(settings)
    publisher = wiring.publisher_for(settings)
    payments = wiring.consumer_for(
        settings,
        publisher,
        {ctx.topics.stripe_events: stripe_event_handler(db, ctx)},
        {ctx.topics.stripe_events: stripe_events_batch_handler(db, ctx)},
        db=db,
    )
    # Usage records mostly confirm a capture metering already made, and audit records
    # answer no one: they may wait a little to come in larger batches. Grants may not.
    usage = wiring.consumer_for(
        settings,
        publisher,
        {ctx.topics.usage: usage_handler(db, ctx.topics), ctx.topics.audit: audit_handler(db)},
        {ctx.topics.usage: usage_batch_handler(db, ctx.topics)},
        db=db,
        part="usage",
        linger_ms=settings.usage_consumer_linger_ms,
    )
    relay = wiring.relay_for(settings, db, publisher)
    dlq = DlqDepthMonitor(
        settings.infra.kafka_bootstrap,
        [ctx.topics.stripe_events_dlq, ctx.topics.name(USAGE_DLQ), ctx.topics.name(AUDIT_DLQ)],
        replay_group(settings.infra.topic_namespace),
        settings.dlq_depth_interval_s,
    )
    stripe = stripe_client(settings.infra, timeout_s=settings.stripe_timeout_s)
    return build_app(
        settings,
        routers=[
            api.router(api.ApiDeps(db, ctx, stripe)),
            holds_api.router(db, ctx.topics),
            audit_api.router(db),
        ],
        lifecycle=[
            db,
            publisher,
            relay,
            payments,
            usage,
            dlq,
            HoldSweeper(db, settings.hold_sweep_interval_s),
        ],
        checks={
            "database": db.ping,
            "kafka": wiring.kafka_check(settings),
            "consumer": payments.check,
            "usage_consumer": usage.check,
        },
        browser_facing=True,
    )
