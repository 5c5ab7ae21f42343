"""Per-key sliding-window rate limits for public endpoints (per source IP).

Counts live in the process, so with N replicas the effective limit is up to N times the
configured one; the ingress in front of the service is expected to add a global limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from fastapi import Request

from billing_platform.errors import ApiError


class SlidingWindowLimiter:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float | None:
        """Record a hit for ``key``; None when allowed, else seconds until one is."""
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window_s - now
        hits.append(now)
        if len(self._hits) > 10_000:
            self._forget_idle(now)
        return None

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window_s]
        for key in idle:
            del self._hits[key]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def per_ip(limiter: SlidingWindowLimiter) -> Callable[[Request], None]:
    """A FastAPI dependency answering 429 ``rate_limited`` with ``retryAfterSeconds``."""

    def check(request: Request) -> None:
        wait = limiter.retry_after(client_ip(request))
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests from this address; retry in {seconds}s",
                headers={"Retry-After": str(seconds)},
                retryAfterSeconds=seconds,
            )

    return check
