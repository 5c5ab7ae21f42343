"""What the AI gateway adds to a model call, and what a charged call costs in CPU.

Brings the dev stack up (durable commits; guardrail caps and the per-user rate limit lifted
so a long run is not refused) and, for each of ``--rates`` calls per second, runs two open
loops with vegeta (pinned, installed into ``.local/bin``), ``--seconds`` each:
1. direct: ``POST /v1/chat/completions`` on the local OpenAI-compatible model server;
2. gateway: ``POST /api/ai/chat`` on metering for ``--users`` funded users, each call with
   its own ``Idempotency-Key`` (auth, switches, rate limit, caps, hold in the ledger, the
   model call, pricing, capture, the usage record and everything downstream of it).
Same prompt, same model, 20 output tokens. Per rate it prints both latency distributions,
the overhead (gateway minus direct at each percentile, same run), the answers that were not
200, and the CPU ms per call of every process for the gateway step, measured from the
first call until the whole pipeline is quiet (outboxes published, consumers caught up), so
the call's downstream work counts too. A rate whose gateway p99 passes 100 ms is marked.
The platform's CPU is also given as a multiple of the model server's per call in the same
cell (``platform/devllm``): the model server's work per call is the same in every commit,
and this machine's speed moves by a third within an hour, so runs of two commits made in
different minutes compare on that figure. Over the same span it prints what PostgreSQL wrote
to its WAL per call (records, full-page images, KiB; ``pg_stat_wal``); each gateway cell
starts right after a checkpoint, so the full-page images weigh the same in every run.

``--stream``: the same steps with ``"stream": true`` (the direct call asks for the usage
chunk, as the gateway does). vegeta times a body to its end, so these loops run on
``bench/ttfb`` (Go standard library only, built into ``.local/bin``), which times each answer
to the first byte of its body and to its end. A gateway stream counts as 200 only if it
ended with its ``billing`` event, a direct one with ``[DONE]``.

``--tracing``: the same run with traces on. A stand-in OTLP/HTTP collector in this process
(127.0.0.1, answering 200 to ``POST /v1/traces``, counting requests, bytes and spans) is
every service's ``BILLING_OTEL_EXPORTER_OTLP_ENDPOINT``, sampling ``--trace-ratio`` of new
traces (1.0: every call). The exporters flush every 0.5 s and each gateway step waits 1 s
after the pipeline is quiet, so encoding and sending a step's spans count in its CPU; the
collector's own work is the load generator's. Per rate it also prints the spans and bytes
exported per call, and at the end what the collector received in all.

``--warm-up S``: S seconds of gateway calls before the first cell (default 2, at the first
rate; a longer one runs at the top rate). A fresh broker compiles its hot paths for minutes:
``--warm-up 180`` measures a broker past that.

Run: ``./scripts/run python bench/gateway_overhead.py [--quick] [--json] [--rates 50,100,200,300]
[--seconds 10] [--users 50] [--warm-up 2] [--stack dev|test] [--keep] [--stream]
[--tracing [--trace-ratio 1.0]]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import gzip
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
from billing_cli import installers, keys
from billing_cli.layout import Layout
from billing_cli.stack import Stack
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pipeline import Meter, Phase, Pipeline, fund, progress, run_tool

LIFTED_CAPS = {
    "METERING_CAP_PER_REQUEST_MILLICREDITS": "1000000000",
    "METERING_CAP_PER_DAY_MILLICREDITS": "1000000000000",
    "METERING_CAP_PER_HOUR_MILLICREDITS": "1000000000000",
    "METERING_RATE_LIMIT_PER_MINUTE": "100000000",
}
MODEL = "gpt-4o-mini"
BODY = {
    "model": MODEL,
    "messages": [
        {"role": "user", "content": "Summarise the benefits of prepaid credits. [[tokens=20]]"}
    ],
    "max_tokens": 20,
}
# --stream: the same call as Server-Sent Events, timed to the first byte of the body. The
# gateway asks the model for the usage chunk itself; the direct call asks for it too.
STREAM_BODY = {**BODY, "stream": True}
DIRECT_STREAM_BODY = {**STREAM_BODY, "stream_options": {"include_usage": True}}
# What a whole stream ends with: a stream without it broke or was not charged.
STREAM_ENDS = {"direct": "data: [DONE]", "gateway": "event: billing"}
TTFB_SOURCE = Path(__file__).parent / "ttfb"
SLOW_P99_MS = 100.0
PERCENTILES = ("50th", "90th", "99th", "max")
# With --tracing: how often the services' exporters send (OpenTelemetry's default is 5 s),
# and how long a step waits, after the pipeline is quiet, for the last batch to leave.
EXPORT_DELAY_MS = 500
EXPORT_WAIT_S = 1.0


@dataclass(frozen=True)
class Exported:
    """What the collector had received by some moment."""

    requests: int = 0
    spans: int = 0
    bytes: int = 0
    undecodable: int = 0
    by_service: dict[str, int] = field(default_factory=dict)

    def since(self, before: Exported) -> Exported:
        services = {
            name: count - before.by_service.get(name, 0) for name, count in self.by_service.items()
        }
        return Exported(
            self.requests - before.requests,
            self.spans - before.spans,
            self.bytes - before.bytes,
            self.undecodable - before.undecodable,
            {name: count for name, count in services.items() if count},
        )


class TraceSink:
    """A stand-in OTLP/HTTP trace collector on loopback: answers 200 to ``POST /v1/traces``
    and counts what arrives, so the services encode and send their spans for real."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._bytes = 0
        self._undecodable = 0
        self._spans: Counter[str] = Counter()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the exporters keep their connection open

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self._answer(404)
                    return
                sink.record(body, self.headers.get("Content-Encoding") or "")
                self._answer(200)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per export would flood the benchmark's output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-sink", daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, body: bytes, encoding: str) -> None:
        spans: Counter[str] = Counter()
        request: ExportTraceServiceRequest | None
        try:
            payload = gzip.decompress(body) if encoding == "gzip" else body
            request = ExportTraceServiceRequest.FromString(payload)
        except Exception:
            request = None
        if request is not None:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "unknown",
                )
                for scope_spans in resource_spans.scope_spans:
                    spans[service] += len(scope_spans.spans)
        with self._lock:
            self._requests += 1
            self._bytes += len(body)
            self._undecodable += request is None
            self._spans.update(spans)

    def exported(self) -> Exported:
        with self._lock:
            return Exported(
                self._requests,
                sum(self._spans.values()),
                self._bytes,
                self._undecodable,
                dict(self._spans),
            )


