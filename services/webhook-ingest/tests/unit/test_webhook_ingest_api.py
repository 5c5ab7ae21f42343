"""The HTTP routes, on the real app factory with a fake database and relay (no servers)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_events.topics import Topics
from billing_events.v1 import audit_pb2, stripe_pb2
from billing_platform.group_commit import GroupCommitter, Overloaded
from billing_platform.settings import InfraSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr
from webhook_ingest import api, service
from webhook_ingest.events import envelope_from_body
from webhook_ingest.main import web_app
from webhook_ingest.settings import Settings

NOW = 1_700_000_000
SECRET = "whsec_unittestsecret0001"
ISSUER, AUDIENCE = "test-issuer", "test-audience"
PAYLOAD_MARKER = "cus_private_marker_77"


class FakeConn:
    """Answers the service's few statements from memory, as PostgreSQL would."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[Any, ...]] = {}
        self.outbox: list[tuple[Any, ...]] = []

    async def fetch(self, sql: str, *columns: list[Any]) -> list[dict[str, Any]]:
        assert sql.startswith("INSERT INTO stripe_events"), sql
        inserted = []
        for row in zip(*columns, strict=True):
            if row[0] not in self.events:
                self.events[row[0]] = row
                inserted.append({"event_id": row[0]})
        return inserted

    async def execute(self, sql: str, *columns: list[Any]) -> None:
        assert sql.startswith("INSERT INTO outbox"), sql
        self.outbox.extend(zip(*columns, strict=True))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        assert sql.startswith("INSERT INTO outbox"), sql
        self.outbox.append(args)
        return len(self.outbox)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        assert sql.startswith("SELECT payload, received_at FROM stripe_events"), sql
        row = self.events.get(args[0])
        return {"payload": row[6], "received_at": row[8]} if row else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    def published(self, index: int) -> stripe_pb2.StripeEventReceived:
        return stripe_pb2.StripeEventReceived.FromString(self.outbox[index][2])


class FakeDb:
    def __init__(self) -> None:
        self.conn = FakeConn()
        self.acquired = 0

    @property
    def pool(self) -> FakeDb:
        return self

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConn]:
        self.acquired += 1
        yield self.conn


class FakeRelay:
    def __init__(self) -> None:
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


@dataclass
class Harness:
    client: TestClient
    db: FakeDb
    relay: FakeRelay


class AdminKey:
    def __init__(self, folder: Path) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_path = folder / "jwt-public.pem"
        self.public_path.write_bytes(
            self._private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def bearer(self, sub: str = "ops-1", roles: tuple[str, ...] = ("admin",)) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "roles": roles}
        return {"authorization": "Bearer " + jwt.encode(claims, self._private, "RS256")}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> AdminKey:
    return AdminKey(tmp_path_factory.mktemp("keys"))


@contextmanager
def running(key: AdminKey, **overrides: Any) -> Iterator[Harness]:
    infra = InfraSettings(
        stripe_webhook_secrets=[SecretStr(SECRET)],
        jwt_public_keys=[key.public_path],
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    settings = Settings(service_name="webhook-ingest-test", infra=infra, **overrides)
    db, relay = FakeDb(), FakeRelay()
    committer = GroupCommitter("test", db.acquire, service.store_deliveries)
    deps = api.Deps(
        db=db,
        topics=Topics(),
        relay=relay,
        settings=settings,
        committer=committer,
        clock=lambda: NOW,
    )
    app = web_app(settings, deps, lifecycle=[committer])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, db, relay)


@pytest.fixture
def harness(key: AdminKey) -> Iterator[Harness]:
    with running(key) as running_harness:
        yield running_harness


def stripe_body(event_id: str = "evt_1", object_id: str = "cs_test_1") -> bytes:
    event = {
        "id": event_id,
        "type": "checkout.session.completed",
        "created": NOW - 2,
        "livemode": False,
        "data": {"object": {"id": object_id, "customer": PAYLOAD_MARKER}},
    }
    return json.dumps(event).encode()


def signed(body: bytes, t: int = NOW, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"stripe-signature": f"t={t},v1={digest}", "content-type": "application/json"}


