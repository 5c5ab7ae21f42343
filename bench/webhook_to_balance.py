"""Webhook -> visible balance latency, and how many webhooks per second are accepted.

Runs against the dev stack by default, because its PostgreSQL commits durably (the test
stack turns fsync off for speed; ``--stack test`` uses it anyway). The stack is restarted
here with the per-IP limits lifted, and otherwise runs exactly as ``billing up`` runs it.

1. Latency: one purchase at a time, a signed ``checkout.session.completed`` is posted and
   ``GET /api/balance`` is polled every 2 ms until the grant shows; the time from sending
   the webhook to the first balance read that shows it is one sample.
2. Throughput: a burst of signed webhooks for distinct purchases is posted with N
   concurrent senders; accepted/s counts 2xx answers over the posting time, and grants/s
   the time until the ledger has granted all of them.

Run: ``./scripts/run python bench/webhook_to_balance.py [--samples 200] [--burst 2000]
[--concurrency 32] [--stack dev|test] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg
import httpx
from billing_cli import keys, stripe_sim
from billing_cli.layout import Layout
from billing_cli.stack import Stack

LIFTED_LIMITS = {
    "CHECKOUT_PURCHASE_RATE_LIMIT_PER_MINUTE": "100000000",
    "WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "100000000",
}


class Bench:
    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.checkout = stack.services["checkout"].url
        self.ledger = stack.services["ledger"].url
        self.webhook_url = f"{stack.services['webhook-ingest'].url}/webhooks/stripe"
        self.secret = stack.secrets["stripe_webhook_secret"]
        self.admin = self.auth("bench-admin", ["admin"])

    def auth(self, user: str, roles: list[str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys.mint_token(self.stack.layout, user, roles)}"}

    async def purchase(self, user: str) -> stripe_sim.SimPurchase:
        headers = self.auth(user)
        created = await self.http.post(
            f"{self.checkout}/api/purchases", json={"packageCode": "starter"}, headers=headers
        )
        created.raise_for_status()
        got = await self.http.get(
            f"{self.checkout}/api/purchases/{created.json()['purchaseId']}", headers=self.admin
        )
        return stripe_sim.SimPurchase.from_api(got.json())

    async def balance(self, user: str, headers: dict[str, str]) -> int:
        got = await self.http.get(f"{self.ledger}/api/balance", headers=headers)
        value: int = got.json()["balanceMillicredits"]
        return value

    async def one_latency(self) -> tuple[float, float]:
        user = f"bench-{uuid.uuid4().hex[:10]}"
        purchase = await self.purchase(user)
        headers = self.auth(user)
        event = stripe_sim.session_completed(purchase)
        started = time.perf_counter()
        answer = await stripe_sim.send(self.http, self.webhook_url, event, self.secret)
        acked = time.perf_counter() - started
        answer.raise_for_status()
        # Polling, as a client would: the first read that shows the grant ends the sample.
        while True:
            if await self.balance(user, headers) != 0:
                return acked, time.perf_counter() - started
            await asyncio.sleep(0.002)


async def purchases(bench: Bench, count: int, concurrency: int) -> list[stripe_sim.SimPurchase]:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> stripe_sim.SimPurchase:
        async with gate:
            return await bench.purchase(f"burst-{uuid.uuid4().hex[:10]}")

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def burst(bench: Bench, count: int, concurrency: int) -> dict[str, float]:
    bought = await purchases(bench, count, concurrency)
    events = [stripe_sim.session_completed(p) for p in bought]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)
    accepted = 0

    async def sender() -> None:
        nonlocal accepted
        while not queue.empty():
            answer = await stripe_sim.send(
                bench.http, bench.webhook_url, queue.get_nowait(), bench.secret
            )
            accepted += answer.is_success

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    posted = time.perf_counter() - started
    await wait_all_granted(bench.stack, [p.purchase_id for p in bought])
    granted = time.perf_counter() - started
    return {"accepted": accepted, "post_s": posted, "grant_s": granted}


async def wait_all_granted(stack: Stack, purchase_ids: list[str]) -> None:
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM ledger.purchase_grants WHERE purchase_id = ANY($1::text[])",
                purchase_ids,
            )
            if done == len(purchase_ids):
                return
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def report_latency(samples: list[tuple[float, float]]) -> None:
    acks = [a * 1000 for a, _ in samples]
    visible = [v * 1000 for _, v in samples]
    print(f"latency over {len(samples)} webhooks (ms)   p50     p90     p99     max")
    for label, values in (("webhook answered (2xx)", acks), ("balance visible", visible)):
        figures = [percentile(values, p) for p in (50, 90, 99)] + [max(values)]
        print(f"  {label:28}" + "".join(f"{f:8.1f}" for f in figures))
    print(f"  mean balance visible: {statistics.mean(visible):.1f} ms")


async def run(stack: Stack, samples: int, burst_size: int, concurrency: int) -> None:
    # Idle connections are dropped before uvicorn's 5 s keep-alive closes them under us.
    limits = httpx.Limits(max_connections=concurrency * 2, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        bench = Bench(stack, http)
        for _ in range(10):  # warm-up: connection pools, first-use code paths
            await bench.one_latency()
        report_latency([await bench.one_latency() for _ in range(samples)])
        figures = await burst(bench, burst_size, concurrency)
    n = figures["accepted"]
    print(f"burst of {burst_size} webhooks, {concurrency} concurrent senders:")
    print(f"  accepted {n:.0f} in {figures['post_s']:.2f} s = {n / figures['post_s']:.0f}/s")
    print(
        f"  all granted {figures['grant_s']:.2f} s after the first send"
        f" = {burst_size / figures['grant_s']:.0f} grants/s end to end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stack", choices=["dev", "test"], default="dev")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    layout = Layout.test() if args.stack == "test" else Layout.dev()
    stack = Stack(layout, service_env=LIFTED_LIMITS)
    stack.down()  # services must run with the lifted limits above
    stack.up()
    try:
        asyncio.run(run(stack, args.samples, args.burst, args.concurrency))
    finally:
        if not args.keep:
            stack.down()


if __name__ == "__main__":
    main()