@dataclass(frozen=True)
class Step:
    """One open loop: latencies (ms), status counts and, for the gateway, CPU. Streamed:
    latencies to the first byte, ``whole_ms`` to the end of the stream."""

    rate: int
    latency_ms: dict[str, float]
    codes: dict[str, int]
    errors: list[str]
    phase: Phase | None = None
    whole_ms: dict[str, float] | None = None

    @property
    def ok(self) -> int:
        return self.codes.get("200", 0)


def _target(method: str, url: str, headers: dict[str, str], body: bytes) -> str:
    return json.dumps(
        {
            "method": method,
            "url": url,
            "body": base64.b64encode(body).decode(),
            "header": {k: [v] for k, v in headers.items()},
        }
    )


def direct_targets(stack: Stack, path: Path, count: int, stream: bool) -> None:
    url = stack.env()["BILLING_OPENAI_BASE_URL"].rstrip("/") + "/chat/completions"
    headers = {
        "Authorization": f"Bearer {stack.secrets['openai_api_key']}",
        "Content-Type": "application/json",
    }
    body = json.dumps(DIRECT_STREAM_BODY if stream else BODY).encode()
    line = _target("POST", url, headers, body)
    path.write_text((line + "\n") * count)


def gateway_targets(stack: Stack, path: Path, count: int, tokens: list[str], stream: bool) -> None:
    url = f"{stack.services['metering'].url}/api/ai/chat"
    body = json.dumps(STREAM_BODY if stream else BODY).encode()
    with path.open("w") as out:
        for n in range(count):
            headers = {
                "Authorization": f"Bearer {tokens[n % len(tokens)]}",
                "Content-Type": "application/json",
                "Idempotency-Key": uuid.uuid4().hex,
            }
            out.write(_target("POST", url, headers, body) + "\n")


