from __future__ import annotations

import httpx
from billing_platform import context, tracing
from billing_platform.http_client import traced_client
from opentelemetry import trace


async def test_outbound_request_carries_trace_context_and_correlation_id() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    tracing.configure_tracing("test")
    context.correlation_id_var.set("corr-out")
    async with traced_client(transport=httpx.MockTransport(answer)) as client:
        with trace.get_tracer("test").start_as_current_span("parent") as parent:
            parent_trace = tracing.current_trace_id()
            parent_span = format(parent.get_span_context().span_id, "016x")
            response = await client.get("http://ledger.local/api/holds")

    assert response.json() == {"ok": True}
    [request] = seen
    assert request.headers["x-correlation-id"] == "corr-out"
    version, trace_id, span_id, _flags = request.headers["traceparent"].split("-")
    assert version == "00"
    assert trace_id == parent_trace
    # The header names the client span, a child of "parent", not "parent" itself.
    assert span_id != parent_span
