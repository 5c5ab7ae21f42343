"""Wiring of the metering service: the one place its parts are put together.

Parts: the DB pool, the Kafka publisher and the outbox relay (usage records and alerts
leave through the outbox), a charged chat's admission (claim, guardrails and the ledger's
hold in one statement), its settlement (the ledger's capture and the usage record in one
statement), the ledger's hold function (one round trip) and its release API over HTTP,
the model provider on aiohttp (the chat completions API), checkout's switches (read
through the same pool) and the guardrails' store. Readiness checks the database and the
broker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from billing_events import wiring
from billing_platform.app import Lifecycle, ReadinessCheck
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.ratelimit import Limit, RateLimitSweeper
from fastapi import FastAPI

from metering import api, service
from metering.admission import AdmissionRules, PgAdmissions
from metering.guard_store import PgGuardStore
from metering.guardrails import Caps
from metering.ledger_client import DirectLedgerClient, HttpLedgerClient
from metering.model_client import OpenAIModelClient
from metering.overhead import OverheadHeader
from metering.rate_card import RateCardBook, load_rate_cards
from metering.settings import Settings
from metering.switches import PgSwitchSource, Switches
from metering.usage_store import PgUsageStore

log = logging.getLogger(__name__)

GATEWAY_PREFIXES = ("/api/ai/",)


def limits(settings: Settings) -> service.Limits:
    return service.Limits(
        hold_ttl_s=settings.hold_ttl_s,
        default_max_output_tokens=settings.default_max_output_tokens,
        max_output_tokens=settings.max_output_tokens,
    )


def default_caps(settings: Settings) -> Caps:
    return Caps(
        per_request=settings.cap_per_request_millicredits,
        per_day=settings.cap_per_day_millicredits,
        per_hour=settings.cap_per_hour_millicredits,
    )


def rate_limit(settings: Settings) -> Limit:
    return Limit("charges-per-user", settings.rate_limit_per_minute)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db = Database.for_service(settings)
    publisher = wiring.publisher_for(settings)
    relay = wiring.relay_for(settings, db, publisher)
    # A claim left in progress is taken over only once its hold can no longer be active.
    takeover_s = settings.hold_ttl_s + settings.model_timeout_s
    topics = wiring.topics_for(settings)
    store = PgUsageStore(db, topics, relay, takeover_after_s=takeover_s)
    rest = HttpLedgerClient(
        settings.ledger_url, settings.ledger_token, timeout_s=settings.ledger_timeout_s
    )
    ledger = DirectLedgerClient(db, settings.ledger_schema, rest)
    model = OpenAIModelClient(
        settings.infra.openai_base_url, settings.infra.openai_api_key, settings.model_timeout_s
    )
    if not settings.ledger_token.get_secret_value():
        log.warning("METERING_LEDGER_TOKEN is empty: the ledger will refuse every hold")
    cards = RateCardBook(load_rate_cards(), settings.rate_card_version)
    switches = Switches(PgSwitchSource(db, settings.checkout_schema), settings.switch_cache_s)
    # A call counts in flight no longer than its claim can stay in progress.
    guard = PgGuardStore(
        db,
        default_caps(settings),
        inflight_ttl_s=takeover_s,
        audit=wiring.audit_trail_for(settings),
        rate=rate_limit(settings),
    )
    rules = AdmissionRules(
        default_caps(settings),
        rate_limit(settings),
        takeover_after_s=takeover_s,
        inflight_ttl_s=takeover_s,
        hold_ttl_s=settings.hold_ttl_s,
    )
    gateway = service.Gateway(
        cards,
        ledger,
        model,
        store,
        limits(settings),
        switches=switches,
        guard=guard,
        admissions=PgAdmissions(db, rules),
    )
    return gateway_app(
        settings,
        api.ApiDeps(gateway, store, cards, guard),
        lifecycle=[db, publisher, relay, rest, model, RateLimitSweeper(db)],
        checks={"database": db.ping, "kafka": wiring.kafka_check(settings)},
    )


def gateway_app(
    settings: Settings,
    deps: api.ApiDeps,
    *,
    lifecycle: Sequence[Lifecycle] = (),
    checks: dict[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """The app around the routes, with the overhead header on every gateway answer."""
    app = build_app(
        settings,
        routers=[api.router(deps)],
        lifecycle=lifecycle,
        checks=checks,
        browser_facing=True,
        hot_routes=[api.chat_route(deps)],
    )
    app.add_middleware(OverheadHeader, prefixes=GATEWAY_PREFIXES)
    return app
