"""Seeded random mutations of Stripe deliveries against ``POST /webhooks/stripe``.

Bodies, signatures, timestamps, content types and sizes are mutated; every answer must be a
4xx, or a 2xx for a genuinely signed event, and afterwards exactly the genuinely signed
events are stored, in the outbox and on the namespace's ``stripe.events.v1``: nothing
unverified got in. webhook-ingest runs as its own process on a fresh schema and namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from billing_cli.stack import Stack
from billing_events.topics import Topics
from billing_platform.db import migrate_package

SEED = 20261126
ROUNDS = 12  # each round sends every mutation kind once
URL_PATH = "/webhooks/stripe"


@dataclass
class Delivery:
    kind: str
    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)
    # The Stripe event id a genuinely signed, well-formed delivery stores (None: refused).
    stores: str | None = None


def sign(body: bytes, secret: str, t: int | str) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def event_body(event_id: str, **changes: Any) -> bytes:
    event: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": f"cs_fuzz_{event_id[-12:]}", "object": "checkout.session"}},
    }
    return json.dumps({**event, **changes}).encode()


class Mutator:
    """Builds one delivery per mutation kind from a fresh event and the real secret."""

    def __init__(self, rng: random.Random, secret: str) -> None:
        self.rng = rng
        self.secret = secret

    def kinds(self) -> dict[str, Callable[[], Delivery]]:
        return {
            name.removeprefix("case_"): getattr(self, name)
            for name in sorted(dir(self))
            if name.startswith("case_")
        }

    def fresh(self) -> tuple[str, bytes, int]:
        event_id = f"evt_fuzz_{uuid.UUID(int=self.rng.getrandbits(128)).hex}"
        return event_id, event_body(event_id), int(time.time())

    def signed(self, kind: str, body: bytes, header: str, stores: str | None = None) -> Delivery:
        # As bytes: a mutated header may hold characters no HTTP client encodes by itself.
        headers = {b"Stripe-Signature": header.encode(), b"Content-Type": b"application/json"}
        return Delivery(kind, body, headers, stores)

    def flip_bit(self, data: bytes) -> bytes:
        at = self.rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << self.rng.randrange(8))]) + data[at + 1 :]

    # --- genuine: answered 2xx and stored ----------------------------------------------

    def case_genuine(self) -> Delivery:
        event_id, body, t = self.fresh()
        return self.signed("genuine", body, f"t={t},v1={sign(body, self.secret, t)}", event_id)

    def case_genuine_among_extra_v1(self) -> Delivery:
        event_id, body, t = self.fresh()
        good, bad = sign(body, self.secret, t), sign(body, "whsec_wrong", t)
        header = f"t={t},v1={bad},v1={good},v1={good},v0=00"
        return self.signed("genuine_among_extra_v1", body, header, event_id)

    def case_genuine_other_content_type(self) -> Delivery:
        event_id, body, t = self.fresh()
        delivery = self.case_genuine()
        delivery.body, delivery.stores = body, event_id
        delivery.headers[b"Stripe-Signature"] = f"t={t},v1={sign(body, self.secret, t)}".encode()
        delivery.headers[b"Content-Type"] = self.rng.choice(
            [b"text/plain", b"application/x-www-form-urlencoded", b"application/octet-stream"]
        )
        return delivery

    # --- body or signature changed after signing -----------------------------------------

    def case_body_bit_flip(self) -> Delivery:
        _, body, t = self.fresh()
        header = f"t={t},v1={sign(body, self.secret, t)}"
        return self.signed("body_bit_flip", self.flip_bit(body), header)

    def case_signature_bit_flip(self) -> Delivery:
        _, body, t = self.fresh()
        digest = bytes.fromhex(sign(body, self.secret, t))
        return self.signed("signature_bit_flip", body, f"t={t},v1={self.flip_bit(digest).hex()}")

    def case_wrong_secret(self) -> Delivery:
        _, body, t = self.fresh()
        secret = self.secret + self.rng.choice(["x", "0", " "])
        return self.signed("wrong_secret", body, f"t={t},v1={sign(body, secret, t)}")

    def case_only_wrong_v1_parts(self) -> Delivery:
        _, body, t = self.fresh()
        wrong = [sign(body, f"whsec_{i}", t) for i in range(self.rng.randrange(2, 6))]
        header = f"t={t}," + ",".join(f"v1={w}" for w in wrong)
        return self.signed("only_wrong_v1_parts", body, header)

    def case_v0_only(self) -> Delivery:
        _, body, t = self.fresh()
        return self.signed("v0_only", body, f"t={t},v0={sign(body, self.secret, t)}")

    def case_missing_t(self) -> Delivery:
        _, body, t = self.fresh()
        return self.signed("missing_t", body, f"v1={sign(body, self.secret, t)}")

    def case_signed_other_timestamp(self) -> Delivery:
        _, body, t = self.fresh()
        return self.signed(
            "signed_other_timestamp", body, f"t={t + 1},v1={sign(body, self.secret, t)}"
        )

    # --- timestamps -----------------------------------------------------------------------

    def case_stale(self) -> Delivery:
        _, body, now = self.fresh()
        t = now - self.rng.choice([301, 3600, 86_400 * 365, now])
        return self.signed("stale", body, f"t={t},v1={sign(body, self.secret, t)}")

    def case_future(self) -> Delivery:
        _, body, now = self.fresh()
        # Margin over the 300 s tolerance: deliveries are built before they are all sent.
        t = now + self.rng.choice([900, 3600, 10**10, 10**30])
        return self.signed("future", body, f"t={t},v1={sign(body, self.secret, t)}")

    def case_non_numeric_t(self) -> Delivery:
        _, body, now = self.fresh()
        t = self.rng.choice([f"{now}.5", f"-{now}", "", "abc", f"{now}x", "١٢٣", f" {now}e0"])
        return self.signed("non_numeric_t", body, f"t={t},v1={sign(body, self.secret, t)}")

    # --- headers, sizes, encodings ----------------------------------------------------------

    def case_no_signature_header(self) -> Delivery:
        _, body, _ = self.fresh()
        return Delivery("no_signature_header", body, {b"Content-Type": b"application/json"})

    def case_garbage_header(self) -> Delivery:
        _, body, _ = self.fresh()
        raw = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 120)))
        # Header values must be one line of visible bytes (or the client refuses to send).
        value = bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip() or b"\xff"
        return Delivery("garbage_header", body, {b"Stripe-Signature": value})

    def case_empty_body(self) -> Delivery:
        t = int(time.time())
        return self.signed("empty_body", b"", f"t={t},v1={sign(b'', self.secret, t)}")

    def case_huge_body(self) -> Delivery:
        body = b'{"id": "evt_huge", "pad": "' + b"x" * (1_048_576 + 10) + b'"}'
        t = int(time.time())
        return self.signed("huge_body", body, f"t={t},v1={sign(body, self.secret, t)}")

    def case_non_utf8_body(self) -> Delivery:
        _, body, t = self.fresh()
        body = body.replace(b"checkout", b"\xff\xfe\xc3(", 1)
        signed = self.rng.random() < 0.5  # genuinely signed or not, never stored
        header = f"t={t},v1={sign(body, self.secret if signed else 'whsec_x', t)}"
        return self.signed("non_utf8_body", body, header)

    def case_random_bytes_body(self) -> Delivery:
        body = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 4096)))
        t = int(time.time())
        return self.signed("random_bytes_body", body, f"t={t},v1={sign(body, self.secret, t)}")

    # --- genuinely signed, but not a Stripe event: 400, nothing stored ---------------------

    def case_signed_not_an_event(self) -> Delivery:
        event_id, _, t = self.fresh()
        body = self.rng.choice(
            [
                b"[]",
                b"null",
                b'"evt"',
                b"{",
                json.dumps({"id": event_id}).encode(),
                event_body(event_id, id=""),
                event_body(event_id, id=None),
                event_body(event_id, type=7),
                event_body(event_id, data=[]),
                event_body(event_id, created="yesterday"),
                event_body(event_id, created=-(2**63)),
                event_body(event_id, created=2**63),
                event_body(event_id, created=10**400),
                event_body(event_id, id=f"evt_\u0000{event_id}"),
                event_body(event_id, type="checkout.session.completed\u0000"),
                event_body(event_id, id="evt_" + "x" * 5000),
                event_body(event_id, data={"object": {"id": "cs_\u0000"}}),
            ]
        )
        return self.signed("signed_not_an_event", body, f"t={t},v1={sign(body, self.secret, t)}")


def deliveries(secret: str) -> list[Delivery]:
    mutator = Mutator(random.Random(SEED), secret)  # noqa: S311 (reproducible, not secret)
    kinds = mutator.kinds()
    return [make() for _ in range(ROUNDS) for make in kinds.values()]


async def stored_event_ids(dsn: str, schema: str) -> tuple[set[str], int, int]:
    """Stored event ids, outbox rows (waiting or published), and outbox rows waiting."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = {
            r["event_id"] for r in await conn.fetch(f"SELECT event_id FROM {schema}.stripe_events")
        }
        pending = await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox")
        published = await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox_published")
        outbox = pending + published
        return ids, outbox, pending
    finally:
        await conn.close()


