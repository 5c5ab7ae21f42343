"""Stripe's own list of Checkout Sessions, read through the official SDK.

Stored verified events (webhook-ingest) are the primary source of payments for every
check: they are what the ledger granted from, and locally stripe-mock answers the API with
fixed fixtures that have nothing to do with the purchases made. So the API is only read to
report how many sessions Stripe lists for the period (``stripeApiSessionsSeen``); no
finding is raised from it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import stripe

from reconciler.period import Period

log = logging.getLogger(__name__)
PAGE_SIZE = 100


class StripeSessions:
    def __init__(
        self, client: stripe.StripeClient, max_sessions: int, budget_s: float = 60.0
    ) -> None:
        self._client = client
        self._max = max_sessions
        self._budget_s = budget_s

    async def count(self, period: Period) -> int | None:
        """Sessions created in the period, at most ``max_sessions``; None if Stripe failed.

        Rate limits (429) and network errors are retried by the SDK itself; the whole
        listing gets ``budget_s``, as a figure for the report never holds up the run.
        """
        try:
            return await asyncio.wait_for(self._count(period), self._budget_s)
        except (stripe.StripeError, TimeoutError) as exc:
            log.warning("stripe session listing failed", extra={"error": type(exc).__name__})
            return None

    async def _count(self, period: Period) -> int:
        params: Any = {
            "limit": PAGE_SIZE,
            "created": {"gte": int(period.start.timestamp()), "lt": int(period.end.timestamp())},
        }
        page = await self._client.v1.checkout.sessions.list_async(params)
        seen = 0
        async for _session in page.auto_paging_iter():
            seen += 1
            if seen >= self._max:
                break
        return seen
