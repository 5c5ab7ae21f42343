"""The HTTP API on the real app factory, with fake ledger, model and store (no servers)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]}
KNOWN = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini"]


def post_chat(
    app: Any, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Any:
    return app.client.post(
        "/api/ai/chat", json=body or CHAT, headers=app.keys.headers(**(headers or {}))
    )


def overhead_ms(response: Any) -> float:
    return float(response.headers["x-billing-overhead-ms"])


# --- rate card ---------------------------------------------------------------------------


def test_the_rate_card_lists_models_with_decimal_strings(app: Any) -> None:
    response = app.client.get("/api/rate-card", headers=app.keys.headers())

    assert response.status_code == 200
    card = response.json()
    assert (card["version"], card["effectiveFrom"], card["defaultMarkup"]) == (
        "2026-11-01",
        "2026-11-01",
        "4",
    )
    assert card["models"][0] == {
        "model": "gpt-4o",
        "inputUsdPer1M": "5.00",
        "outputUsdPer1M": "15.00",
        "markup": "4",
    }
    assert [m["model"] for m in card["models"]] == KNOWN


def test_the_rate_card_needs_a_token(app: Any) -> None:
    assert app.client.get("/api/rate-card").status_code == 401


# --- chat --------------------------------------------------------------------------------


def test_a_chat_answers_the_completion_with_usage_and_balance(app: Any) -> None:
    response = post_chat(app)

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "chatcmpl-fake1"
    assert body["message"]["content"] == "hello there"
    assert body["usage"] == {
        "inputTokens": 1000,
        "outputTokens": 500,
        "chargedMillicredits": 50_000,
    }
    assert body["balance"]["balanceCredits"] == "9950.000"
    assert overhead_ms(response) >= 0


def test_a_charged_call_is_one_access_line_with_its_usage(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        post_chat(app)

    lines = [r for r in caplog.records if r.name == "billing_platform.app"]
    [access] = [r for r in lines if r.getMessage() == "request"]
    fields = access.__dict__
    assert (fields["route"], fields["status"], fields["model"]) == ("/api/ai/chat", 200, "gpt-4o")
    assert (fields["charged_millicredits"], fields["billing_mode"]) == (50_000, "charged")
    assert fields["usage_id"]
    assert not [r for r in caplog.records if r.getMessage() == "usage recorded"]


def test_the_overhead_leaves_out_the_model_call(app: Any) -> None:
    app.parts.model.delay_s = 0.3
    before = REGISTRY.get_sample_value("billing_gateway_overhead_seconds_count") or 0.0

    response = post_chat(app)

    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.3
    assert 0 <= overhead_ms(response) < 200
    assert REGISTRY.get_sample_value("billing_gateway_overhead_seconds_count") == before + 1


def test_unknown_model_is_422_with_the_known_models(app: Any) -> None:
    response = post_chat(app, {**CHAT, "model": "gpt-9"})

    assert response.status_code == 422
    assert response.json() == {
        "error": "unknown_model",
        "message": "unknown model: gpt-9",
        "knownModels": KNOWN,
    }
    assert "x-billing-overhead-ms" in response.headers


def test_max_tokens_over_the_cap_is_422(app: Any) -> None:
    response = post_chat(app, {**CHAT, "max_tokens": 5000})

    assert response.status_code == 422
    assert response.json()["error"] == "max_tokens_too_large"


def test_the_402_body_is_exactly_the_contract_and_carries_the_overhead(app: Any) -> None:
    app.parts.ledger.balances["alice"] = 2_500

    response = post_chat(app, {**CHAT, "returnTo": "/chat/42"})

    assert response.status_code == 402
    body = response.json()
    assert list(body) == [
        "error",
        "message",
        "requiredCredits",
        "currentCredits",
        "requiredMillicredits",
        "currentMillicredits",
        "returnTo",
    ]
    assert body["error"] == "insufficient_credits"
    assert (body["currentCredits"], body["currentMillicredits"]) == ("2.500", 2_500)
    assert body["returnTo"] == "/credits?returnTo=%2Fchat%2F42"
    assert "x-billing-overhead-ms" in response.headers


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"model": "gpt-4o", "messages": []}, True, 422),
        ({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}, True, 422),
        (CHAT, False, 401),
    ],
)
def test_refusals_before_the_gateway_carry_the_overhead_too(
    app: Any, body: dict[str, Any], headers: bool, status: int
) -> None:
    response = app.client.post(
        "/api/ai/chat", json=body, headers=app.keys.headers() if headers else {}
    )

    assert response.status_code == status
    assert "x-billing-overhead-ms" in response.headers


def test_model_failure_is_502_and_charges_nothing(app: Any) -> None:
    from metering.model_client import ModelError

    app.parts.model.failure = ModelError("model call failed: InternalServerError 500")

    response = post_chat(app)

    assert response.status_code == 502
    assert response.json()["error"] == "model_error"
    assert app.parts.ledger.kinds() == ["hold", "release"]
    assert "x-billing-overhead-ms" in response.headers


def test_the_idempotency_key_header_replays_the_first_answer(app: Any) -> None:
    first = post_chat(app, headers={"Idempotency-Key": "abc"})

    again = post_chat(app, headers={"Idempotency-Key": "abc"})

    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert app.parts.ledger.kinds() == ["hold", "capture"]
    assert app.parts.ledger.calls[0][1][2] == "chat:alice:abc"


def test_the_body_key_and_header_key_must_agree(app: Any) -> None:
    response = post_chat(app, {**CHAT, "idempotencyKey": "a"}, {"Idempotency-Key": "b"})

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_mismatch"


def test_a_streamed_chat_is_server_sent_events(app: Any) -> None:
    body = {**CHAT, "stream": True}
    with app.client.stream(
        "POST", "/api/ai/chat", json=body, headers=app.keys.headers()
    ) as response:
        text = "".join(response.iter_text())

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "x-billing-overhead-ms" in response.headers
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert events[-2].startswith("event: billing\ndata: ")
    billing = json.loads(events[-2].split("data: ", 1)[1])
    assert billing["usage"]["chargedMillicredits"] == 50_000
    assert app.parts.ledger.kinds() == ["hold", "capture"]


# --- reconcile ---------------------------------------------------------------------------

RECONCILE = {
    "userId": "alice",
    "model": "gpt-4o",
    "inputTokens": 1000,
    "outputTokens": 500,
    "idempotencyKey": "batch-7",
}


def test_reconcile_charges_50_credits_once(app: Any) -> None:
    service_token = app.keys.headers("billing-worker", "service")

    first = app.client.post("/api/usage/reconcile", json=RECONCILE, headers=service_token)
    again = app.client.post("/api/usage/reconcile", json=RECONCILE, headers=service_token)

    assert first.status_code == 200
    assert first.json()["usage"]["chargedMillicredits"] == 50_000
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert app.parts.ledger.balance("alice").balance_millicredits == 10_000_000 - 50_000


def test_reconcile_is_for_services_and_admins(app: Any) -> None:
    as_user = app.client.post("/api/usage/reconcile", json=RECONCILE, headers=app.keys.headers())
    as_admin = app.client.post(
        "/api/usage/reconcile", json=RECONCILE, headers=app.keys.headers("ops", "admin")
    )

    assert as_user.status_code == 403
    assert as_admin.status_code == 200
    assert app.client.post("/api/usage/reconcile", json=RECONCILE).status_code == 401


# --- usage -------------------------------------------------------------------------------


def test_usage_totals_of_the_caller(app: Any) -> None:
    post_chat(app)
    post_chat(app)

    response = app.client.get(
        "/api/usage", params={"from": "2026-11-01", "to": "2026-11-21"}, headers=app.keys.headers()
    )

    assert response.status_code == 200
    assert response.json() == {
        "from": "2026-11-01",
        "to": "2026-11-21",
        "models": [
            {
                "model": "gpt-4o",
                "calls": 2,
                "inputTokens": 2000,
                "outputTokens": 1000,
                "chargedMillicredits": 100_000,
            }
        ],
        "totalChargedMillicredits": 100_000,
    }


def test_usage_defaults_to_the_last_30_days(app: Any) -> None:
    body = app.client.get("/api/usage", headers=app.keys.headers()).json()

    assert (body["from"], body["to"]) == ("2026-10-23", "2026-11-21")


def test_usage_of_another_user_is_for_admins(app: Any) -> None:
    params = {"userId": "bob"}

    assert (
        app.client.get("/api/usage", params=params, headers=app.keys.headers()).status_code == 403
    )
    admin = app.keys.headers("ops", "admin")
    assert app.client.get("/api/usage", params=params, headers=admin).status_code == 200


def test_usage_with_a_bad_date_is_422(app: Any) -> None:
    response = app.client.get(
        "/api/usage", params={"from": "yesterday"}, headers=app.keys.headers()
    )

    assert response.status_code == 422


# --- text that PostgreSQL cannot store (found by fuzzing) ---------------------------------


def _refused_before_the_store(app: Any, response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert app.parts.guard.overrides == {}
    assert app.parts.guard.pauses == {}


def test_a_cap_change_with_a_nul_in_its_reason_is_422(app: Any) -> None:
    response = app.client.put(
        "/api/admin/caps/bob",
        json={"perRequestMillicredits": 1000, "reason": "incident\x00"},
        headers=app.keys.headers("ops", "admin"),
    )

    _refused_before_the_store(app, response)


def test_a_resume_of_a_user_id_with_a_nul_is_422(app: Any) -> None:
    response = app.client.post(
        "/api/admin/users/bob%00/resume",
        json={"reason": "checked"},
        headers=app.keys.headers("ops", "admin"),
    )

    _refused_before_the_store(app, response)


@pytest.mark.parametrize("path", ["/api/usage", "/api/admin/review-flags"])
def test_a_user_id_query_with_a_nul_is_422(app: Any, path: str) -> None:
    response = app.client.get(
        path, params={"userId": "bob\x00"}, headers=app.keys.headers("ops", "admin")
    )

    _refused_before_the_store(app, response)


def test_a_reconcile_with_a_nul_in_its_text_is_422(app: Any) -> None:
    body = {**RECONCILE, "idempotencyKey": "key\x00"}
    response = app.client.post(
        "/api/usage/reconcile", json=body, headers=app.keys.headers("ops", "admin")
    )

    _refused_before_the_store(app, response)
