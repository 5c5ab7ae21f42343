"""The seeded client side of a chaos run: users buying, paying, refunding, chatting.

Each user is one worker with its own ``random.Random`` drawn from the run's seed, so the
sequence of operations a user attempts is the same for a seed; which of them land before
or after a kill is up to the wall clock. Every request is retried (same idempotency key,
same event) until a definitive answer or the end of the run, and what the client saw is
written to the ``Model``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from billing_cli import keys
from billing_cli import stripe_sim as sim
from billing_cli.chaos.model import CATALOG, Adjustment, Charge, Model, Purchase, seeded
from billing_cli.stack import Stack

USERS = 6
# Answers a client must not take as final: the same request again may still succeed.
RETRYABLE_ERRORS = {"idempotency_key_in_progress", "rate_limited"}
GRANTED = {"fulfilled", "partially_refunded", "refunded"}
WORDS = "ledger credit token model stream refund kafka chaos hold usage balance".split()
OPS = ["purchase", "refund", "chat", "stream", "reconcile", "adjust"]
OP_WEIGHTS = [15, 10, 35, 15, 15, 10]
# A purchase key left "in progress" by a killed checkout is taken over only after minutes;
# a client that waited this long gives up on it (no payment is sent for that purchase).
PURCHASE_PATIENCE_S = 15.0


def admin_token(stack: Stack, user: str = "chaos-ops") -> str:
    """An admin JWT, with step-up MFA when the key tooling can mint it."""
    extra: dict[str, Any] = {}
    if "mfa" in inspect.signature(keys.mint_token).parameters:
        extra["mfa"] = True
    return keys.mint_token(stack.layout, user, ["admin"], 6 * 3600, **extra)


def error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def billing_body(response: httpx.Response) -> dict[str, Any] | None:
    """A chat's settled answer: the JSON body, or a stream's ``billing`` event; else None."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        body = response.json()
        return body if isinstance(body, dict) and "usage" in body else None
    lines = response.text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line == "event: billing" and lines[i + 1].startswith("data: "):
            found: dict[str, Any] = json.loads(lines[i + 1][len("data: ") :])
            return found
    return None