def send_all(url: str, sent: list[Delivery]) -> list[str]:
    """Every answer that is neither a 4xx nor (for a genuine delivery) a 2xx."""
    wrong = []
    with httpx.Client(timeout=30) as http:
        for delivery in sent:
            answer = http.post(url, content=delivery.body, headers=delivery.headers)
            ok = answer.is_success if delivery.stores else answer.is_client_error
            if not ok:
                wrong.append(f"{delivery.kind}: {answer.status_code} {answer.text[:200]}")
    return wrong


async def test_only_genuinely_signed_deliveries_are_stored_and_published(
    stack: Stack, namespace: Topics, schema: str, run_service: Any, stripe_event_ids: Any
) -> None:
    await migrate_package(stack.postgres.dsn, schema, "webhook_ingest")
    sent = deliveries(stack.secrets["stripe_webhook_secret"])
    genuine = {d.stores for d in sent if d.stores}
    env = {"BILLING_TOPIC_NAMESPACE": namespace.namespace, "WEBHOOK_INGEST_DB_SCHEMA": schema}
    env["WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE"] = "1000000"
    with run_service("webhook_ingest", env) as ingest:
        wrong = await asyncio.to_thread(send_all, f"{ingest.url}{URL_PATH}", sent)
        assert not wrong, "\n".join(wrong)
        deadline = time.monotonic() + 30
        while (stored := await stored_event_ids(stack.postgres.dsn, schema))[2]:
            assert time.monotonic() < deadline, "the relay never published the outbox"
            await asyncio.sleep(0.2)
    ids, outbox_rows, _ = stored
    assert ids == genuine
    assert outbox_rows == len(genuine)
    published = await stripe_event_ids(stack.kafka.bootstrap, namespace.stripe_events)
    assert sorted(published) == sorted(genuine)
