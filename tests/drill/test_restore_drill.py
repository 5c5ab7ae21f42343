"""The restore drill: a point-in-time restore loses nothing Kafka still holds.

On a stack of its own (``Layout.drill()``, WAL archived by pgBackRest, rebuilt every run):
user A pays before the backup; user B's purchase exists before the moment T and is paid
after it. ``billing restore --to T`` takes the database back to T, so B's grant, its
webhook row and every consumer position after T are gone from it, while Kafka still holds
the records. After the restore A keeps its grant, B is granted exactly once by the replay,
and a reconciliation of the day names neither.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from billing_cli import keys, stripe_sim
from billing_cli.stack import Stack

PROFESSIONAL_GRANT = 54_990_000  # 49,990 credits + 5,000 bonus, in millicredits


class Client:
    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.url = {name: svc.url for name, svc in stack.services.items()}

    def auth(self, user: str, admin: bool = False) -> dict[str, str]:
        roles = ["admin"] if admin else []
        return {"Authorization": f"Bearer {keys.mint_token(self.stack.layout, user, roles)}"}

    async def buy(self, user: str) -> stripe_sim.SimPurchase:
        created = await self.http.post(
            f"{self.url['checkout']}/api/purchases",
            json={"packageCode": "professional", "returnTo": "/chat"},
            headers=self.auth(user),
        )
        assert created.status_code == 201, created.text
        return stripe_sim.SimPurchase.from_api(await self.purchase(created.json()["purchaseId"]))

    async def purchase(self, purchase_id: str) -> dict[str, Any]:
        got = await self.http.get(
            f"{self.url['checkout']}/api/purchases/{purchase_id}",
            headers=self.auth("ops", admin=True),
        )
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    async def pay(self, purchase: stripe_sim.SimPurchase) -> None:
        url = f"{self.url['webhook-ingest']}/webhooks/stripe"
        event = stripe_sim.session_completed(purchase)
        answer = await stripe_sim.send(
            self.http, url, event, self.stack.secrets["stripe_webhook_secret"]
        )
        assert answer.is_success, answer.text

    async def balance(self, user: str) -> int:
        got = await self.http.get(f"{self.url['ledger']}/api/balance", headers=self.auth(user))
        assert got.status_code == 200, got.text
        return int(got.json()["balanceMillicredits"])

    async def settled(self, purchase: stripe_sim.SimPurchase, timeout: float = 60) -> None:
        """Granted in the ledger and fulfilled in checkout."""
        deadline = time.monotonic() + timeout
        while (await self.balance(purchase.user_id)) != PROFESSIONAL_GRANT or (
            await self.purchase(purchase.purchase_id)
        )["status"] != "fulfilled":
            assert time.monotonic() < deadline, f"{purchase.user_id} never settled"
            await asyncio.sleep(0.2)


async def grants_of(stack: Stack, purchase_id: str) -> int:
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM ledger.journal_transactions"
            " WHERE kind = 'purchase' AND reference_id = $1",
            purchase_id,
        )
        return count
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_restore_to_a_moment_keeps_earlier_grants_and_replays_later_ones(
    drill_stack: Stack, billing: Callable[..., str]
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        client = Client(drill_stack, http)
        a = await client.buy("drill-user-a")
        await client.pay(a)
        await client.settled(a)
        backup = json.loads(billing("backup", "--type", "full"))
        assert backup["type"] == "full"

        b = await client.buy("drill-user-b")
        await asyncio.sleep(1)
        moment = datetime.now(UTC)
        await asyncio.sleep(1)
        await client.pay(b)
        await client.settled(b)

        billing("restore", "--to", moment.isoformat())

        assert await client.balance("drill-user-a") == PROFESSIONAL_GRANT
        await client.settled(b)
        await asyncio.sleep(3)  # a second grant, were there one, would land by now
        assert await client.balance("drill-user-b") == PROFESSIONAL_GRANT
        assert await grants_of(drill_stack, b.purchase_id) == 1
        assert await grants_of(drill_stack, a.purchase_id) == 1

    run = json.loads(billing("reconcile", "--date", moment.date().isoformat(), findings_ok=True))
    named = json.dumps(run["findings"])
    for who in ("drill-user-a", a.purchase_id, "drill-user-b", b.purchase_id):
        assert who not in named, run["findings"]
    assert run["status"] == "clean", run["findings"]
