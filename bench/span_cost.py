"""What a span costs a process that exports no traces, by provider, in one run.

With tracing off every service still gives each request and each consumed batch a span,
for its ids: log lines and the ledger's inbox carry the trace id, and outbound calls and
records carry ``traceparent``. A charged call makes two such spans in metering (the request
and the model call under it). This times that pair, started and ended as the services do
(``start_as_current_span``, the client span inside the server span, an attribute set on
each), under two providers, alternating for ``--rounds`` rounds:
- **sdk**: the SDK's provider sampling everything with no processor, as a process without
  an OTLP endpoint had before (spans recorded in memory, for their ids alone) - the baseline;
- **ids-only**: ``billing_platform.tracing.IdsOnlyTracerProvider``, what such a process
  has now (spans that are their ids).

Per round it prints the CPU per pair (``time.process_time``) and checks that both give the
client span the server span's trace id.

Run: ``./scripts/run python bench/span_cost.py [--pairs 20000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from billing_platform.tracing import IdsOnlyTracerProvider
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind


def providers() -> dict[str, trace.TracerProvider]:
    sdk = TracerProvider(
        resource=Resource.create({"service.name": "bench"}), sampler=ParentBased(ALWAYS_ON)
    )
    return {"sdk": sdk, "ids-only": IdsOnlyTracerProvider()}


def pair(tracer: trace.Tracer) -> bool:
    """One request's spans; whether the client span continued the server span's trace."""
    with tracer.start_as_current_span("POST /api/ai/chat", kind=SpanKind.SERVER) as server:
        with tracer.start_as_current_span("POST model", kind=SpanKind.CLIENT) as client:
            client.set_attribute("http.status_code", 200)
        server.set_attribute("http.status_code", 200)
    return client.get_span_context().trace_id == server.get_span_context().trace_id


def us_per_pair(tracer: trace.Tracer, pairs: int) -> float:
    for _ in range(pairs // 10):  # warm
        pair(tracer)
    started = time.process_time()
    for _ in range(pairs):
        pair(tracer)
    return (time.process_time() - started) / pairs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    tracers = {name: p.get_tracer("bench") for name, p in providers().items()}
    for name, tracer in tracers.items():
        if not pair(tracer):
            raise SystemExit(f"{name}: the client span left the server span's trace")
    figures: dict[str, list[float]] = {name: [] for name in tracers}
    print(f"{'round':>5} " + " ".join(f"{name + ' us/pair':>18}" for name in tracers))
    for round_no in range(1, opts.rounds + 1):
        for name, tracer in tracers.items():
            figures[name].append(us_per_pair(tracer, opts.pairs))
        print(f"{round_no:>5} " + " ".join(f"{figures[n][-1]:>18.1f}" for n in tracers))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print("median " + " ".join(f"{name} {value:.1f} us" for name, value in medians.items()))
    print(f"ids-only / sdk: {medians['ids-only'] / medians['sdk']:.2f}")


if __name__ == "__main__":
    main()
