"""OpenTelemetry set-up and W3C trace-context propagation for HTTP and Kafka headers.

Every process gets a provider, so requests and consumed records always have trace ids (log
lines carry them, the ledger's inbox keeps them) whether or not spans leave the process.
Only when an OTLP endpoint is configured are spans recorded, exported and the libraries
instrumented (FastAPI server spans, asyncpg statements, httpx calls); with tracing off none
of that code is even imported, and a span is its ids alone (``IdsOnlyTracerProvider``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.util._decorator import _agnosticcontextmanager
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from fastapi import FastAPI

# Probes and scrapes hit these every few seconds on every replica: traced, they would bury
# the traces of real requests.
UNTRACED_PATHS = "/health$,/readyz$,/metrics$"
# asyncpg's statement spans name the database in one of these (old or stable conventions).
_DB_SYSTEM_KEYS = ("db.system", "db.system.name")

_configured = False
_libraries_instrumented = False


class _RootSampler(Sampler):
    """Whether a new trace starts: ``ratio`` of them, except for a database statement run
    outside any trace (the outbox relay's idle polls, a group commit's flush): each would be
    a trace of its own, once a second or more per service, telling nobody anything."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and attributes and any(k in attributes for k in _DB_SYSTEM_KEYS):
            return SamplingResult(Decision.DROP)
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RootsExceptLoneStatements{{{self._ratio.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """A trace is kept or dropped as a whole: where it started (a remote caller, a Kafka
    record's producer) decides, and a trace starting here is kept at ``ratio``."""
    return ParentBased(root=_RootSampler(ratio))


def build_provider(
    service: str, otlp_endpoint: str = "", sample_ratio: float = 1.0
) -> trace.TracerProvider:
    """A provider for ``service``: exporting over OTLP/HTTP at ``sample_ratio`` when an
    endpoint is given; otherwise spans with ids and nothing else (``IdsOnlyTracerProvider``)."""
    if not otlp_endpoint:
        return IdsOnlyTracerProvider()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": service})
    provider = TracerProvider(resource=resource, sampler=sampler(sample_ratio))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# The SDK's own generator: random ids, never the all-zero id that means "none".
_IDS = RandomIdGenerator()


class IdsOnlyTracer(trace.Tracer):
    """Spans that are their ids and nothing else, for a process that exports no traces.

    A span continues its parent's trace (id, flags, state) under a span id of its own; a new
    trace is marked sampled, so a service downstream that does export records its part, as
    it would under a recording provider that samples everything. Nothing is recorded because
    nothing would read it: a request's span around its model call's, as metering makes for
    every charged call, cost 32 us of CPU as the SDK's recorded spans (kept in-process for
    their ids alone) against 7 us as these (``bench/span_cost.py``)."""

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        span_id = _IDS.generate_span_id()
        if parent.is_valid:
            ids = SpanContext(
                parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state
            )
        else:
            trace_id = _IDS.generate_trace_id()
            ids = SpanContext(trace_id, span_id, False, TraceFlags(TraceFlags.SAMPLED))
        return NonRecordingSpan(ids)

    @_agnosticcontextmanager
    def start_as_current_span(
        self, name: str, context: Context | None = None, *_: Any, **__: Any
    ) -> Iterator[trace.Span]:
        # The other arguments (kind, attributes, ...) describe what is not recorded.
        span = self.start_span(name, context)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)


class IdsOnlyTracerProvider(trace.TracerProvider):
    """The provider of a process that exports no traces: one ``IdsOnlyTracer`` for all."""

    def __init__(self) -> None:
        self._tracer = IdsOnlyTracer()

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return self._tracer


def configure_tracing(
    service: str, otlp_endpoint: str = "", sample_ratio: float = 1.0
) -> trace.TracerProvider:
    """Install the process's provider (the first call wins: OpenTelemetry allows one) and
    return the one in effect."""
    global _configured
    if not _configured:
        trace.set_tracer_provider(build_provider(service, otlp_endpoint, sample_ratio))
        _configured = True
    return trace.get_tracer_provider()


class _Instrumentor(Protocol):
    """What is used of ``BaseInstrumentor`` (whose module is untyped)."""

    @property
    def is_instrumented_by_opentelemetry(self) -> bool: ...

    def instrument(self, **kwargs: Any) -> None: ...

    def uninstrument(self, **kwargs: Any) -> None: ...


def _library_instrumentors() -> tuple[_Instrumentor, ...]:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    return (HTTPXClientInstrumentor(), AsyncPGInstrumentor())  # type: ignore[no-untyped-call]


def instrument(
    app: FastAPI, otlp_endpoint: str, tracer_provider: trace.TracerProvider | None = None
) -> bool:
    """When traces are exported (``otlp_endpoint`` set): a server span per request to
    ``app``, and a client span per asyncpg statement and per httpx call in the process, all
    from ``tracer_provider`` (the process's by default). Whether it instrumented anything.

    asyncpg and httpx are instrumented once per process, by the first app to ask.
    """
    global _libraries_instrumented
    if not otlp_endpoint:
        return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    provider = tracer_provider or trace.get_tracer_provider()
    # No span per ASGI receive and send: three or more per request, timing single chunks.
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],
    )
    for instrumentor in _library_instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
    _libraries_instrumented = True
    return True


def uninstrument(app: FastAPI) -> None:
    """Undo ``instrument``: ``app``'s server spans and the process-wide client spans."""
    global _libraries_instrumented
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.uninstrument_app(app)
    for instrumentor in _library_instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _libraries_instrumented = False


def client_calls_instrumented() -> bool:
    """Whether httpx opens a client span for each call itself (tracing on)."""
    return _libraries_instrumented


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(extra: Mapping[str, str] | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers carrying the current trace context plus any extra headers."""
    carrier: dict[str, str] = dict(extra or {})
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract_context(headers: Iterable[tuple[str, bytes]]) -> Context:
    carrier = {k: v.decode(errors="replace") for k, v in headers}
    return propagate.extract(carrier)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
