"""HTTP routes of webhook-ingest: Stripe's webhook endpoint and the admin replay.

The webhook endpoint never parses a body before its signature is verified, stores a
verified event (and its outbox record) before answering 2xx, and logs only the event id,
type, outcome or failure code: payloads and secrets never reach a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from billing_events.audit import AuditTrail
from billing_events.topics import Topics
from billing_events.v1 import stripe_pb2
from billing_platform import context
from billing_platform.auth import AdminUser
from billing_platform.db import HasPool
from billing_platform.errors import ApiError
from billing_platform.group_commit import Overloaded
from billing_platform.hot_routes import HotRoute
from billing_platform.ratelimit import SlidingWindowLimiter, per_ip
from fastapi import APIRouter, Request, Response
from prometheus_client import Counter
from starlette.middleware import Middleware

from webhook_ingest import service
from webhook_ingest.schemas import ReplayAccepted, ReplayRequest, WebhookReceived
from webhook_ingest.settings import Settings

log = logging.getLogger(__name__)

EVENTS = Counter("stripe_webhook_events_total", "Verified Stripe events stored", ["event_type"])
DUPLICATES = Counter(
    "stripe_webhook_duplicates_total",
    "Deliveries of Stripe events already stored",
    ["event_type"],
)
FAILURES = Counter(
    "stripe_webhook_failures_total", "Stripe deliveries refused, by error code", ["reason"]
)
REPLAYS = Counter("stripe_webhook_replays_total", "Stored Stripe events published again")


_RECEIVED = {
    new: WebhookReceived(received=True, duplicate=not new).model_dump_json().encode()
    for new in (True, False)
}


class Pokeable(Protocol):
    def poke(self) -> None: ...


class Committer(Protocol):
    """Stores deliveries, many per transaction (``billing_platform.group_commit``)."""

    async def submit(self, item: service.Delivery) -> bool: ...


@dataclass(frozen=True)
class Deps:
    db: HasPool
    topics: Topics
    relay: Pokeable
    settings: Settings
    committer: Committer
    clock: Callable[[], float] = time.time

    @property
    def audit(self) -> AuditTrail:
        return AuditTrail(self.topics, self.settings.service_name)


STRIPE_PATH = "/webhooks/stripe"
Deliver = Callable[[Request], Awaitable[Response]]


def deliveries(deps: Deps) -> Deliver:
    """The answer to a Stripe delivery: verified on the raw body, stored before the 2xx."""
    secrets = [s.get_secret_value() for s in deps.settings.infra.stripe_webhook_secrets]
    if not secrets:
        log.warning("no Stripe webhook signing secrets configured: every delivery is refused")
    rate_limit = per_ip(SlidingWindowLimiter(deps.settings.rate_limit_per_minute, 60.0))

    async def deliver(request: Request) -> Response:
        try:
            # Per process (a flood guard): its counts are only touched from the event loop.
            await rate_limit(request)
            envelope = await _verified(request, deps, secrets)
        except ApiError as exc:
            _refused(exc)
            raise
        new = await _stored(deps, envelope)
        if new:
            deps.relay.poke()
        _accepted(envelope, new)
        # Prebuilt: the hot path skips response-model validation of a constant answer.
        return Response(_RECEIVED[new], media_type="application/json")

    return deliver


def delivery_route(deliver: Deliver) -> Middleware:
    """Stripe's deliveries in front of FastAPI's router (``HotRoute``): the route's own
    answer, without the router's CPU; the route below stays the documented one."""
    return Middleware(HotRoute, method="POST", path=STRIPE_PATH, handler=deliver)


def router(deps: Deps, deliver: Deliver) -> APIRouter:
    routes = APIRouter()

    @routes.post(STRIPE_PATH, tags=["webhooks"], response_model=WebhookReceived)
    async def stripe_webhook(request: Request) -> Response:
        """Stripe's deliveries: verified on the raw body, stored before the 2xx."""
        return await deliver(request)

    @routes.post("/api/admin/webhooks/replay", tags=["admin"], status_code=202)
    async def replay(body: ReplayRequest, admin: AdminUser) -> ReplayAccepted:
        """Publish a stored event again (consumers absorb it by its Stripe event id)."""
        async with deps.db.pool.acquire() as conn, conn.transaction():
            envelope = await service.replay_event(conn, deps.topics, body.event_id)
            replayed_by = service.ReplayedBy(admin.user_id, body.reason)
            await service.record_replay(conn, deps.audit, envelope, replayed_by)
        deps.relay.poke()
        REPLAYS.inc()
        log.info(
            "stripe event replayed",
            extra={"actor": admin.user_id, "event_id": body.event_id, "event_type": envelope.type},
        )
        return ReplayAccepted(event_id=body.event_id, replayed=True)

    return routes


async def _stored(deps: Deps, envelope: stripe_pb2.StripeEventReceived) -> bool:
    """True when the event is new; returns only once its transaction has committed."""
    try:
        return await deps.committer.submit(service.delivery(deps.topics, envelope))
    except Overloaded as exc:
        # Shed, not queued without end: nothing was written, and Stripe retries.
        error = ApiError(
            503, "overloaded", "too many deliveries in flight; retry", headers={"Retry-After": "1"}
        )
        _refused(error)
        raise error from exc


async def _verified(
    request: Request, deps: Deps, secrets: list[str]
) -> stripe_pb2.StripeEventReceived:
    body = await _read_body(request, deps.settings.max_body_bytes)
    signature = request.headers.get("stripe-signature")
    tolerance = deps.settings.signature_tolerance_s
    return service.verified_envelope(body, signature, secrets, tolerance, deps.clock())


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body as sent; refused as soon as it passes ``limit``, never buffered whole."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"body over {limit} bytes", limitBytes=limit)
    if not body:
        raise ApiError(400, "empty_body", "request body is empty")
    return bytes(body)


def _refused(exc: ApiError) -> None:
    FAILURES.labels(exc.code).inc()
    log.warning("stripe webhook refused", extra={"reason": exc.code, "status": exc.status})


def _accepted(envelope: stripe_pb2.StripeEventReceived, new: bool) -> None:
    (EVENTS if new else DUPLICATES).labels(envelope.type).inc()
    # On the request's own access line: at thousands of deliveries a second, a second
    # line per delivery costs more than verifying it.
    context.annotate_request(
        event_id=envelope.stripe_event_id,
        event_type=envelope.type,
        outcome="new" if new else "duplicate",
    )
