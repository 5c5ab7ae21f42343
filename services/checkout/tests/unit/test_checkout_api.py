"""Routes of the checkout API that answer before touching the database or Stripe.

The app is built with a database that is never started and a Stripe gateway that fails
the test if called, so each answer here is proven to come from the checks in front.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_events import wiring
from billing_events.kafka import KafkaPublisher
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.ratelimit import SlidingWindowLimiter
from billing_platform.settings import InfraSettings, ServiceSettings
from checkout import api
from checkout.idempotency import IdempotencyKeys
from checkout.main import create_app
from checkout.repository import NewPurchase
from checkout.service import PurchaseService
from checkout.settings import Settings
from checkout.stripe_checkout import CheckoutSession
from checkout.switches import SwitchValues, defaults_from
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient

ISSUER = "checkout-test"
AUDIENCE = "billing-test"


class _NoStripe:
    async def create(
        self, purchase: NewPurchase, success_url: str, cancel_url: str
    ) -> CheckoutSession:
        raise AssertionError("Stripe must not be called")


class _SwitchesFromSettings:
    """The switch values read from the settings on every call (there is no database)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def current(self) -> SwitchValues:
        return defaults_from(self._settings)


class Keys:
    def __init__(self, folder: Path) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_path = folder / "public.pem"
        self.public_path.write_bytes(public)

    def headers(self, user: str = "alice", **extra: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        token = jwt.encode(claims, self._private, algorithm="RS256")
        return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt"))


def _settings(keys: Keys, **overrides: Any) -> Settings:
    infra = InfraSettings(
        jwt_public_keys=[keys.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    return Settings(infra=infra, **overrides)


def _app(settings: Settings) -> FastAPI:
    db = Database("postgresql://unused@127.0.0.1:1/unused", settings.db_schema)  # not started
    routes = api.router(
        PurchaseService(db, _NoStripe(), settings.public_base_url),
        IdempotencyKeys(db),
        limiter=SlidingWindowLimiter(settings.purchase_rate_limit_per_minute, 60.0),
        switches=_SwitchesFromSettings(settings),
    )
    return build_app(settings, routers=[routes])


@pytest.fixture
def settings(keys: Keys) -> Settings:
    return _settings(keys)


@pytest.fixture
def client(settings: Settings) -> TestClient:
    return TestClient(_app(settings), raise_server_exceptions=False)


def test_packages_need_no_token(client: TestClient) -> None:
    response = client.get("/api/packages")

    assert response.status_code == 200
    packages = response.json()
    assert [p["code"] for p in packages] == [
        "starter",
        "growth",
        "professional",
        "business",
        "enterprise",
    ]
    assert packages[0] == {
        "code": "starter",
        "name": "Starter",
        "priceCents": 999,
        "currency": "usd",
        "credits": 9990,
        "bonusCredits": 0,
    }


def test_purchase_needs_a_token(client: TestClient) -> None:
    response = client.post("/api/purchases", json={"packageCode": "starter"})

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_reading_a_purchase_needs_a_token(client: TestClient) -> None:
    assert client.get("/api/purchases/p-1").status_code == 401


def test_unknown_package_is_422_listing_the_known_ones(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/api/purchases",
        json={"packageCode": "platinum", "amount": 1},
        headers=keys.headers(),
    )

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "unknown_package"
    assert body["knownPackages"] == ["starter", "growth", "professional", "business", "enterprise"]


@pytest.mark.parametrize("return_to", ["https://evil.example", "//evil.example", "/a\\b", ""])
def test_foreign_return_to_is_422(client: TestClient, keys: Keys, return_to: str) -> None:
    response = client.post(
        "/api/purchases",
        json={"packageCode": "starter", "returnTo": return_to},
        headers=keys.headers(),
    )

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_return_to"


def test_missing_package_code_is_a_validation_error(client: TestClient, keys: Keys) -> None:
    response = client.post("/api/purchases", json={"returnTo": "/"}, headers=keys.headers())

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


def test_overlong_idempotency_key_is_422(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/api/purchases",
        json={"packageCode": "starter"},
        headers=keys.headers(**{"Idempotency-Key": "k" * 300}),
    )

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_idempotency_key"


def test_disabled_purchases_are_503_before_the_package_check(
    client: TestClient, settings: Settings, keys: Keys
) -> None:
    settings.purchases_enabled = False  # read on every request: no restart needed

    response = client.post("/api/purchases", json={"packageCode": "nope"}, headers=keys.headers())

    assert response.status_code == 503
    assert response.json()["error"] == "purchases_disabled"
    settings.purchases_enabled = True
    again = client.post("/api/purchases", json={"packageCode": "nope"}, headers=keys.headers())
    assert again.status_code == 422


def test_rate_limit_per_ip_comes_first(keys: Keys) -> None:
    settings = _settings(keys, purchase_rate_limit_per_minute=2, purchases_enabled=False)
    client = TestClient(_app(settings), raise_server_exceptions=False)

    statuses = [
        client.post("/api/purchases", json={"packageCode": "starter"}).status_code for _ in range(3)
    ]

    assert statuses == [401, 401, 429]
    limited = client.post("/api/purchases", json={"packageCode": "starter"})
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


def test_packages_are_not_rate_limited(keys: Keys) -> None:
    client = TestClient(_app(_settings(keys, purchase_rate_limit_per_minute=1)))
    assert {client.get("/api/packages").status_code for _ in range(5)} == {200}


async def test_service_wiring_builds(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[KafkaPublisher] = []

    def publisher_for(s: ServiceSettings) -> KafkaPublisher:
        made.append(KafkaPublisher(s.infra.kafka_bootstrap, client_id=s.service_name))
        return made[-1]

    monkeypatch.setattr(wiring, "publisher_for", publisher_for)
    app = create_app(settings)  # inside a running loop: the Kafka client needs one
    for publisher in made:
        await publisher.stop()  # never started; closes its client

    assert len(made) == 1
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {"/api/packages", "/api/purchases", "/api/purchases/{purchase_id}"} <= paths
    assert {"/api/v1/meta/features", "/api/admin/features"} <= paths


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert {"/api/packages", "/api/purchases", "/api/purchases/{purchase_id}"} <= set(paths)
    header = paths["/api/purchases"]["post"]["parameters"][0]
    assert header["name"] == "Idempotency-Key"


def test_a_purchase_id_with_a_nul_is_422_before_the_database(
    client: TestClient, keys: Keys
) -> None:
    response = client.get("/api/purchases/p%00", headers=keys.headers())

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
