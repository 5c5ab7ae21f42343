"""The HTTP routes on the real app factory, with the runs stubbed (no database, no broker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_platform.app import create_app
from billing_platform.errors import ApiError
from billing_platform.settings import InfraSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from reconciler import api
from reconciler.period import Period
from reconciler.runs import RunRequest, build_record, request_hash, run_body
from reconciler.service import Answer
from reconciler.settings import Settings

ISSUER, AUDIENCE = "test-issuer", "test-audience"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class FakeRuns:
    """Keeps answers by Idempotency-Key as the service does (same body replays, other 409)."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []
        self.by_key: dict[str, tuple[str, Answer]] = {}
        self.latest_body: dict[str, Any] | None = None

    async def run(self, request: RunRequest) -> Answer:
        key = request.idempotency_key
        if key in self.by_key:
            stored_hash, answer = self.by_key[key]
            if stored_hash != request.request_hash:
                raise ApiError(409, "idempotency_key_reused", "other body")
            return Answer(answer.body, True, answer.record)
        self.requests.append(request)
        record = build_record(f"run-{len(self.requests)}", request.period, NOW, NOW, [], 0, None)
        answer = Answer(run_body(record), False, record)
        if key is not None:
            self.by_key[key] = (request.request_hash, answer)
        self.latest_body = answer.body
        return answer

    async def latest(self) -> dict[str, Any] | None:
        return self.latest_body


class Keys:
    def __init__(self, folder: Path) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_path = folder / "jwt-public.pem"
        self.public_path.write_bytes(
            self._private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def bearer(self, roles: tuple[str, ...] = ("admin",)) -> dict[str, str]:
        claims = {
            "sub": "ops-1",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(time.time()) + 300,
            "roles": list(roles),
        }
        return {"authorization": "Bearer " + jwt.encode(claims, self._private, "RS256")}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def runs() -> FakeRuns:
    return FakeRuns()


@pytest.fixture
def client(keys: Keys, runs: FakeRuns) -> Iterator[TestClient]:
    infra = InfraSettings(
        jwt_public_keys=[keys.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    settings = Settings(service_name="reconciler-test", infra=infra)
    app = create_app(settings, routers=[api.router(api.Deps(runs, clock=lambda: NOW))])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_run_needs_a_token_and_the_admin_role(client: TestClient, keys: Keys) -> None:
    assert client.post("/api/admin/reconcile").status_code == 401
    forbidden = client.post("/api/admin/reconcile", headers=keys.bearer(roles=()))
    assert forbidden.status_code == 403
    assert client.get("/api/admin/reconciliation/latest").status_code == 401


def test_without_a_body_yesterday_is_reconciled(
    client: TestClient, keys: Keys, runs: FakeRuns
) -> None:
    response = client.post("/api/admin/reconcile", headers=keys.bearer())

    assert response.status_code == 200
    assert response.json()["period"] == {
        "from": "2025-02-28T00:00:00Z",
        "to": "2025-03-01T00:00:00Z",
    }
    [request] = runs.requests
    assert (request.trigger, request.requested_by, request.date_text) == ("api", "ops-1", None)


def test_a_date_names_the_day(client: TestClient, keys: Keys, runs: FakeRuns) -> None:
    client.post("/api/admin/reconcile", headers=keys.bearer(), json={"date": "2025-01-15"})

    assert runs.requests[0].period == Period(date(2025, 1, 15))


@pytest.mark.parametrize("day", ["2025-02-30", "15/01/2025", "2025-03-02"])
def test_a_bad_or_future_date_is_422(client: TestClient, keys: Keys, day: str) -> None:
    response = client.post("/api/admin/reconcile", headers=keys.bearer(), json={"date": day})

    assert response.status_code == 422
    assert response.json()["error"] in {"invalid_date", "validation_error"}


def test_unknown_fields_are_refused(client: TestClient, keys: Keys) -> None:
    body = {"date": "2025-01-15", "amount": 5}

    response = client.post("/api/admin/reconcile", headers=keys.bearer(), json=body)

    assert response.status_code == 422


def test_the_same_key_replays_the_stored_run(
    client: TestClient, keys: Keys, runs: FakeRuns
) -> None:
    headers = keys.bearer() | {"Idempotency-Key": "daily-1"}
    first = client.post("/api/admin/reconcile", headers=headers, json={"date": "2025-01-15"})

    again = client.post("/api/admin/reconcile", headers=headers, json={"date": "2025-01-15"})

    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(runs.requests) == 1
    assert runs.requests[0].request_hash == request_hash("2025-01-15")


def test_the_same_key_with_another_body_is_409(client: TestClient, keys: Keys) -> None:
    headers = keys.bearer() | {"Idempotency-Key": "daily-2"}
    client.post("/api/admin/reconcile", headers=headers, json={"date": "2025-01-15"})

    response = client.post("/api/admin/reconcile", headers=headers, json={"date": "2025-01-16"})

    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"


def test_an_overlong_key_is_422(client: TestClient, keys: Keys) -> None:
    headers = keys.bearer() | {"Idempotency-Key": "k" * 256}

    response = client.post("/api/admin/reconcile", headers=headers)

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_idempotency_key"


def test_latest_is_404_until_a_run_finished(client: TestClient, keys: Keys) -> None:
    response = client.get("/api/admin/reconciliation/latest", headers=keys.bearer())

    assert response.status_code == 404
    assert response.json()["error"] == "no_runs"


def test_latest_answers_the_last_run(client: TestClient, keys: Keys) -> None:
    run = client.post("/api/admin/reconcile", headers=keys.bearer()).json()

    response = client.get("/api/admin/reconciliation/latest", headers=keys.bearer())

    assert response.status_code == 200
    assert response.json() == run


def test_the_run_body_is_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    run = spec["components"]["schemas"]["RunOut"]["properties"]

    assert {"runId", "period", "status", "checks", "findings", "stripeApiSessionsSeen"} <= set(run)
