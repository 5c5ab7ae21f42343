"""What the AI gateway adds to a model call, at a steady request rate.

Two runs against the local OpenAI-compatible server, same prompt, same rate:
1. direct: the official ``openai`` SDK calling the model server;
2. gateway: ``POST /api/ai/chat`` on metering (auth, switches, caps, estimate, hold in the
   ledger, the model call, pricing, capture, usage record), same SDK underneath.
Requests are sent open-loop at ``--rate`` per second (a new one every 1/rate s whether or
not earlier ones finished), so queueing shows up in the figures. For the gateway it also
reports the ``x-billing-overhead-ms`` header: the request's time outside the model call.

Runs on the dev stack (durable commits), restarted with the guardrail caps lifted so a
long run is not refused. Run: ``uv run python bench/gateway_overhead.py [--rate 20]
[--seconds 30] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import openai
from billing_cli import keys
from billing_cli.layout import Layout
from billing_cli.stack import Stack

LIFTED_CAPS = {
    "METERING_CAP_PER_REQUEST_MILLICREDITS": "1000000000",
    "METERING_CAP_PER_DAY_MILLICREDITS": "1000000000000",
    "METERING_CAP_PER_HOUR_MILLICREDITS": "1000000000000",
    # 100 calls per user per minute would refuse a run above --rate 33 (20 users).
    "METERING_RATE_LIMIT_PER_MINUTE": "1000000",
}
PROMPT = [{"role": "user", "content": "Summarise the benefits of prepaid credits. [[tokens=20]]"}]
MODEL = "gpt-4o-mini"


async def open_loop(
    rate: float, seconds: float, call: Callable[[], Coroutine[Any, Any, float]]
) -> list[float]:
    """Start ``call`` every 1/rate s for ``seconds``; the latency of each, in ms."""
    tasks = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call()))
    return list(await asyncio.gather(*tasks))


async def direct(stack: Stack, rate: float, seconds: float) -> list[float]:
    client = openai.AsyncOpenAI(
        base_url=stack.env()["BILLING_OPENAI_BASE_URL"],
        api_key=stack.secrets["openai_api_key"],
        max_retries=0,
    )

    async def call() -> float:
        began = time.perf_counter()
        await client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
        return (time.perf_counter() - began) * 1000

    try:
        return await open_loop(rate, seconds, call)
    finally:
        await client.close()


async def gateway(stack: Stack, rate: float, seconds: float) -> tuple[list[float], list[float]]:
    url = f"{stack.services['metering'].url}/api/ai/chat"
    users = [f"bench-gw-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=200, keepalive_expiry=2.0)
    ) as http:
        await fund(stack, http, users)
        tokens = {u: keys.mint_token(stack.layout, u) for u in users}
        overheads: list[float] = []
        calls = 0

        async def call() -> float:
            nonlocal calls
            user = users[calls % len(users)]
            calls += 1
            began = time.perf_counter()
            answer = await http.post(
                url,
                json={"model": MODEL, "messages": PROMPT, "max_tokens": 20},
                headers={"Authorization": f"Bearer {tokens[user]}"},
            )
            elapsed = (time.perf_counter() - began) * 1000
            answer.raise_for_status()
            overheads.append(float(answer.headers["x-billing-overhead-ms"]))
            return elapsed

        latencies = await open_loop(rate, seconds, call)
    return latencies, overheads


async def fund(stack: Stack, http: httpx.AsyncClient, users: list[str]) -> None:
    admin = {
        "Authorization": f"Bearer {keys.mint_token(stack.layout, 'bench', ['admin'], mfa=True)}"
    }
    for user in users:
        answer = await http.post(
            f"{stack.services['ledger'].url}/api/admin/adjustments",
            json={
                "userId": user,
                "amountMillicredits": 10**9,
                "reason": "benchmark credits",
                "referenceId": f"bench-{user}",
            },
            headers=admin,
        )
        answer.raise_for_status()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> str:
    figures = [percentile(values, p) for p in (50, 90, 99)] + [max(values)]
    return f"  {label:34}" + "".join(f"{f:8.1f}" for f in figures)


async def run(stack: Stack, rate: float, seconds: float) -> None:
    await direct(stack, rate, 2)  # warm-up of both paths
    await gateway(stack, rate, 2)
    plain = await direct(stack, rate, seconds)
    through, overheads = await gateway(stack, rate, seconds)
    count = int(rate * seconds)
    print(f"{count} calls each at {rate:g}/s, {MODEL}, 20 output tokens (ms)")
    print(f"  {'':34}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    print(row("direct to the model server", plain))
    print(row("through the gateway", through))
    print(row("x-billing-overhead-ms (gateway)", overheads))
    added = percentile(through, 50) - percentile(plain, 50)
    print(f"  median latency added by the gateway: {added:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--stack", choices=["dev", "test"], default="dev")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    layout = Layout.test() if args.stack == "test" else Layout.dev()
    stack = Stack(layout, service_env=LIFTED_CAPS)
    stack.down()  # metering must run with the lifted caps above
    stack.up()
    try:
        asyncio.run(run(stack, args.rate, args.seconds))
    finally:
        if not args.keep:
            stack.down()


if __name__ == "__main__":
    main()