async def attack(vegeta: Path, targets: Path, rate: int, seconds: int) -> dict[str, Any]:
    results = targets.with_suffix(".bin")
    await run_tool(
        [
            str(vegeta),
            "attack",
            *("-format=json", f"-targets={targets}", f"-rate={rate}/1s"),
            *(f"-duration={seconds}s", "-timeout=30s", f"-output={results}"),
        ]
    )
    report: dict[str, Any] = json.loads(
        await run_tool([str(vegeta), "report", "-type=json", str(results)])
    )
    return report


async def first_bytes(
    ttfb: Path, targets: Path, rate: int, seconds: int, ends_with: str
) -> dict[str, Any]:
    """An open loop timed to each answer's first body byte (vegeta times the whole body)."""
    out = await run_tool(
        [
            str(ttfb),
            *(f"-targets={targets}", f"-rate={rate}", f"-duration={seconds}s"),
            *("-timeout=30s", f"-expect={ends_with}"),
        ]
    )
    report: dict[str, Any] = json.loads(out)
    return report


def build_ttfb(layout: Layout) -> Path:
    """The first-byte load generator, built from ``bench/ttfb`` (Go standard library only)."""
    binary = layout.bin / "ttfb"
    layout.bin.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=TTFB_SOURCE,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )
    return binary


def step(rate: int, report: dict[str, Any], phase: Phase | None = None) -> Step:
    latency = {k: report["latencies"][k] / 1e6 for k in PERCENTILES}
    whole = {k: report["complete"][k] / 1e6 for k in PERCENTILES} if "complete" in report else None
    errors = report.get("errors") or []
    return Step(rate, latency, report.get("status_codes") or {}, errors[:3], phase, whole)


@dataclass(frozen=True)
class Wal:
    """What PostgreSQL wrote to its WAL (pg_stat_wal): records, full-page images, bytes."""

    records: int
    full_pages: int
    bytes: int

    def since(self, before: Wal) -> Wal:
        return Wal(
            self.records - before.records,
            self.full_pages - before.full_pages,
            self.bytes - before.bytes,
        )


async def wal_written(db: asyncpg.Connection) -> Wal:
    row = await db.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    return Wal(int(row["wal_records"]), int(row["wal_fpi"]), int(row["wal_bytes"]))


@dataclass
class Run:
    stack: Stack
    vegeta: Path
    workdir: Path
    pipe: Pipeline
    tokens: list[str]
    seconds: int
    sink: TraceSink | None = None
    ttfb: Path | None = None  # set: streamed calls, timed to the first byte

    async def direct(self, rate: int) -> Step:
        targets = self.workdir / f"direct-{rate}.json"
        count = rate * self.seconds
        await asyncio.to_thread(direct_targets, self.stack, targets, count, self.streamed)
        return step(rate, await self._load("direct", targets, rate))

    async def gateway(self, rate: int) -> Step:
        targets = self.workdir / f"gateway-{rate}.json"
        count = rate * self.seconds
        await asyncio.to_thread(
            gateway_targets, self.stack, targets, count, self.tokens, self.streamed
        )
        # Every cell starts right after a checkpoint: a page's first change after one copies
        # the whole page into the WAL, so a checkpoint that fell inside some cells and not
        # others moved their WAL by half or more (0.85 against 4.0 full pages a call, two
        # cells of one run).
        await self.pipe.db.execute("CHECKPOINT")
        meter = Meter(self.stack)
        meter.start()
        before = self.sink.exported() if self.sink else Exported()
        wal_before = await wal_written(self.pipe.db)
        began = time.perf_counter()
        report = await self._load("gateway", targets, rate)
        await self.pipe.quiet()
        if self.sink is not None:
            await asyncio.sleep(EXPORT_WAIT_S)
        cpu = meter.stop()
        wal = (await wal_written(self.pipe.db)).since(wal_before)
        charged = (report.get("status_codes") or {}).get("200", 0)
        phase = Phase(f"gateway at {rate}/s", charged, time.perf_counter() - began, cpu)
        phase.extra["wal"] = wal
        if self.sink is not None:
            phase.extra["exported"] = asdict(self.sink.exported().since(before))
        return step(rate, report, phase)

    @property
    def streamed(self) -> bool:
        return self.ttfb is not None

    async def _load(self, path: str, targets: Path, rate: int) -> dict[str, Any]:
        if self.ttfb is None:
            return await attack(self.vegeta, targets, rate, self.seconds)
        return await first_bytes(self.ttfb, targets, rate, self.seconds, STREAM_ENDS[path])