def deliver(h: Harness, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return h.client.post("/webhooks/stripe", content=body, headers=signed(body) | (headers or {}))


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("stripe_webhook_failures_total", {"reason": reason}) or 0.0


# --- deliveries that are stored ----------------------------------------------------------


def test_a_verified_event_is_stored_with_one_outbox_record(harness: Harness) -> None:
    response = deliver(harness, stripe_body(), {"x-correlation-id": "corr-hook-1"})

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    conn = harness.db.conn
    assert list(conn.events) == ["evt_1"]
    topic, key, _, headers = conn.outbox[0]
    assert (topic, key) == ("stripe.events.v1", b"cs_test_1")
    assert json.loads(headers)["correlation-id"] == "corr-hook-1"
    envelope = conn.published(0)
    assert envelope.payload == stripe_body()
    assert envelope.meta.correlation_id == "corr-hook-1"
    assert harness.relay.pokes == 1


def test_a_redelivery_answers_duplicate_and_writes_nothing_more(harness: Harness) -> None:
    deliver(harness, stripe_body())

    response = deliver(harness, stripe_body())

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": True}
    assert len(harness.db.conn.outbox) == 1


def test_events_of_one_object_share_a_key(harness: Harness) -> None:
    deliver(harness, stripe_body("evt_1", "pi_9"))
    deliver(harness, stripe_body("evt_2", "pi_9"))

    assert [row[1] for row in harness.db.conn.outbox] == [b"pi_9", b"pi_9"]


def test_counts_new_events_and_duplicates_by_type(harness: Harness) -> None:
    labels = {"event_type": "checkout.session.completed"}
    events = REGISTRY.get_sample_value("stripe_webhook_events_total", labels) or 0.0
    dupes = REGISTRY.get_sample_value("stripe_webhook_duplicates_total", labels) or 0.0

    deliver(harness, stripe_body("evt_m"))
    deliver(harness, stripe_body("evt_m"))

    assert REGISTRY.get_sample_value("stripe_webhook_events_total", labels) == events + 1
    assert REGISTRY.get_sample_value("stripe_webhook_duplicates_total", labels) == dupes + 1


async def test_in_one_batch_the_first_delivery_of_an_event_is_new_and_the_rest_duplicates() -> None:
    conn, topics = FakeConn(), Topics()
    stored_before = service.delivery(topics, envelope_from_body(stripe_body("evt_0")))
    await service.store_deliveries(conn, [stored_before])
    bodies = [stripe_body(e) for e in ("evt_a", "evt_b", "evt_a", "evt_0", "evt_b")]
    batch = [service.delivery(topics, envelope_from_body(b)) for b in bodies]

    new = await service.store_deliveries(conn, batch)

    assert new == [True, True, False, False, False]
    assert list(conn.events) == ["evt_0", "evt_a", "evt_b"]
    assert [conn.published(i).stripe_event_id for i in range(3)] == ["evt_0", "evt_a", "evt_b"]


class ShedEverything:
    async def submit(self, item: service.Delivery) -> bool:
        raise Overloaded("queue full")


def test_a_full_queue_answers_503_overloaded_with_retry_after(key: AdminKey) -> None:
    before = failures("overloaded")
    infra = InfraSettings(stripe_webhook_secrets=[SecretStr(SECRET)])
    settings = Settings(service_name="webhook-ingest-test", infra=infra)
    deps = api.Deps(
        db=FakeDb(),
        topics=Topics(),
        relay=FakeRelay(),
        settings=settings,
        committer=ShedEverything(),
        clock=lambda: NOW,
    )
    with TestClient(web_app(settings, deps)) as client:
        body = stripe_body()
        response = client.post("/webhooks/stripe", content=body, headers=signed(body))

    assert response.status_code == 503
    assert response.json()["error"] == "overloaded"
    assert response.headers["retry-after"] == "1"
    assert failures("overloaded") == before + 1


# --- deliveries that are refused before the database -------------------------------------


def _assert_refused(h: Harness, response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.json()["error"] == code
    assert h.db.acquired == 0
    assert h.relay.pokes == 0


def test_an_empty_body_is_400(harness: Harness) -> None:
    response = deliver(harness, b"")

    _assert_refused(harness, response, 400, "empty_body")


def test_a_body_over_the_limit_is_413(key: AdminKey) -> None:
    with running(key, max_body_bytes=64) as h:
        response = deliver(h, stripe_body())

        _assert_refused(h, response, 413, "payload_too_large")


def test_a_missing_signature_is_400(harness: Harness) -> None:
    response = harness.client.post("/webhooks/stripe", content=stripe_body())

    _assert_refused(harness, response, 400, "missing_signature")


def test_a_bad_signature_is_400_and_counted(harness: Harness) -> None:
    before = failures("invalid_signature")
    body = stripe_body()

    response = harness.client.post(
        "/webhooks/stripe", content=body, headers=signed(body, secret="whsec_wrongsecret99")
    )

    _assert_refused(harness, response, 400, "invalid_signature")
    assert failures("invalid_signature") == before + 1


def test_a_tampered_body_is_400(harness: Harness) -> None:
    headers = signed(stripe_body())

    response = harness.client.post(
        "/webhooks/stripe", content=stripe_body(object_id="cs_other"), headers=headers
    )

    _assert_refused(harness, response, 400, "invalid_signature")


def test_a_stale_signature_is_400(harness: Harness) -> None:
    body = stripe_body()

    response = harness.client.post(
        "/webhooks/stripe", content=body, headers=signed(body, NOW - 301)
    )

    _assert_refused(harness, response, 400, "stale_signature")


def test_malformed_json_with_a_valid_signature_is_400(harness: Harness) -> None:
    response = deliver(harness, b'{"id": "evt_1", "type": ')

    _assert_refused(harness, response, 400, "malformed_payload")


def test_over_the_rate_limit_is_429(key: AdminKey) -> None:
    before = failures("rate_limited")
    with running(key, rate_limit_per_minute=2) as h:
        statuses = [deliver(h, stripe_body(f"evt_{i}")).status_code for i in range(3)]
        response = deliver(h, stripe_body("evt_last"))

    assert statuses == [200, 200, 429]
    assert response.json()["error"] == "rate_limited"
    assert "retry-after" in response.headers
    assert failures("rate_limited") == before + 2


def test_logs_name_the_event_but_never_the_payload_or_secret(
    key: AdminKey, capsys: pytest.CaptureFixture[str]
) -> None:
    with running(key) as h:
        deliver(h, stripe_body("evt_logged"))
        deliver(h, b"not json at all")
    out = capsys.readouterr().out

    assert "evt_logged" in out
    assert "malformed_payload" in out
    assert PAYLOAD_MARKER not in out
    assert "not json at all" not in out
    assert SECRET not in out


# --- admin replay ------------------------------------------------------------------------


def _replay(h: Harness, key: AdminKey, event_id: str, **bearer: Any) -> Any:
    return h.client.post(
        "/api/admin/webhooks/replay",
        json={"eventId": event_id},
        headers=key.bearer(**bearer) | {"x-correlation-id": "corr-replay"},
    )


def test_replay_writes_the_stored_event_to_the_outbox_again(
    harness: Harness, key: AdminKey
) -> None:
    deliver(harness, stripe_body())

    response = _replay(harness, key, "evt_1")

    assert response.status_code == 202
    assert response.json() == {"eventId": "evt_1", "replayed": True}
    conn = harness.db.conn
    first, again = conn.published(0), conn.published(1)
    assert again.payload == first.payload
    assert again.meta.event_id != first.meta.event_id
    assert again.meta.correlation_id == "corr-replay"
    assert again.received_at == first.received_at
    assert conn.outbox[1][1] == b"cs_test_1"
    assert harness.relay.pokes == 2


def test_replay_is_recorded_in_the_audit_trail_with_the_replay(
    harness: Harness, key: AdminKey
) -> None:
    deliver(harness, stripe_body())

    response = harness.client.post(
        "/api/admin/webhooks/replay",
        json={"eventId": "evt_1", "reason": "ledger was down"},
        headers=key.bearer(sub="ops-9") | {"x-correlation-id": "corr-audit"},
    )

    assert response.status_code == 202
    topic, record_key, payload, _ = harness.db.conn.outbox[2]
    record = audit_pb2.AdminActionRecorded.FromString(payload)
    assert topic == "billing.audit.v1"
    assert record_key == b"stripe_event:evt_1"
    assert (record.actor, record.action, record.target) == (
        "ops-9",
        "webhook_replay",
        "stripe_event:evt_1",
    )
    assert record.reason == "ledger was down"
    assert record.meta.correlation_id == "corr-audit"
    assert record.meta.producer == "webhook-ingest-test"  # the settings' service name


def test_replay_of_an_unknown_event_is_404(harness: Harness, key: AdminKey) -> None:
    response = _replay(harness, key, "evt_missing")

    assert response.status_code == 404
    assert response.json()["error"] == "event_not_found"
    assert harness.db.conn.outbox == []


def test_replay_needs_the_admin_role(harness: Harness, key: AdminKey) -> None:
    assert _replay(harness, key, "evt_1", roles=("service",)).status_code == 403
    anonymous = harness.client.post("/api/admin/webhooks/replay", json={"eventId": "evt_1"})
    assert anonymous.status_code == 401


def test_replay_without_an_event_id_is_422(harness: Harness, key: AdminKey) -> None:
    response = harness.client.post("/api/admin/webhooks/replay", json={}, headers=key.bearer())

    assert response.status_code == 422


@pytest.mark.parametrize("event_id", ["evt_\u0000", "evt_" + "x" * 300])
def test_replay_of_an_event_id_no_event_can_have_is_422(
    harness: Harness, key: AdminKey, event_id: str
) -> None:
    response = _replay(harness, key, event_id)

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert harness.db.conn.outbox == []


def test_a_signed_event_with_a_nul_in_its_id_is_400_and_stores_nothing(harness: Harness) -> None:
    body = stripe_body(event_id="evt_\u0000")

    response = deliver(harness, body)

    _assert_refused(harness, response, 400, "malformed_payload")
