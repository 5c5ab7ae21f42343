"""The service app factory: ops endpoints, error shape, ids and lifecycle."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from billing_platform.app import create_app, run_checks
from billing_platform.errors import ApiError
from billing_platform.settings import InfraSettings, ServiceSettings
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient


def _settings(**overrides: Any) -> ServiceSettings:
    return ServiceSettings(service_name="app-test", infra=InfraSettings(), **overrides)


def _router() -> APIRouter:
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @router.get("/conflict")
    async def conflict() -> None:
        raise ApiError(409, "conflict", "x", foo=1)

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret database password is hunter2")

    @router.get("/db-down")
    async def db_down() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    return router


def _client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with _client(create_app(_settings(), routers=[_router()])) as test_client:
        yield test_client


async def _ok() -> None:
    return None


async def _broken() -> None:
    raise RuntimeError("db down")


async def _hangs() -> None:
    await asyncio.sleep(30)


def test_health_is_ok(client: TestClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "app-test"}


def test_readyz_is_200_when_all_checks_pass() -> None:
    app = create_app(_settings(), checks={"db": _ok, "kafka": _ok})
    with _client(app) as client:
        response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"db": "ok", "kafka": "ok"}}


def test_readyz_is_503_naming_the_failing_check() -> None:
    app = create_app(_settings(), checks={"db": _broken, "kafka": _ok})
    with _client(app) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "checks": {"db": "error: RuntimeError", "kafka": "ok"},
    }


def test_readyz_reports_timeout_for_a_hanging_check() -> None:
    app = create_app(_settings(readiness_timeout_s=0.2), checks={"slow": _hangs, "db": _ok})
    with _client(app) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"] == {"slow": "timeout", "db": "ok"}


async def test_run_checks_runs_checks_concurrently() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()

    results = await run_checks({"a": _hangs, "b": _hangs, "c": _hangs}, 0.2)

    assert results == {"a": "timeout", "b": "timeout", "c": "timeout"}
    assert loop.time() - started < 0.55


def test_readyz_with_no_checks_is_ready(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {}}


def test_metrics_exposes_prometheus_text(client: TestClient) -> None:
    client.get("/items/1")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE http_requests_total counter" in response.text
    assert re.search(
        r'http_requests_total\{[^}]*route="/items/\{item_id\}"[^}]*status="200"[^}]*\} ',
        response.text,
    )


def test_unknown_route_is_404_not_found(client: TestClient) -> None:
    response = client.get("/does-not-exist")

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_wrong_method_is_405(client: TestClient) -> None:
    response = client.post("/health")

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_validation_error_is_422_with_details(client: TestClient) -> None:
    response = client.get("/items/not-a-number")

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["details"][0]["loc"] == ["path", "item_id"]


def test_api_error_is_rendered_with_its_status_and_extra_fields(client: TestClient) -> None:
    response = client.get("/conflict")

    assert response.status_code == 409
    assert response.json() == {"error": "conflict", "message": "x", "foo": 1}


def test_unexpected_exception_is_500_without_leaking_the_message(client: TestClient) -> None:
    response = client.get("/boom")

    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal error"}
    assert "hunter2" not in response.text


def test_a_dependency_down_is_503_to_retry_not_500(client: TestClient) -> None:
    response = client.get("/db-down")

    assert response.status_code == 503
    assert response.json()["error"] == "service_unavailable"
    assert response.headers["retry-after"] == "1"


def test_response_carries_fresh_request_and_correlation_ids(client: TestClient) -> None:
    first = client.get("/health")
    second = client.get("/health")

    rid = first.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    # Without an incoming correlation id, the request id is the correlation id.
    assert first.headers["x-correlation-id"] == rid
    assert second.headers["x-request-id"] != rid


def test_incoming_correlation_and_request_ids_are_echoed(client: TestClient) -> None:
    response = client.get(
        "/health", headers={"x-correlation-id": "corr-123", "x-request-id": "req-9"}
    )

    assert response.headers["x-correlation-id"] == "corr-123"
    assert response.headers["x-request-id"] == "req-9"


def test_error_responses_also_carry_ids(client: TestClient) -> None:
    response = client.get("/conflict", headers={"x-correlation-id": "corr-err"})

    assert response.headers["x-correlation-id"] == "corr-err"
    assert response.headers["x-request-id"]


def test_internal_error_response_carries_ids_and_is_counted(client: TestClient) -> None:
    response = client.get("/boom", headers={"x-correlation-id": "corr-500"})

    assert response.status_code == 500
    assert response.headers.get("x-correlation-id") == "corr-500"
    metrics = client.get("/metrics").text
    assert re.search(r'http_requests_total\{[^}]*route="/boom"[^}]*status="500"', metrics)


class _Part:
    def __init__(self, name: str, calls: list[str], fail_start: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fail_start = fail_start

    async def start(self) -> None:
        self.calls.append(f"start {self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def stop(self) -> None:
        self.calls.append(f"stop {self.name}")


def test_lifecycle_parts_start_in_order_and_stop_in_reverse() -> None:
    calls: list[str] = []
    parts = [_Part("db", calls), _Part("kafka", calls), _Part("consumer", calls)]
    app = create_app(_settings(), lifecycle=parts)

    with _client(app):
        assert calls == ["start db", "start kafka", "start consumer"]

    assert calls[3:] == ["stop consumer", "stop kafka", "stop db"]


def test_lifecycle_stops_only_started_parts_when_a_start_fails() -> None:
    calls: list[str] = []
    parts = [_Part("db", calls), _Part("kafka", calls, fail_start=True), _Part("c", calls)]
    app = create_app(_settings(), lifecycle=parts)

    with pytest.raises(RuntimeError, match="kafka cannot start"), _client(app):
        pass

    assert calls == ["start db", "start kafka", "stop db"]


# --- browser-facing: CORS allowlist and security headers ---------------------------------

WEB = "https://credits.example.com"


@pytest.fixture
def browser_client() -> Iterator[TestClient]:
    infra = InfraSettings(cors_allowed_origins=f"{WEB}, http://localhost:5173")
    settings = ServiceSettings(service_name="web-test", infra=infra)
    app = create_app(settings, routers=[_router()], browser_facing=True)
    with _client(app) as test_client:
        yield test_client


def _preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/items/1",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,idempotency-key",
        },
    )


def test_allowed_origin_gets_a_cors_grant(browser_client: TestClient) -> None:
    response = browser_client.get("/items/1", headers={"Origin": WEB})

    assert response.headers["access-control-allow-origin"] == WEB
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers


def test_allowed_origin_preflight_is_granted(browser_client: TestClient) -> None:
    response = _preflight(browser_client, WEB)

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == WEB
    assert "idempotency-key" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize("origin", ["https://evil.example.com", "null", f"{WEB}.evil.com"])
def test_disallowed_origin_gets_no_cors_grant(browser_client: TestClient, origin: str) -> None:
    simple = browser_client.get("/items/1", headers={"Origin": origin})
    preflight = _preflight(browser_client, origin)

    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 400


def test_a_service_that_is_not_browser_facing_grants_no_origin(client: TestClient) -> None:
    response = client.get("/items/1", headers={"Origin": WEB})

    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/items/1", "/nope", "/boom", "/health", "/items/x"])
def test_every_answer_carries_the_security_headers(browser_client: TestClient, path: str) -> None:
    headers = browser_client.get(path).headers

    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_preflight_answers_carry_the_security_headers(browser_client: TestClient) -> None:
    assert _preflight(browser_client, WEB).headers["x-content-type-options"] == "nosniff"
    assert _preflight(browser_client, "https://x.test").headers["x-frame-options"] == "DENY"


def test_no_html_docs_pages_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 200
