"""Outbound HTTP with trace context and correlation id, for calls to other services.

Every request gets a client span, and its ``traceparent`` and ``x-correlation-id`` headers,
so a call chain (metering -> ledger holds, reconciler -> Stripe) reads as one trace.
"""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode

from billing_platform import context, tracing

CORRELATION_HEADER = "x-correlation-id"


class TracedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._tracer = tracing.tracer("billing.http.client")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if tracing.client_calls_instrumented():
            # The instrumented transport underneath opens the client span and names it in
            # ``traceparent``; a span here as well would be a second one for the same call.
            self._stamp(request)
            return await self._inner.handle_async_request(request)
        name = f"{request.method} {request.url.host}"
        with self._tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
            span.set_attribute("http.url", str(request.url.copy_with(query=None)))
            self._stamp(request)
            response = await self._inner.handle_async_request(request)
            span.set_attribute("http.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    @staticmethod
    def _stamp(request: httpx.Request) -> None:
        extra = {CORRELATION_HEADER: context.current_correlation_id()}
        for key, value in tracing.inject_headers(extra):
            request.headers[key] = value.decode()

    async def aclose(self) -> None:
        await self._inner.aclose()


def traced_client(
    *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests carry the current trace and correlation id."""
    return httpx.AsyncClient(transport=TracedTransport(transport), **kwargs)
