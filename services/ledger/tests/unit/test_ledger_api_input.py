"""Input the ledger API refuses with a 422 before any database work (found by fuzzing).

The app is built with a database that is never started: an answer here comes from the
request's validation, never from PostgreSQL refusing a value.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
import stripe
from billing_events.topics import Topics
from billing_platform.app import create_app
from billing_platform.db import Database
from billing_platform.settings import InfraSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from ledger import api, audit_api, service
from ledger.settings import Settings

ISSUER, AUDIENCE = "ledger-test", "billing-test"
ADJUSTMENT = {
    "userId": "alice",
    "amountMillicredits": 1000,
    "reason": "goodwill",
    "referenceId": "r1",
}


class Keys:
    def __init__(self, folder: Path) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_path = folder / "public.pem"
        self.public_path.write_bytes(
            self._private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def admin(self) -> dict[str, str]:
        now = int(time.time())
        claims = {
            "sub": "ops",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": now + 300,
            "roles": ["admin"],
            "amr": ["pwd", "otp"],
            "auth_time": now,
        }
        return {"Authorization": f"Bearer {jwt.encode(claims, self._private, algorithm='RS256')}"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt"))


@pytest.fixture
def client(keys: Keys) -> TestClient:
    infra = InfraSettings(
        jwt_public_keys=[keys.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    settings = Settings(infra=infra)
    db = Database("postgresql://unused@127.0.0.1:1/unused", settings.db_schema)  # not started
    deps = api.ApiDeps(
        db=db,
        ctx=service.LedgerContext(Topics(), "checkout", 30.0),
        stripe=stripe.StripeClient("sk_test_unused"),
    )
    app = create_app(settings, routers=[api.router(deps), audit_api.router(db)])
    return TestClient(app, raise_server_exceptions=False)


def refused(response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize("amount", [2**63, -(2**63) - 1, 10**12 + 1, -(10**12) - 1])
def test_an_adjustment_beyond_the_maximum_is_422(
    client: TestClient, keys: Keys, amount: int
) -> None:
    body = {**ADJUSTMENT, "amountMillicredits": amount}

    refused(client.post("/api/admin/adjustments", json=body, headers=keys.admin()))


@pytest.mark.parametrize("field", ["userId", "reason", "referenceId"])
def test_an_adjustment_with_a_nul_in_its_text_is_422(
    client: TestClient, keys: Keys, field: str
) -> None:
    body = {**ADJUSTMENT, field: "goodwill\x00"}

    refused(client.post("/api/admin/adjustments", json=body, headers=keys.admin()))


@pytest.mark.parametrize(
    "path", ["/api/balance", "/api/ledger", "/api/ledger/export.csv", "/api/statements/2026-11.csv"]
)
def test_a_user_id_query_with_a_nul_is_422(client: TestClient, keys: Keys, path: str) -> None:
    refused(client.get(path, params={"userId": "bob\x00"}, headers=keys.admin()))


@pytest.mark.parametrize("user", ["Ö^\x06", "\U00091a98", 'a"b\r\nSet-Cookie: x=1', "ユーザー"])
def test_a_download_name_from_any_user_id_is_a_valid_header(user: str) -> None:
    header = api.attachment(f"ledger-{user}.csv")

    header.encode("latin-1")  # what an HTTP/1.1 header may carry
    assert all(0x20 <= ord(c) < 0x7F for c in header)
    fallback, exact = header.split("; filename*=UTF-8''")
    assert fallback.startswith('attachment; filename="ledger-')
    assert exact.endswith(".csv")
    assert unquote(exact) == f"ledger-{user}.csv"


def test_a_plain_user_id_keeps_its_download_name() -> None:
    assert api.attachment("ledger-alice.csv") == (
        "attachment; filename=\"ledger-alice.csv\"; filename*=UTF-8''ledger-alice.csv"
    )


@pytest.mark.parametrize("param", ["action", "actor", "target", "userId", "correlationId"])
def test_an_audit_filter_with_a_nul_is_422(client: TestClient, keys: Keys, param: str) -> None:
    refused(client.get("/api/admin/audit", params={param: "x\x00"}, headers=keys.admin()))
