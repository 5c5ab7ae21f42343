"""``POST /api/ai/chat`` in front of FastAPI's router (``api.chat_route``): a valid call skips
the router, and every other request is answered by the route itself, as without the
shortcut (``route_only``: the same app, the shortcut taken out)."""

from __future__ import annotations

import json
from typing import Any

import pytest

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]}
JSON = {"Content-Type": "application/json"}


def test_a_valid_call_skips_the_router_and_is_named_by_its_route(app: Any) -> None:
    response = app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())

    assert response.status_code == 200
    assert response.json()["usage"]["chargedMillicredits"] == 50_000
    [scope] = app.scopes
    assert "endpoint" not in scope  # FastAPI's router sets it on every request it routes
    assert scope["route"].path == "/api/ai/chat"


def test_a_call_without_a_json_content_type_is_served_by_the_route(app: Any) -> None:
    body = json.dumps(CHAT).encode()

    response = app.client.post("/api/ai/chat", content=body, headers=app.keys.headers())

    assert response.status_code == 200
    [scope] = app.scopes
    assert scope["endpoint"].__name__ == "chat"


def test_other_routes_go_by_the_router(app: Any) -> None:
    assert app.client.get("/api/rate-card", headers=app.keys.headers()).status_code == 200
    assert app.client.get("/api/ai/chat", headers=app.keys.headers()).status_code == 405
    assert [s["path"] for s in app.scopes if "endpoint" in s] == ["/api/rate-card", "/api/ai/chat"]


BODY = json.dumps(CHAT).encode()
# Each bad request: its body, its headers, and whether it carries a valid token.
REFUSALS: dict[str, tuple[bytes, dict[str, str], bool]] = {
    "no token": (BODY, JSON, False),
    "a token that is not one": (BODY, {**JSON, "Authorization": "Bearer x.y.z"}, False),
    "a text body": (BODY, {"Content-Type": "text/plain"}, True),
    "no body": (b"", JSON, True),
    "not JSON": (b'{"model": ', JSON, True),
    "a JSON list": (b"[]", JSON, True),
    "no messages": (b'{"model": "gpt-4o"}', JSON, True),
    "a key header too long": (BODY, {**JSON, "Idempotency-Key": "k" * 300}, True),
    "keys that differ": (
        json.dumps({**CHAT, "idempotencyKey": "a"}).encode(),
        {**JSON, "Idempotency-Key": "b"},
        True,
    ),
    "an unknown model": (json.dumps({**CHAT, "model": "gpt-0"}).encode(), JSON, True),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refusal_is_the_answer_the_route_gives(app: Any, route_only: Any, case: str) -> None:
    body, headers, signed = REFUSALS[case]
    headers = {**app.keys.headers(), **headers} if signed else headers

    fast = app.client.post("/api/ai/chat", content=body, headers=headers)
    plain = route_only.client.post("/api/ai/chat", content=body, headers=headers)

    assert 400 <= fast.status_code < 500
    assert (fast.status_code, fast.json()) == (plain.status_code, plain.json())
    assert fast.headers["content-type"] == plain.headers["content-type"]
    assert app.parts.ledger.kinds() == []  # nothing held, nothing charged
