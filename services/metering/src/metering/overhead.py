"""What the gateway adds to a model call: ``x-billing-overhead-ms`` on every gateway answer.

Overhead is the request's wall time, from the first byte this middleware sees to the
response head, minus the time spent waiting on the model. The head of a stream goes out
once the model's first chunk is in, so for streams it is the time spent before the first
model byte (authentication, hold, the call's setup), not the whole stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-billing-overhead-ms"
OVERHEAD = Histogram(
    "billing_gateway_overhead_seconds",
    "Gateway time per AI request, excluding the model call",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


class RequestClock:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.model_s = 0.0

    def overhead_s(self) -> float:
        return max(0.0, time.perf_counter() - self.started - self.model_s)


_clock: ContextVar[RequestClock | None] = ContextVar("gateway_clock", default=None)


@contextmanager
def model_time() -> Iterator[None]:
    """Count the block as time spent on the model (outside a gateway request: nowhere)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        clock = _clock.get()
        if clock is not None:
            clock.model_s += time.perf_counter() - started


class OverheadHeader:
    """ASGI middleware stamping the header on every answer under ``prefixes``.

    Pure ASGI, so the endpoint runs in this task and sees the clock set here (a stream's
    body runs in a child task, whose copied context still holds the same clock).
    """

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self._app = app
        self._prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(self._prefixes):
            await self._app(scope, receive, send)
            return
        clock = RequestClock()
        token = _clock.set(clock)

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                overhead = clock.overhead_s()
                MutableHeaders(scope=message)[HEADER] = f"{overhead * 1000:.3f}"
                OVERHEAD.observe(overhead)
            await send(message)

        try:
            await self._app(scope, receive, stamped)
        finally:
            _clock.reset(token)
