"""The per-user rate limit of the charge endpoints (chat and reconcile) on the gateway.

The fake guard keeps the same per-window counts as the ``rate_limit_hits`` rows; the
statement itself runs on PostgreSQL in tests/integration/test_rate_limits.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from billing_platform.errors import ApiError
from metering import service
from metering.model_client import ChatMessage

NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # the fake clock's start (conftest)
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def chat(key: str | None = None) -> service.ChatCall:
    return service.ChatCall(
        "alice", "gpt-4o", [ChatMessage("user", "hi")], max_tokens=50, idempotency_key=key
    )


def reconcile(key: str) -> service.ReconcileCall:
    return service.ReconcileCall("alice", "gpt-4o", 100, 50, key)


@pytest.fixture
def limited(parts: Any) -> Any:
    parts.guard.rate_limit = 2
    return parts


async def over_the_limit(parts: Any, call: service.ChatCall | service.ReconcileCall) -> ApiError:
    send = parts.gateway.chat if isinstance(call, service.ChatCall) else parts.gateway.reconcile
    with pytest.raises(ApiError) as raised:
        await send(call)
    return raised.value


async def test_past_the_limit_a_chat_is_refused_and_changes_nothing(limited: Any) -> None:
    for key in ("k1", "k2"):
        await limited.gateway.chat(chat(key))
    kinds = limited.ledger.kinds()

    error = await over_the_limit(limited, chat("k3"))

    assert (error.status, error.code) == (429, "rate_limited")
    # 2 of 2 at the window's start: the next window must be half gone for one more to fit.
    assert error.extra == {"retryAfterSeconds": 90}
    assert error.headers == {"Retry-After": "90"}
    assert limited.ledger.kinds() == kinds  # no hold
    assert limited.store.inflight == {}  # no cap reservation
    assert limited.store.claims[("alice", "chat:alice:k3")].state == "released"


async def test_the_same_key_goes_through_once_the_window_has_slid(limited: Any) -> None:
    for key in ("k1", "k2"):
        await limited.gateway.chat(chat(key))
    await over_the_limit(limited, chat("k3"))

    limited.clock.advance(seconds=89)
    await over_the_limit(limited, chat("k3"))
    limited.clock.advance(seconds=1)
    answer = await limited.gateway.chat(chat("k3"))

    assert isinstance(answer, service.Answer)
    assert answer.status == 200


async def test_a_replayed_answer_is_not_counted(limited: Any) -> None:
    await limited.gateway.chat(chat("k1"))
    for _ in range(3):
        again = await limited.gateway.chat(chat("k1"))
        assert isinstance(again, service.Answer)
        assert again.replayed

    assert isinstance(await limited.gateway.chat(chat("k2")), service.Answer)


async def test_calls_not_charged_count_too(limited: Any) -> None:
    limited.flags.rows["chargingEnabled"] = False
    for _ in range(2):
        await limited.gateway.chat(chat())

    error = await over_the_limit(limited, chat())

    assert error.code == "rate_limited"
    assert limited.ledger.calls == []


async def test_reconcile_shares_the_users_limit_with_chat(limited: Any) -> None:
    await limited.gateway.chat(chat("k1"))
    await limited.gateway.reconcile(reconcile("r-1"))
    captures = limited.ledger.kinds().count("capture")

    error = await over_the_limit(limited, reconcile("r-2"))

    assert error.code == "rate_limited"
    assert limited.ledger.kinds().count("capture") == captures
    assert await over_the_limit(limited, chat("k2")) is not None


async def test_each_user_has_a_limit_of_their_own(limited: Any) -> None:
    limited.ledger.balances["bob"] = 10_000_000
    for key in ("k1", "k2"):
        await limited.gateway.chat(chat(key))

    answer = await limited.gateway.chat(
        service.ChatCall("bob", "gpt-4o", [ChatMessage("user", "hi")], max_tokens=50)
    )

    assert isinstance(answer, service.Answer)


def test_the_429_over_http(app: Any) -> None:
    app.parts.guard.rate_limit = 2
    app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())
    first = app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())

    second = app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())

    assert first.status_code == 200, first.text
    assert second.status_code == 429
    assert second.headers["retry-after"] == "90"
    body = second.json()
    assert (body["error"], body["retryAfterSeconds"]) == ("rate_limited", 90)
    assert "message" in body
