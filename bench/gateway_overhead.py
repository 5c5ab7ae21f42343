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

Run: ``./scripts/run python bench/gateway_overhead.py [--quick] [--json] [--rates 50,100,200,300]
[--seconds 10] [--users 50] [--stack dev|test] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
from billing_cli import installers, keys
from billing_cli.layout import Layout
from billing_cli.stack import Stack
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
SLOW_P99_MS = 100.0
PERCENTILES = ("50th", "90th", "99th", "max")


@dataclass(frozen=True)
class Step:
    """One vegeta run: latencies (ms), status counts and, for the gateway, CPU."""

    rate: int
    latency_ms: dict[str, float]
    codes: dict[str, int]
    errors: list[str]
    phase: Phase | None = None

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


def direct_targets(stack: Stack, path: Path, count: int) -> None:
    url = stack.env()["BILLING_OPENAI_BASE_URL"].rstrip("/") + "/chat/completions"
    headers = {
        "Authorization": f"Bearer {stack.secrets['openai_api_key']}",
        "Content-Type": "application/json",
    }
    line = _target("POST", url, headers, json.dumps(BODY).encode())
    path.write_text((line + "\n") * count)


def gateway_targets(stack: Stack, path: Path, count: int, tokens: list[str]) -> None:
    url = f"{stack.services['metering'].url}/api/ai/chat"
    body = json.dumps(BODY).encode()
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


def step(rate: int, report: dict[str, Any], phase: Phase | None = None) -> Step:
    latency = {k: report["latencies"][k] / 1e6 for k in PERCENTILES}
    errors = report.get("errors") or []
    return Step(rate, latency, report.get("status_codes") or {}, errors[:3], phase)


@dataclass
class Run:
    stack: Stack
    vegeta: Path
    workdir: Path
    pipe: Pipeline
    tokens: list[str]
    seconds: int

    async def direct(self, rate: int) -> Step:
        targets = self.workdir / f"direct-{rate}.json"
        await asyncio.to_thread(direct_targets, self.stack, targets, rate * self.seconds)
        return step(rate, await attack(self.vegeta, targets, rate, self.seconds))

    async def gateway(self, rate: int) -> Step:
        targets = self.workdir / f"gateway-{rate}.json"
        count = rate * self.seconds
        await asyncio.to_thread(gateway_targets, self.stack, targets, count, self.tokens)
        meter = Meter(self.stack)
        meter.start()
        began = time.perf_counter()
        report = await attack(self.vegeta, targets, rate, self.seconds)
        await self.pipe.quiet()
        cpu = meter.stop()
        charged = (report.get("status_codes") or {}).get("200", 0)
        phase = Phase(f"gateway at {rate}/s", charged, time.perf_counter() - began, cpu)
        return step(rate, report, phase)


async def measure(stack: Stack, vegeta: Path, opts: argparse.Namespace) -> list[Step]:
    users = [f"bench-gw-{uuid.uuid4().hex[:8]}-{n:03d}" for n in range(opts.users)]
    progress(f"funding {len(users)} users")
    await fund(stack, users)
    tokens = [keys.mint_token(stack.layout, user) for user in users]
    db = await asyncpg.connect(stack.postgres.dsn)
    pipe = Pipeline(stack, db)
    await pipe.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
            run = Run(stack, vegeta, Path(tmp), pipe, tokens, opts.seconds)
            return await _steps(run, opts.rates)
    finally:
        await pipe.stop()
        await db.close()


async def _steps(run: Run, rates: list[int]) -> list[Step]:
    progress("warm-up: 2 s of each path at the first rate")
    warm = Run(run.stack, run.vegeta, run.workdir, run.pipe, run.tokens, 2)
    await warm.direct(rates[0])
    await warm.gateway(rates[0])
    steps: list[Step] = []
    for rate in rates:
        progress(f"{rate}/s: direct, then gateway, {run.seconds} s each")
        steps += [await run.direct(rate), await run.gateway(rate)]
    return steps


def report_lines(steps: list[Step]) -> list[str]:
    lines = [
        f"{'rate':>6} {'path':8}{'ok':>7}{'other':>7}"
        + "".join(f"{p + ' ms':>10}" for p in PERCENTILES)
    ]
    for direct, gateway in zip(steps[::2], steps[1::2], strict=True):
        for name, s in (("direct", direct), ("gateway", gateway)):
            other = sum(n for code, n in s.codes.items() if code != "200")
            figures = "".join(f"{s.latency_ms[p]:10.1f}" for p in PERCENTILES)
            lines.append(f"{s.rate:6d} {name:8}{s.ok:7d}{other:7d}{figures}")
        added = "".join(
            f"{gateway.latency_ms[p] - direct.latency_ms[p]:10.1f}" for p in PERCENTILES
        )
        slow = "  (p99 over 100 ms)" if gateway.latency_ms["99th"] > SLOW_P99_MS else ""
        lines.append(f"{gateway.rate:6d} {'overhead':8}{'':14}{added}{slow}")
    return [*lines, "", *cpu_lines([s for s in steps[1::2] if s.phase is not None])]


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
    errors = [e for s in steps for e in s.errors]
    return lines + ([f"error samples: {errors[:3]}"] if errors else [])


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
    parser.add_argument("--stack", choices=["dev", "test"], default="dev")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    rates = args.rates or ("20,50" if args.quick else "50,100,200,300")
    args.rates = [int(r) for r in rates.split(",")]
    args.seconds = args.seconds or (5 if args.quick else 10)
    return args


def main() -> None:
    args = parse_args()
    layout = Layout.test() if args.stack == "test" else Layout.dev()
    vegeta = installers.ensure_vegeta(layout)
    stack = Stack(layout, service_env=LIFTED_CAPS)
    stack.down()  # metering must run with the lifted caps above
    stack.up()
    try:
        steps = asyncio.run(measure(stack, vegeta, args))
    finally:
        if not args.keep:
            stack.down()
    table = "\n".join(report_lines(steps))
    if args.json:
        progress(table)
        print(as_json(steps))
    else:
        print(table)


if __name__ == "__main__":
    main()