async def measure(
    stack: Stack,
    vegeta: Path,
    opts: argparse.Namespace,
    sink: TraceSink | None = None,
    ttfb: Path | None = None,
) -> list[Step]:
    users = [f"bench-gw-{uuid.uuid4().hex[:8]}-{n:03d}" for n in range(opts.users)]
    progress(f"funding {len(users)} users")
    await fund(stack, users)
    tokens = [keys.mint_token(stack.layout, user) for user in users]
    db = await asyncpg.connect(stack.postgres.dsn)
    pipe = Pipeline(stack, db)
    await pipe.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
            run = Run(stack, vegeta, Path(tmp), pipe, tokens, opts.seconds, sink, ttfb)
            return await _steps(run, opts.rates, opts.warm_up)
    finally:
        await pipe.stop()
        await db.close()


DEFAULT_WARM_UP_S = 2


async def _steps(run: Run, rates: list[int], warm_up: int) -> list[Step]:
    # A broker just started is still compiling its hot paths. Its JIT threads burned, per
    # call, 1.5-1.8 ms in the 50/s cell and 0.4-0.5 in the 100/s one after the default
    # warm-up; 0.5-0.7 and 0.3-0.5 after 30 s at 300/s; under 0.1 after 180 s at 300/s.
    # `--warm-up 180` measures that steady state, on a database that has taken some 50,000
    # calls by then (see the README for what that costs).
    # A longer warm-up than the default runs at the top rate, to get through that sooner.
    warm_rate = rates[0] if warm_up <= DEFAULT_WARM_UP_S else max(rates)
    progress(f"warm-up: 2 s of the direct path, {warm_up} s of the gateway at {warm_rate}/s")
    await dataclasses.replace(run, seconds=2).direct(rates[0])
    await dataclasses.replace(run, seconds=warm_up).gateway(warm_rate)
    steps: list[Step] = []
    for rate in rates:
        progress(f"{rate}/s: direct, then gateway, {run.seconds} s each")
        steps += [await run.direct(rate), await run.gateway(rate)]
    return steps


