"""Wiring of the webhook-ingest service: the one place its parts are put together."""

from __future__ import annotations

from collections.abc import Sequence

from billing_events import wiring
from billing_platform.app import Lifecycle, ReadinessCheck
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.group_commit import GroupCommitter
from fastapi import FastAPI

from webhook_ingest import api, handlers, service
from webhook_ingest.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    publisher = wiring.publisher_for(settings)
    relay = wiring.relay_for(settings, db, publisher)
    committer = store_committer(db, settings)
    topics = wiring.topics_for(settings)
    topic = topics.stripe_events
    consumer = wiring.consumer_for(
        settings,
        publisher,
        {topic: handlers.stored_event_handler(db)},
        {topic: handlers.stored_events_batch_handler(db)},
        db=db,
    )
    deps = api.Deps(
        db=db,
        topics=topics,
        relay=relay,
        settings=settings,
        committer=committer,
    )
    return web_app(
        settings,
        deps,
        # Stopped first: the deliveries still queued are written while the pool is open.
        lifecycle=[db, publisher, relay, committer, consumer],
        checks={"database": db.ping, "kafka": wiring.kafka_check(settings)},
    )


def web_app(
    settings: Settings,
    deps: api.Deps,
    *,
    lifecycle: Sequence[Lifecycle] = (),
    checks: dict[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """The app around the routes, Stripe's deliveries taken in front of the router."""
    deliver = api.deliveries(deps)
    return build_app(
        settings,
        routers=[api.router(deps, deliver)],
        lifecycle=lifecycle,
        checks=checks,
        hot_routes=[api.delivery_route(deliver)],
    )


def store_committer(db: Database, settings: Settings) -> GroupCommitter[service.Delivery, bool]:
    """Stores verified deliveries, many per transaction."""
    return GroupCommitter(
        "stripe_events",
        lambda: db.pool.acquire(),
        service.store_deliveries,
        max_batch=settings.group_commit_max_batch,
        max_queue=settings.group_commit_queue_bound,
        max_wait_s=settings.group_commit_max_wait_s,
    )
