"""The ledger's real Stripe-event consumer, dying hard right after its first effect is
durable and before the offset commit: the worst place for a consumer to crash.

Run as a subprocess by the plumbing test, configured through the usual env settings.
"""

from __future__ import annotations

import asyncio
import os

from billing_events import wiring
from billing_events.kafka import InboundMessage
from billing_platform.db import Database
from ledger.handlers import stripe_event_handler
from ledger.main import ledger_context
from ledger.settings import Settings

CRASH_EXIT_CODE = 137


async def main() -> None:
    settings = Settings()
    db = Database(settings.infra.database_url, settings.db_schema, 1, 2)
    await db.start()
    handler = stripe_event_handler(db, ledger_context(settings))

    async def crash_after_effect(message: InboundMessage) -> None:
        await handler(message)
        os._exit(CRASH_EXIT_CODE)

    publisher = wiring.publisher_for(settings)
    await publisher.start()
    topics = wiring.topics_for(settings)
    runner = wiring.consumer_for(
        settings, publisher, {topics.stripe_events: crash_after_effect}, db=db
    )
    await runner.start()
    await asyncio.sleep(60)
    raise SystemExit("no message arrived within 60s")


if __name__ == "__main__":
    asyncio.run(main())