class Workload:
    def __init__(self, stack: Stack, model: Model, http: httpx.AsyncClient, seed: int) -> None:
        self.model = model
        self.http = http
        self.seed = seed
        self.stack = stack
        svc = stack.services
        self.checkout = svc["checkout"].url
        self.webhook_url = f"{svc['webhook-ingest'].url}/webhooks/stripe"
        self.ledger = svc["ledger"].url
        self.metering = svc["metering"].url
        self.secret = stack.secrets["stripe_webhook_secret"]
        self.admin = {"Authorization": f"Bearer {admin_token(stack)}"}
        self.loading = True
        self.deadline = float("inf")
        self.models: list[str] = []
        self.sent: dict[str, sim.SimPurchase] = {}
        self.background: list[asyncio.Task[None]] = []
        self.tokens: dict[str, dict[str, str]] = {}

    # --- the run ---------------------------------------------------------------------

    async def run(self, rngs: list[random.Random]) -> None:
        self.models = await self._rate_card_models()
        users = [f"chaos{self.seed}-u{i}" for i in range(len(rngs))]
        self.model.users.extend(users)
        for user in users:
            token = keys.mint_token(self.stack.layout, user, [], 6 * 3600)
            self.tokens[user] = {"Authorization": f"Bearer {token}"}
        await asyncio.gather(*(self._user(u, r) for u, r in zip(users, rngs, strict=True)))
        await asyncio.gather(*self.background)

    def stop(self, drain_s: float) -> None:
        """Start no new operation; those in flight retry for at most ``drain_s`` more."""
        self.loading = False
        self.deadline = time.monotonic() + drain_s

    async def _rate_card_models(self) -> list[str]:
        url = f"{self.metering}/api/rate-card"
        got = await self._until_definitive(
            "rate-card", lambda: self.http.get(url, headers=self.admin)
        )
        if got is None or got.status_code != 200:
            raise RuntimeError(f"no rate card from {url}")
        return sorted(m["model"] for m in got.json()["models"])

    async def _user(self, user: str, rng: random.Random) -> None:
        await self.adjust(user, rng, 0, 300_000)  # credits to spend before the first purchase
        n = 0
        while self.loading:
            n += 1
            op = rng.choices(OPS, OP_WEIGHTS)[0]
            pause = rng.uniform(0.05, 0.5)
            try:
                await self._op(op, user, rng, n)
            except (KeyError, TypeError, ValueError) as exc:  # an answer of the wrong shape
                self.model.anomalies.append(f"{op} by {user}: {exc!r}")
            await asyncio.sleep(pause)

    async def _op(self, op: str, user: str, rng: random.Random, n: int) -> None:
        if op == "purchase":
            await self.purchase(user, rng, n)
        elif op == "refund":
            await self.refund(user, rng)
        elif op in ("chat", "stream"):
            await self.chat(user, rng, n, stream=op == "stream")
        elif op == "reconcile":
            await self.reconcile(user, rng, n)
        else:
            await self.adjust(user, rng, n, rng.randint(5_000, 60_000))

    # --- retries ---------------------------------------------------------------------

    async def _until_definitive(
        self,
        endpoint: str,
        send: Callable[[], Awaitable[httpx.Response]],
        settled: Callable[[httpx.Response], bool] = lambda _: True,
        patience_s: float | None = None,
    ) -> httpx.Response | None:
        """Send until an answer that is final (a 2xx/4xx that ``settled`` accepts)."""
        delay, first_busy = 0.2, None
        while time.monotonic() < self.deadline:
            try:
                response = await send()
            except httpx.HTTPError as exc:
                self.model.saw(endpoint, type(exc).__name__)
            else:
                self.model.saw(endpoint, str(response.status_code))
                code = error_code(response) if response.status_code >= 400 else None
                final = response.status_code < 500 and code not in RETRYABLE_ERRORS
                if final and (response.status_code >= 400 or settled(response)):
                    return response
                if code in RETRYABLE_ERRORS:
                    first_busy = first_busy or time.monotonic()
                    if patience_s is not None and time.monotonic() - first_busy > patience_s:
                        return None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        return None

    def _unexpected(self, what: str, response: httpx.Response) -> None:
        self.model.anomalies.append(f"{what}: {response.status_code} {response.text[:300]}")

    # --- money in --------------------------------------------------------------------

    async def purchase(self, user: str, rng: random.Random, n: int) -> None:
        code = rng.choice(sorted(CATALOG))
        paid_by = rng.choices(["sync", "async", "unpaid"], [60, 30, 10])[0]
        copies = [rng.randint(1, 3), rng.randint(1, 3)]
        order = seeded(rng.getrandbits(64))
        key = f"buy-{user}-{n}"
        created = await self._until_definitive(
            "purchase",
            lambda: self.http.post(
                f"{self.checkout}/api/purchases",
                json={"packageCode": code, "returnTo": "/chat"},
                headers={**self.tokens[user], "Idempotency-Key": key},
            ),
            patience_s=PURCHASE_PATIENCE_S,
        )
        if created is None:
            return
        if created.status_code != 201:
            return self._unexpected("POST /api/purchases", created)
        found = await self._sim_purchase(created.json()["purchaseId"])
        if found is None:
            return
        purchase = Purchase(found.purchase_id, user, code, paid_by)
        self.model.purchases.append(purchase)
        if (found.price_cents, found.package_code) != (purchase.price_cents, code):
            self.model.anomalies.append(f"purchase {found.purchase_id} terms differ: {found}")
        self.sent[found.purchase_id] = found
        task = asyncio.create_task(self._pay(purchase, found, copies, order))
        self.background.append(task)

    async def _sim_purchase(self, purchase_id: str) -> sim.SimPurchase | None:
        got = await self._purchase_body(purchase_id)
        return None if got is None else sim.SimPurchase.from_api(got)

    async def _purchase_body(self, purchase_id: str) -> dict[str, Any] | None:
        url = f"{self.checkout}/api/purchases/{purchase_id}"
        got = await self._until_definitive(
            "purchase-get", lambda: self.http.get(url, headers=self.admin)
        )
        if got is None or got.status_code != 200:
            return None
        body: dict[str, Any] = got.json()
        return body

    async def _pay(
        self, purchase: Purchase, p: sim.SimPurchase, copies: list[int], order: random.Random
    ) -> None:
        """The Checkout Session webhooks, each 1-3 times, shuffled, with seeded gaps."""
        paying: dict[str, Any] | None
        if purchase.paid_by == "sync":
            events = [paying := sim.session_completed(p)]
        else:
            events = [sim.session_completed(p, paid=False)]
            paying = sim.async_payment_succeeded(p) if purchase.paid_by == "async" else None
            events += [paying] if paying else []
        deliveries = [e for e, times in zip(events, copies, strict=False) for _ in range(times)]
        order.shuffle(deliveries)
        gaps = [order.uniform(0, 1.5) for _ in deliveries]
        for evt, gap in zip(deliveries, gaps, strict=True):
            await asyncio.sleep(gap)
            ok = await self._deliver(evt)
            if evt is paying:
                if ok:
                    purchase.payment = "confirmed"
                elif purchase.payment == "none":
                    purchase.payment = "unknown"

    async def _deliver(self, evt: dict[str, Any]) -> bool:
        """One webhook delivery, retried as Stripe retries until a 2xx; True once answered."""
        self.model.webhook_deliveries += 1
        got = await self._until_definitive(
            "webhook", lambda: sim.send(self.http, self.webhook_url, evt, self.secret)
        )
        if got is not None and not got.is_success:
            self._unexpected(f"webhook {evt['type']} {evt['id']}", got)
        return got is not None and got.is_success

    async def refund(self, user: str, rng: random.Random) -> None:
        """A full or partial refund of a granted purchase; sometimes an old one arrives late."""
        full, share, stale, copies = (
            rng.random() < 0.4,
            rng.random(),
            rng.random(),
            rng.randint(1, 2),
        )
        candidates = [
            x
            for x in self.model.purchases
            if x.user_id == user and x.payment == "confirmed" and x.refunded_cents < x.price_cents
        ]
        if not candidates:
            return
        purchase = candidates[int(share * len(candidates))]
        body = await self._purchase_body(purchase.purchase_id)
        if body is None or body["status"] not in GRANTED:
            return  # not granted yet: Stripe cannot refund a charge before it is paid
        before, price = purchase.refunded_cents, purchase.price_cents
        total = price if full else min(price, before + max(1, int(share * (price - before))))
        p = self.sent[purchase.purchase_id]
        for _ in range(copies):
            await self._refund_event(purchase, p, total, total - before)
        if stale < 0.4 and total - before >= 2:
            # An earlier, smaller refund whose event Stripe delivers only after this one.
            late = before + (total - before) // 2
            await self._refund_event(purchase, p, late, late - before)

    async def _refund_event(
        self, purchase: Purchase, p: sim.SimPurchase, total: int, refund: int
    ) -> None:
        evt = sim.charge_refunded(p, refunded_total_cents=total, refund_cents=refund)
        self.model.refund_events += 1
        if await self._deliver(evt):
            purchase.refunded_cents = max(purchase.refunded_cents, total)
        else:
            purchase.refunds_unknown.append(total)

    # --- money out -------------------------------------------------------------------

    async def chat(self, user: str, rng: random.Random, n: int, stream: bool) -> None:
        model = rng.choice(self.models)
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 40))]
        if rng.random() < 0.3:  # a slower model widens the window a kill can land in
            words.append(f"[[sleep={rng.uniform(0.1, 1.0):.2f}]]")
        body = {
            "model": model,
            "messages": [{"role": "user", "content": " ".join(words)}],
            "max_tokens": rng.randint(8, 64),
            "stream": stream,
        }
        charge = Charge("stream" if stream else "chat", user, f"chat-{user}-{n}")
        self.model.charges.append(charge)
        headers = {**self.tokens[user], "Idempotency-Key": charge.key}
        got = await self._until_definitive(
            "stream" if stream else "chat",
            lambda: self.http.post(f"{self.metering}/api/ai/chat", json=body, headers=headers),
            lambda r: billing_body(r) is not None,
        )
        self._settled(charge, got, "POST /api/ai/chat", {402, 423, 429})

    async def reconcile(self, user: str, rng: random.Random, n: int) -> None:
        body = {
            "userId": user,
            "model": rng.choice(self.models),
            "inputTokens": rng.randint(1, 3000),
            "outputTokens": rng.randint(0, 800),
            "idempotencyKey": f"rec-{user}-{n}",
        }
        charge = Charge("reconcile", user, str(body["idempotencyKey"]))
        self.model.charges.append(charge)
        got = await self._until_definitive(
            "reconcile",
            lambda: self.http.post(
                f"{self.metering}/api/usage/reconcile", json=body, headers=self.admin
            ),
        )
        self._settled(charge, got, "POST /api/usage/reconcile", {402})
        if got is not None and got.status_code == 200:
            charge.usage_id = got.json()["usageId"]

    def _settled(
        self, charge: Charge, got: httpx.Response | None, what: str, refusals: set[int]
    ) -> None:
        if got is None:
            charge.outcome = "unknown"
        elif got.status_code == 200:
            body = billing_body(got) or {}
            charge.outcome = "confirmed"
            charge.charged_millicredits = int(body["usage"]["chargedMillicredits"])
        elif got.status_code not in refusals:
            self._unexpected(what, got)

    async def adjust(self, user: str, rng: random.Random, n: int, amount: int) -> None:
        adj = Adjustment(user, f"adj-{user}-{n}-{rng.getrandbits(16)}", amount)
        self.model.adjustments.append(adj)
        body = {
            "userId": user,
            "amountMillicredits": amount,
            "reason": "chaos top-up",
            "referenceId": adj.key,
        }
        got = await self._until_definitive(
            "adjustment",
            lambda: self.http.post(
                f"{self.ledger}/api/admin/adjustments",
                json=body,
                headers={**self.admin, "Idempotency-Key": adj.key},
            ),
        )
        if got is None:
            adj.outcome = "unknown"
        elif got.status_code == 201:
            adj.outcome = "confirmed"
        else:
            self._unexpected("POST /api/admin/adjustments", got)
