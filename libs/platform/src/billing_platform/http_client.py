"""Outbound HTTP with trace context and correlation id, for calls to other services.

Every request gets a client span, and its ``traceparent`` and ``x-correlation-id`` headers,
so a call chain (metering -> ledger holds, reconciler -> Stripe) reads as one trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode

from billing_platform import context, tracing

CORRELATION_HEADER = "x-correlation-id"
# A proxy until tracing is configured, then the configured provider's tracer.
_TRACER = tracing.tracer("billing.http.client")


def propagation_headers() -> dict[str, str]:
    """What an outbound request carries: the current trace context and correlation id."""
    extra = {CORRELATION_HEADER: context.current_correlation_id()}
    return {key: value.decode() for key, value in tracing.inject_headers(extra)}


@contextmanager
def client_span(name: str, url: str) -> Iterator[Callable[[int], None]]:
    """A client span around one outbound call, current inside the block (so the headers
    stamped there name it); call what it yields with the answer's status."""
    with _TRACER.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
        span.set_attribute("http.url", url)

        def answered(status: int) -> None:
            span.set_attribute("http.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))

        yield answered


class TracedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if tracing.client_calls_instrumented():
            # The instrumented transport underneath opens the client span and names it in
            # ``traceparent``; a span here as well would be a second one for the same call.
            request.headers.update(propagation_headers())
            return await self._inner.handle_async_request(request)
        name, url = f"{request.method} {request.url.host}", str(request.url.copy_with(query=None))
        with client_span(name, url) as answered:
            request.headers.update(propagation_headers())
            response = await self._inner.handle_async_request(request)
            answered(response.status_code)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def traced_client(
    *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests carry the current trace and correlation id."""
    return httpx.AsyncClient(transport=TracedTransport(transport), **kwargs)