def report_lines(steps: list[Step]) -> list[str]:
    streamed = any(s.whole_ms is not None for s in steps)
    lines = ["Streamed: times to the first byte of the body; 'end': to the end of the stream"]
    lines = (lines if streamed else []) + [
        f"{'rate':>6} {'path':8}{'ok':>7}{'other':>7}"
        + "".join(f"{p + ' ms':>10}" for p in PERCENTILES)
    ]
    for direct, gateway in zip(steps[::2], steps[1::2], strict=True):
        for name, s in (("direct", direct), ("gateway", gateway)):
            other = sum(n for code, n in s.codes.items() if code != "200")
            figures = "".join(f"{s.latency_ms[p]:10.1f}" for p in PERCENTILES)
            lines.append(f"{s.rate:6d} {name:8}{s.ok:7d}{other:7d}{figures}")
            if s.whole_ms is not None:
                ends = "".join(f"{s.whole_ms[p]:10.1f}" for p in PERCENTILES)
                lines.append(f"{s.rate:6d} {name[:4] + ' end':8}{'':14}{ends}")
        added = "".join(
            f"{gateway.latency_ms[p] - direct.latency_ms[p]:10.1f}" for p in PERCENTILES
        )
        slow = "  (p99 over 100 ms)" if gateway.latency_ms["99th"] > SLOW_P99_MS else ""
        lines.append(f"{gateway.rate:6d} {'overhead':8}{'':14}{added}{slow}")
    gateway_steps = [s for s in steps[1::2] if s.phase is not None]
    return [
        *lines,
        "",
        *cpu_lines(gateway_steps),
        *wal_lines(gateway_steps),
        *export_lines(gateway_steps),
    ]


def cpu_lines(steps: list[Step]) -> list[str]:
    rows = [s.phase.cpu_ms_per_event() for s in steps if s.phase is not None]
    if not rows:
        return []
    lines = ["CPU ms per gateway call (from the first call until the pipeline is quiet)"]
    lines.append(f"{'process':16}" + "".join(f"{str(s.rate) + '/s':>10}" for s in steps))
    for name in rows[0]:
        lines.append(f"{name:16}" + "".join(f"{row.get(name, 0.0):10.3f}" for row in rows))
    platform = [
        row["total"] - row.get("load generator", 0.0) - row.get("devllm", 0.0) for row in rows
    ]
    lines.append(f"{'platform only':16}" + "".join(f"{v:10.3f}" for v in platform))
    # This machine's speed moves by a third within an hour; the model server does the same
    # work per call whatever the commit, so its CPU is a yardstick measured in the same cell.
    yardstick = [row.get("devllm", 0.0) for row in rows]
    ratios = [
        f"{p / d:10.1f}" if d else f"{'-':>10}" for p, d in zip(platform, yardstick, strict=True)
    ]
    lines.append(f"{'platform/devllm':16}" + "".join(ratios))
    errors = [e for s in steps for e in s.errors]
    return lines + ([f"error samples: {errors[:3]}"] if errors else [])


def wal_lines(steps: list[Step]) -> list[str]:
    """PostgreSQL's WAL per charged call: it is written, flushed before every answer (the
    settlement's commit) and archived; a full-page image is a whole 8 KiB page, copied at a
    page's first change after each checkpoint (each cell starts right after one)."""
    rows = [(s, s.phase.extra["wal"]) for s in steps if s.phase and "wal" in s.phase.extra]
    if not rows:
        return []
    lines = ["", "WAL per gateway call (pg_stat_wal, same span as the CPU)"]
    lines.append(f"{'':16}" + "".join(f"{str(s.rate) + '/s':>10}" for s, _ in rows))
    calls = [max(s.ok, 1) for s, _ in rows]
    for label, figures in (
        ("records", [w.records / n for (_, w), n in zip(rows, calls, strict=True)]),
        ("full pages", [w.full_pages / n for (_, w), n in zip(rows, calls, strict=True)]),
        ("KiB", [w.bytes / 1024 / n for (_, w), n in zip(rows, calls, strict=True)]),
    ):
        lines.append(f"{label:16}" + "".join(f"{v:10.2f}" for v in figures))
    return lines


def export_lines(steps: list[Step]) -> list[str]:
    """With --tracing: what each gateway step exported, per charged call."""
    rows = [
        (s, s.phase.extra["exported"]) for s in steps if s.phase and "exported" in s.phase.extra
    ]
    if not rows:
        return []
    lines = ["", "Traces exported per gateway call (received by the local OTLP collector)"]
    lines.append(f"{'':16}" + "".join(f"{str(s.rate) + '/s':>10}" for s, _ in rows))
    calls = [max(s.ok, 1) for s, _ in rows]
    for label, key, scale in (
        ("spans", "spans", 1),
        ("KB", "bytes", 1024),
        ("exports", "requests", 1),
    ):
        figures = [e[key] / scale / n for (_, e), n in zip(rows, calls, strict=True)]
        lines.append(f"{label:16}" + "".join(f"{v:10.3f}" for v in figures))
    services = sorted({name for _, e in rows for name in e["by_service"]})
    for name in services:
        figures = [e["by_service"].get(name, 0) / n for (_, e), n in zip(rows, calls, strict=True)]
        lines.append(f"{'  ' + name:16}" + "".join(f"{v:10.3f}" for v in figures))
    return lines


