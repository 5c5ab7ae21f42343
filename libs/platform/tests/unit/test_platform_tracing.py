"""Traces: the instrumentation is on only with an OTLP endpoint, one server span per request
either way, httpx calls as child spans carrying ``traceparent``, and the sampler."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
from billing_platform import tracing
from billing_platform.app import create_app
from billing_platform.http_client import traced_client
from billing_platform.settings import InfraSettings, ServiceSettings
from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import ValidationError

ENDPOINT = "http://127.0.0.1:4318"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_PARENT = "00f067aa0ba902b7"


@dataclass
class Spans:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def of_kind(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.kind is kind]


@pytest.fixture(autouse=True)
def _process_provider() -> None:
    """The process-wide provider a service always has (tracing off: nothing exported), which
    the platform's own tracers (Kafka, the HTTP client) use; whichever test set it first."""
    tracing.configure_tracing("tracing-test")


@pytest.fixture
def spans() -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(1.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Spans(provider, exporter)
    provider.shutdown()


@dataclass
class Callee:
    """A real HTTP server on loopback: what httpx's instrumented transport talks to."""

    url: str
    seen: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def callee() -> Iterator[Callee]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Callee(f"http://127.0.0.1:{server.server_port}/callee", seen)
    finally:
        server.shutdown()
        server.server_close()


def _platform_app(spans: Spans, callee: Callee, endpoint: str) -> FastAPI:
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        async with traced_client(timeout=5) as client:
            (await client.get(callee.url)).raise_for_status()
        return {"item": item_id}

    infra = InfraSettings(otel_exporter_otlp_endpoint=endpoint)
    settings = ServiceSettings(service_name="tracing-test", infra=infra)
    return create_app(settings, routers=[router], tracer_provider=spans.provider)


@pytest.fixture
async def instrumented_app(spans: Spans, callee: Callee) -> AsyncIterator[FastAPI]:
    app = _platform_app(spans, callee, ENDPOINT)
    try:
        yield app
    finally:
        tracing.uninstrument(app)


def _asgi_client(app: FastAPI) -> httpx.AsyncClient:
    # ASGITransport is not one of the transports the instrumentation wraps: the test's own
    # calls add no client spans.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test")


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _attribute(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes[name]


async def test_with_an_endpoint_each_request_has_one_server_span_with_its_route(
    spans: Spans, callee: Callee, instrumented_app: FastAPI, app_log: list[dict[str, Any]]
) -> None:
    async with _asgi_client(instrumented_app) as client:
        first = await client.get("/items/a1", headers={"x-correlation-id": "corr-1"})
        second = await client.get("/items/b2")
        health = await client.get("/health")

    assert [first.status_code, second.status_code, health.status_code] == [200, 200, 200]
    servers = spans.of_kind(SpanKind.SERVER)
    assert len(servers) == 2  # one per request; the probe is not traced
    for span in servers:
        assert span.name == "GET /items/{item_id}"
        assert _attribute(span, "http.route") == "/items/{item_id}"
        assert _attribute(span, "http.status_code") == 200
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name.startswith("opentelemetry.instrumentation.")
    # Ids and the access line are still the request scope's; the line names the trace.
    assert first.headers["x-correlation-id"] == "corr-1"
    assert second.headers["x-request-id"]
    [line_a, line_b] = [line for line in app_log if line["msg"] == "request"]
    assert line_a["route"] == "/items/{item_id}"
    assert {line_a["trace_id"], line_b["trace_id"]} == {
        _hex(s.context.trace_id, 32) for s in servers
    }


async def test_an_httpx_call_inside_a_request_is_its_child_and_carries_traceparent(
    spans: Spans, callee: Callee, instrumented_app: FastAPI
) -> None:
    caller = f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"
    async with _asgi_client(instrumented_app) as client:
        response = await client.get(
            "/items/a1", headers={"traceparent": caller, "x-correlation-id": "corr-2"}
        )

    assert response.status_code == 200
    [server] = spans.of_kind(SpanKind.SERVER)
    # Exactly one client span: the platform's transport opens none beside httpx's.
    [call] = spans.of_kind(SpanKind.CLIENT)
    assert _hex(server.context.trace_id, 32) == CALLER_TRACE
    assert _hex(_parent_id(server), 16) == CALLER_PARENT
    assert _parent_id(call) == server.context.span_id
    assert call.context.trace_id == server.context.trace_id
    assert call.instrumentation_scope is not None
    assert call.instrumentation_scope.name == "opentelemetry.instrumentation.httpx"
    [headers] = callee.seen
    assert headers["traceparent"] == (f"00-{CALLER_TRACE}-{_hex(call.context.span_id, 16)}-01")
    assert headers["x-correlation-id"] == "corr-2"


async def test_an_unhandled_error_is_recorded_on_the_instrumented_server_span(
    spans: Spans, callee: Callee
) -> None:
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    settings = ServiceSettings(
        service_name="tracing-test", infra=InfraSettings(otel_exporter_otlp_endpoint=ENDPOINT)
    )
    app = create_app(settings, routers=[router], tracer_provider=spans.provider)
    try:
        async with _asgi_client(app) as client:
            response = await client.get("/boom")
    finally:
        tracing.uninstrument(app)

    assert response.status_code == 500
    [server] = spans.of_kind(SpanKind.SERVER)
    assert _attribute(server, "http.status_code") == 500
    assert [e.name for e in server.events] == ["exception"]
    assert not server.status.is_ok


async def test_asyncpg_is_instrumented_only_with_an_endpoint(spans: Spans) -> None:
    bare = FastAPI()
    assert not tracing.instrument(bare, "", spans.provider)
    assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
    assert not hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")

    assert tracing.instrument(bare, ENDPOINT, spans.provider)
    try:
        assert AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
        assert hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")
    finally:
        tracing.uninstrument(bare)
    assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
    assert not tracing.client_calls_instrumented()


async def test_without_an_endpoint_nothing_is_instrumented(spans: Spans, callee: Callee) -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        async with httpx.AsyncClient(timeout=5) as client:
            (await client.get(callee.url)).raise_for_status()
        return {"item": item_id}

    assert not tracing.instrument(app, "", spans.provider)
    async with _asgi_client(app) as client:
        response = await client.get("/items/a1")

    assert response.status_code == 200
    assert spans.finished() == ()
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
    assert not tracing.client_calls_instrumented()
    assert "traceparent" not in callee.seen[0]


async def test_without_an_endpoint_the_platform_still_gives_each_request_a_trace(
    spans: Spans, callee: Callee, app_log: list[dict[str, Any]]
) -> None:
    """Nothing is exported then, but the ids exist: for log lines, outbound calls and the
    rows and records a request writes."""
    app = _platform_app(spans, callee, endpoint="")
    async with _asgi_client(app) as client:
        response = await client.get("/items/a1", headers={"x-correlation-id": "corr-3"})

    assert response.status_code == 200
    # Of the platform's own tracers, not of any instrumentation.
    assert all(
        s.instrumentation_scope is not None and s.instrumentation_scope.name.startswith("billing.")
        for s in spans.finished()
    )
    [server] = spans.of_kind(SpanKind.SERVER)
    trace_id = _hex(server.context.trace_id, 32)
    [headers] = callee.seen
    # The platform's transport names its own client span (the process's tracer's) as parent.
    _version, called_trace, called_parent, _flags = headers["traceparent"].split("-")
    assert called_trace == trace_id
    assert called_parent != _hex(server.context.span_id, 16)
    assert headers["x-correlation-id"] == "corr-3"
    [line] = [line for line in app_log if line["msg"] == "request"]
    assert line["trace_id"] == trace_id


def test_the_sampler_keeps_the_ratio_of_new_traces_and_follows_callers() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(0.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("new trace", kind=SpanKind.SERVER) as dropped:
        # Dropped, yet with ids: log lines and inbox rows still name a trace.
        assert dropped.get_span_context().is_valid
        assert tracing.current_trace_id() == _hex(dropped.get_span_context().trace_id, 32)
    sampled = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"}
    parent = TraceContextTextMapPropagator().extract(sampled)
    with tracer.start_as_current_span("continued", context=parent, kind=SpanKind.SERVER):
        pass

    assert [s.name for s in exporter.get_finished_spans()] == ["continued"]
    provider.shutdown()


def test_a_statement_outside_any_trace_starts_none() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(1.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    statement = {"db.system": "postgresql", "db.statement": "SELECT 1"}

    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=statement):
        pass
    with (
        tracer.start_as_current_span("GET /items", kind=SpanKind.SERVER),
        tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=statement),
    ):
        pass
    with tracer.start_as_current_span("GET ledger", kind=SpanKind.CLIENT):
        pass

    assert sorted(s.name for s in exporter.get_finished_spans()) == [
        "GET /items",
        "GET ledger",
        "SELECT",
    ]
    [kept] = [s for s in exporter.get_finished_spans() if s.name == "SELECT"]
    [request] = [s for s in exporter.get_finished_spans() if s.name == "GET /items"]
    assert _parent_id(kept) == request.context.span_id
    provider.shutdown()


def test_an_exporting_provider_samples_at_the_configured_ratio() -> None:
    provider = tracing.build_provider("tracing-test", ENDPOINT, 0.25)
    assert isinstance(provider, TracerProvider)
    try:
        description = provider.sampler.get_description()
    finally:
        provider.shutdown()
    assert description.startswith("ParentBased{root:RootsExceptLoneStatements{")
    assert "TraceIdRatioBased{0.25}" in description
    assert isinstance(tracing.build_provider("tracing-test"), tracing.IdsOnlyTracerProvider)


def test_without_an_endpoint_a_new_trace_has_ids_marked_sampled_and_records_nothing() -> None:
    tracer = tracing.build_provider("tracing-test").get_tracer("test")

    with tracer.start_as_current_span("GET /items", kind=SpanKind.SERVER) as server:
        ids = server.get_span_context()
        assert trace.get_current_span() is server
        assert tracing.current_trace_id() == _hex(ids.trace_id, 32)
        with tracer.start_as_current_span("GET ledger", kind=SpanKind.CLIENT) as client:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
        assert trace.get_current_span() is server
    assert trace.get_current_span() is not server

    assert ids.is_valid
    assert ids.trace_flags.sampled
    assert not server.is_recording()
    called = client.get_span_context()
    assert called.trace_id == ids.trace_id
    assert called.span_id != ids.span_id
    # A service downstream that exports records its part of the trace.
    assert carrier["traceparent"] == f"00-{_hex(ids.trace_id, 32)}-{_hex(called.span_id, 16)}-01"


@pytest.mark.parametrize("flags", ["01", "00"])
def test_without_an_endpoint_a_span_continues_its_callers_trace(flags: str) -> None:
    tracer = tracing.IdsOnlyTracerProvider().get_tracer("test")
    caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-{flags}", "tracestate": "k=v"}
    parent = TraceContextTextMapPropagator().extract(caller)

    with tracer.start_as_current_span("continued", context=parent, kind=SpanKind.SERVER) as span:
        assert tracing.current_trace_id() == CALLER_TRACE
    ids = span.get_span_context()

    assert _hex(ids.span_id, 16) != CALLER_PARENT
    assert ids.span_id != 0
    assert ids.trace_flags.sampled == (flags == "01")
    assert ids.trace_state.to_header() == "k=v"


def test_without_an_endpoint_spans_of_new_traces_have_ids_of_their_own() -> None:
    tracer = tracing.IdsOnlyTracerProvider().get_tracer("test")
    spans = [tracer.start_span("new").get_span_context() for _ in range(1_000)]

    assert len({s.trace_id for s in spans}) == len({s.span_id for s in spans}) == 1_000


def test_the_ratio_is_read_from_the_environment_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert InfraSettings().otel_traces_sampler_arg == 1.0
    monkeypatch.setenv("BILLING_OTEL_TRACES_SAMPLER_ARG", "0.1")
    assert InfraSettings().otel_traces_sampler_arg == 0.1
    monkeypatch.setenv("BILLING_OTEL_TRACES_SAMPLER_ARG", "1.5")
    with pytest.raises(ValidationError):
        InfraSettings()
