"""Simulated Stripe deliveries: signatures, event shapes, and the ``billing stripe`` commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from billing_cli import keys, main
from billing_cli import stripe_sim as sim
from billing_cli.layout import Layout
from typer.testing import CliRunner

SECRET = "whsec_unit_test_secret"

PURCHASE_BODY: dict[str, Any] = {
    "purchaseId": "pur_123",
    "userId": "user-9",
    "packageCode": "starter",
    "priceCents": 1000,
    "currency": "USD",
    "status": "pending",
    "stripeSessionId": "cs_test_abc",
}


@pytest.fixture
def purchase() -> sim.SimPurchase:
    return sim.SimPurchase.from_api(PURCHASE_BODY)


def _verify(payload: bytes, header: str, secret: str = SECRET) -> None:
    # The SDK leaves its webhook helpers unannotated.
    stripe.WebhookSignature.verify_header(payload.decode(), header, secret, 300)  # type: ignore[no-untyped-call]


# --- signing -----------------------------------------------------------------------------------


def test_signature_is_accepted_by_the_official_sdk() -> None:
    payload = b'{"id":"evt_1","object":"event"}'

    _verify(payload, sim.sign(payload, SECRET))


def test_signature_rejects_a_tampered_payload() -> None:
    header = sim.sign(b'{"amount":1000}', SECRET)

    with pytest.raises(stripe.SignatureVerificationError):
        _verify(b'{"amount":9000}', header)


def test_signature_rejects_another_secret() -> None:
    header = sim.sign(b"{}", SECRET)

    with pytest.raises(stripe.SignatureVerificationError):
        _verify(b"{}", header, "whsec_other")


def test_signature_with_an_old_timestamp_is_stale_for_the_sdk() -> None:
    header = sim.sign(b"{}", SECRET, timestamp=int(time.time()) - 301)

    with pytest.raises(stripe.SignatureVerificationError):
        _verify(b"{}", header)


def test_signature_header_format_uses_the_given_timestamp() -> None:
    header = sim.sign(b"{}", SECRET, timestamp=1700000000)

    t, v1 = header.split(",")
    assert t == "t=1700000000"
    assert v1.startswith("v1=")
    assert len(v1) == len("v1=") + 64


# --- purchases and ids -------------------------------------------------------------------------


def test_purchase_from_the_checkout_api_body(purchase: sim.SimPurchase) -> None:
    assert purchase == sim.SimPurchase(
        purchase_id="pur_123",
        user_id="user-9",
        package_code="starter",
        price_cents=1000,
        currency="USD",
        stripe_session_id="cs_test_abc",
    )


def test_purchase_without_a_session_yet() -> None:
    body = {k: v for k, v in PURCHASE_BODY.items() if k != "stripeSessionId"}

    assert sim.SimPurchase.from_api(body).stripe_session_id is None
    assert sim.SimPurchase.from_api({**body, "stripeSessionId": None}).stripe_session_id is None


@pytest.mark.parametrize(
    ("derive", "prefix"),
    [(sim.payment_intent_id, "pi_sim_"), (sim.charge_id, "ch_sim_"), (sim.session_id, "cs_sim_")],
)
def test_ids_are_derived_from_the_purchase_id(
    derive: Callable[[sim.SimPurchase], str], prefix: str
) -> None:
    a = sim.SimPurchase("pur_a", "u", "starter", 1000, "usd")
    again = sim.SimPurchase("pur_a", "other-user", "pro", 5000, "eur")
    b = sim.SimPurchase("pur_b", "u", "starter", 1000, "usd")

    assert derive(a) == derive(again)
    assert derive(a) != derive(b)
    assert derive(a).startswith(prefix)
    assert len(derive(a)) == len(prefix) + 24
    int(derive(a)[len(prefix) :], 16)


def test_session_id_prefers_the_real_checkout_session(purchase: sim.SimPurchase) -> None:
    assert sim.session_id(purchase) == "cs_test_abc"


# --- event shapes ------------------------------------------------------------------------------


def test_event_envelope() -> None:
    evt = sim.event("ping", {"id": "x"}, event_id="evt_fixed", created=1700000000)

    assert evt == {
        "id": "evt_fixed",
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1700000000,
        "livemode": False,
        "type": "ping",
        "data": {"object": {"id": "x"}},
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
    }


def test_event_ids_are_fresh_by_default() -> None:
    first, second = sim.event("ping", {}), sim.event("ping", {})

    assert first["id"].startswith("evt_sim_")
    assert first["id"] != second["id"]
    assert abs(first["created"] - time.time()) < 5


def test_session_completed_is_a_paid_checkout_session(purchase: sim.SimPurchase) -> None:
    evt = sim.session_completed(purchase, event_id="evt_1", created=1700000000)
    session = evt["data"]["object"]

    assert (evt["type"], evt["id"], evt["created"]) == (
        "checkout.session.completed",
        "evt_1",
        1700000000,
    )
    assert session["id"] == "cs_test_abc"
    assert session["object"] == "checkout.session"
    assert (session["mode"], session["status"], session["payment_status"]) == (
        "payment",
        "complete",
        "paid",
    )
    assert session["amount_total"] == session["amount_subtotal"] == 1000
    assert session["currency"] == "usd"
    assert session["client_reference_id"] == "pur_123"
    assert session["metadata"] == {
        "purchase_id": "pur_123",
        "user_id": "user-9",
        "package_code": "starter",
    }
    assert session["payment_intent"] == sim.payment_intent_id(purchase)
    assert session["customer"] is None
    assert session["livemode"] is False


def test_session_completed_unpaid(purchase: sim.SimPurchase) -> None:
    evt = sim.session_completed(purchase, paid=False)

    assert evt["data"]["object"]["payment_status"] == "unpaid"


def test_async_payment_succeeded_names_the_same_session(purchase: sim.SimPurchase) -> None:
    completed = sim.session_completed(purchase, paid=False)
    succeeded = sim.async_payment_succeeded(purchase)

    assert succeeded["type"] == "checkout.session.async_payment_succeeded"
    assert succeeded["data"]["object"]["payment_status"] == "paid"
    assert succeeded["data"]["object"]["id"] == completed["data"]["object"]["id"]
    assert succeeded["id"] != completed["id"]


def test_sessions_with_another_amount(purchase: sim.SimPurchase) -> None:
    for session in (
        sim.checkout_session(purchase, amount_total=999),
        sim.session_completed(purchase, amount_total=999)["data"]["object"],
        sim.async_payment_succeeded(purchase, amount_total=999)["data"]["object"],
    ):
        assert session["amount_total"] == session["amount_subtotal"] == 999


def test_partial_refund_carries_the_cumulative_total(purchase: sim.SimPurchase) -> None:
    evt = sim.charge_refunded(purchase, refunded_total_cents=700, refund_cents=300)
    charge = evt["data"]["object"]

    assert evt["type"] == "charge.refunded"
    assert charge["id"] == sim.charge_id(purchase)
    assert charge["object"] == "charge"
    assert (charge["amount"], charge["amount_captured"]) == (1000, 1000)
    assert charge["amount_refunded"] == 700
    assert charge["refunded"] is False
    assert charge["currency"] == "usd"
    assert charge["payment_intent"] == sim.payment_intent_id(purchase)
    assert charge["metadata"] == {"purchase_id": "pur_123", "user_id": "user-9"}
    [refund] = charge["refunds"]["data"]
    assert charge["refunds"]["object"] == "list"
    assert refund["id"].startswith("re_sim_")
    assert (refund["object"], refund["amount"], refund["status"]) == ("refund", 300, "succeeded")
    assert refund["charge"] == charge["id"]


def test_full_refund_marks_the_charge_refunded(purchase: sim.SimPurchase) -> None:
    charge = sim.charge_refunded(purchase, refunded_total_cents=1000, refund_cents=1000)

    assert charge["data"]["object"]["refunded"] is True


def test_events_parse_with_the_official_sdk(purchase: sim.SimPurchase) -> None:
    for evt in (
        sim.session_completed(purchase),
        sim.charge_refunded(purchase, refunded_total_cents=1000, refund_cents=1000),
    ):
        payload = sim.encode(evt)
        header = sim.sign(payload, SECRET)
        parsed = stripe.Webhook.construct_event(payload.decode(), header, SECRET)  # type: ignore[no-untyped-call]

        assert parsed.id == evt["id"]
        assert parsed.type == evt["type"]
        assert parsed.data.object.id == evt["data"]["object"]["id"]


# --- sending -----------------------------------------------------------------------------------


class Recorder:
    """An in-memory webhook endpoint that checks signatures like webhook-ingest does."""

    def __init__(self, status: int = 200, secret: str = SECRET) -> None:
        self.status = status
        self.secret = secret
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        _verify(request.content, request.headers["Stripe-Signature"], self.secret)
        return httpx.Response(self.status, json={"received": True})

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


async def test_send_posts_compact_signed_json(purchase: sim.SimPurchase) -> None:
    recorder = Recorder()
    evt = sim.session_completed(purchase)

    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        response = await sim.send(client, "http://ingest/webhooks/stripe", evt, SECRET)

    assert response.status_code == 200
    [request] = recorder.requests
    assert request.url == "http://ingest/webhooks/stripe"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == json.dumps(evt, separators=(",", ":")).encode()


def test_send_sync_signs_with_the_given_timestamp(purchase: sim.SimPurchase) -> None:
    recorder = Recorder()
    now = int(time.time())

    with httpx.Client(transport=httpx.MockTransport(recorder)) as client:
        sim.send_sync(client, "http://ingest/x", sim.event("ping", {}), SECRET, timestamp=now)

    assert recorder.requests[0].headers["Stripe-Signature"].startswith(f"t={now},v1=")


# --- the CLI -----------------------------------------------------------------------------------


class FakeServices:
    """checkout's purchase read and webhook-ingest's endpoints; anything else is a 404."""

    def __init__(self, webhook_secret: str) -> None:
        self.ingest = Recorder(secret=webhook_secret)
        self.purchase = PURCHASE_BODY
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path == f"/api/purchases/{self.purchase['purchaseId']}":
            return httpx.Response(200, json=self.purchase)
        if path == "/webhooks/stripe":
            return self.ingest(request)
        if path == "/api/admin/webhooks/replay":
            known = json.loads(request.content)["eventId"] == "evt_known"
            return httpx.Response(202 if known else 404, json={"replayed": known})
        return httpx.Response(404, json={"error": "not_found"})


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeServices:
    layout = Layout("t", tmp_path)
    # The CLI signs with the stack's own secret, kept under the layout.
    fake = FakeServices(keys.ensure_secrets(layout)["stripe_webhook_secret"])
    monkeypatch.setattr(Layout, "selected", classmethod(lambda cls: layout))
    monkeypatch.setattr(main, "_http", lambda: httpx.Client(transport=httpx.MockTransport(fake)))
    return fake


runner = CliRunner(mix_stderr=False)


def test_help_lists_the_stripe_commands() -> None:
    result = runner.invoke(main.app, ["stripe", "--help"])

    assert result.exit_code == 0
    assert "simulate-payment" in result.stdout
    assert "simulate-refund" in result.stdout


def test_simulate_payment_sends_a_paid_session(services: FakeServices) -> None:
    result = runner.invoke(main.app, ["stripe", "simulate-payment", "pur_123"])

    assert result.exit_code == 0, result.stderr
    evt, charged = services.ingest.events
    assert evt["type"] == "checkout.session.completed"
    assert evt["data"]["object"]["payment_status"] == "paid"
    assert result.stdout.startswith(f"checkout.session.completed {evt['id']} 200 ")
    # The charge Stripe makes carries the receipt link checkout keeps for the history.
    assert charged["type"] == "charge.succeeded"
    charge = charged["data"]["object"]
    assert charge["metadata"]["purchase_id"] == "pur_123"
    assert charge["receipt_url"].startswith("https://pay.stripe.com/receipts/")
    assert charge["amount_refunded"] == 0
    purchase_read = services.seen[0]
    assert purchase_read.headers["Authorization"].startswith("Bearer ")


def test_simulate_async_payment_redelivers_each_event(services: FakeServices) -> None:
    result = runner.invoke(
        main.app, ["stripe", "simulate-payment", "pur_123", "--async-payment", "--times", "2"]
    )

    assert result.exit_code == 0, result.stderr
    events = services.ingest.events
    types = [(e["type"], e["data"]["object"].get("payment_status")) for e in events]
    assert types == [
        ("checkout.session.completed", "unpaid"),
        ("checkout.session.completed", "unpaid"),
        ("checkout.session.async_payment_succeeded", "paid"),
        ("checkout.session.async_payment_succeeded", "paid"),
        ("charge.succeeded", None),
        ("charge.succeeded", None),
    ]
    ids = [e["id"] for e in services.ingest.events]
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4] == ids[5]
    assert len(result.stdout.splitlines()) == 6


def test_simulate_payment_fails_on_a_rejected_delivery(services: FakeServices) -> None:
    services.ingest.status = 400

    result = runner.invoke(main.app, ["stripe", "simulate-payment", "pur_123", "--times", "3"])

    assert result.exit_code == 1
    assert len(services.ingest.requests) == 1
    assert "400" in result.stderr


def test_simulate_payment_of_an_unknown_purchase(services: FakeServices) -> None:
    result = runner.invoke(main.app, ["stripe", "simulate-payment", "pur_nope"])

    assert result.exit_code == 1
    assert "404" in result.stderr
    assert services.ingest.requests == []


def test_simulate_refund_defaults_to_the_full_price(services: FakeServices) -> None:
    result = runner.invoke(main.app, ["stripe", "simulate-refund", "pur_123"])

    assert result.exit_code == 0, result.stderr
    [evt] = services.ingest.events
    charge = evt["data"]["object"]
    assert evt["type"] == "charge.refunded"
    assert (charge["amount_refunded"], charge["refunded"]) == (1000, True)
    assert charge["refunds"]["data"][0]["amount"] == 1000


def test_simulate_refund_with_a_cumulative_total(services: FakeServices) -> None:
    result = runner.invoke(
        main.app, ["stripe", "simulate-refund", "pur_123", "--refunded-total", "250"]
    )

    assert result.exit_code == 0, result.stderr
    charge = services.ingest.events[0]["data"]["object"]
    assert (charge["amount_refunded"], charge["refunded"]) == (250, False)


def test_simulate_refund_beyond_the_price_is_refused(services: FakeServices) -> None:
    result = runner.invoke(
        main.app, ["stripe", "simulate-refund", "pur_123", "--refunded-total", "1001"]
    )

    assert result.exit_code == 1
    assert "exceeds" in result.stderr
    assert services.ingest.requests == []


def test_webhook_replay_posts_the_event_id(services: FakeServices) -> None:
    result = runner.invoke(main.app, ["webhook", "replay", "--event-id", "evt_known"])

    assert result.exit_code == 0, result.stderr
    request = services.seen[-1]
    assert request.method == "POST"
    assert json.loads(request.content) == {"eventId": "evt_known"}
    assert request.headers["Authorization"].startswith("Bearer ")
    assert result.stdout.startswith("202 ")


def test_webhook_replay_of_an_unknown_event_fails(services: FakeServices) -> None:
    result = runner.invoke(main.app, ["webhook", "replay", "--event-id", "evt_unknown"])

    assert result.exit_code == 1
    assert "404" in result.stderr