def sink_lines(exported: Exported) -> list[str]:
    services = ", ".join(f"{name} {n}" for name, n in sorted(exported.by_service.items()))
    lines = [
        f"OTLP collector received {exported.requests} exports, {exported.spans} spans,"
        f" {exported.bytes / 1e6:.1f} MB in all ({services or 'no spans'})"
    ]
    if exported.undecodable:
        lines.append(f"  {exported.undecodable} exports could not be decoded")
    return lines


def as_json(steps: list[Step]) -> str:
    rows = []
    for s in steps:
        row: dict[str, Any] = {**asdict(s), "ok": s.ok}
        if s.phase is not None:
            row["cpu_ms_per_call"] = s.phase.cpu_ms_per_event()
        rows.append(row)
    return json.dumps({"steps": rows}, indent=2, default=str)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rates 20 and 50, 5 s each")
    parser.add_argument("--json", action="store_true", help="figures as JSON (table: stderr)")
    parser.add_argument("--rates", help="calls per second, comma-separated")
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument(
        "--warm-up",
        type=int,
        default=DEFAULT_WARM_UP_S,
        help="seconds of gateway calls first (2: at the first rate; longer: at the top rate)",
    )
    parser.add_argument("--stack", choices=["dev", "test"], default="dev")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--stream", action="store_true", help="streamed calls, timed to the first byte"
    )
    parser.add_argument(
        "--tracing", action="store_true", help="traces on, exported to a local OTLP collector"
    )
    parser.add_argument(
        "--trace-ratio", type=float, default=1.0, help="with --tracing: share of traces kept"
    )
    args = parser.parse_args()
    if args.tracing and args.keep:
        parser.error("--keep with --tracing: the services would export to a collector gone")
    if not 0.0 <= args.trace_ratio <= 1.0:
        parser.error("--trace-ratio must be between 0 and 1")
    rates = args.rates or ("20,50" if args.quick else "50,100,200,300")
    args.rates = [int(r) for r in rates.split(",")]
    args.seconds = args.seconds or (5 if args.quick else 10)
    if args.warm_up < 1:
        parser.error("--warm-up must be at least 1 second")
    return args


def main() -> None:
    args = parse_args()
    layout = Layout.test() if args.stack == "test" else Layout.dev()
    vegeta = installers.ensure_vegeta(layout)
    ttfb = build_ttfb(layout) if args.stream else None
    service_env = dict(LIFTED_CAPS)
    sink = TraceSink() if args.tracing else None
    if sink is not None:
        sink.start()
        service_env |= {
            "BILLING_OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            "BILLING_OTEL_TRACES_SAMPLER_ARG": str(args.trace_ratio),
            "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_DELAY_MS),
        }
    stack = Stack(layout, service_env=service_env)
    stack.down()  # metering must run with the lifted caps above (and the tracing settings)
    try:
        stack.up()
        try:
            steps = asyncio.run(measure(stack, vegeta, args, sink, ttfb))
        finally:
            if not args.keep:
                stack.down()  # before the collector: the services flush on the way out
    finally:
        if sink is not None:
            sink.stop()
    table = "\n".join(report_lines(steps))
    if sink is not None:
        table += "\n\n" + "\n".join(sink_lines(sink.exported()))
    if args.json:
        progress(table)
        print(as_json(steps))
    else:
        print(table)


if __name__ == "__main__":
    main()
