"""The ledger's hold API over HTTP, against a scripted transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from metering.ledger_client import Balance, HttpLedgerClient, InsufficientCredits, LedgerError
from pydantic import SecretStr

BALANCE = {
    "balanceMillicredits": 100_000,
    "heldMillicredits": 30_000,
    "availableMillicredits": 70_000,
}
HOLD = {
    "holdId": "h-1",
    "userId": "alice",
    "amountMillicredits": 30_000,
    "expiresAt": "2026-11-21T12:02:00Z",
    **BALANCE,
}


class Script:
    """Answers requests in turn, remembering each one."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def body(self, index: int = 0) -> Any:
        return json.loads(self.requests[index].content)


def client(script: Callable[[httpx.Request], httpx.Response]) -> HttpLedgerClient:
    return HttpLedgerClient(
        "http://ledger.test",
        SecretStr("svc-token"),
        backoff_s=0,
        transport=httpx.MockTransport(script),
    )


async def test_a_hold_is_posted_with_the_service_token() -> None:
    script = Script(httpx.Response(201, json=HOLD))

    hold = await client(script).create_hold("alice", 30_000, "chat:alice:k1", 120)

    assert hold.hold_id == "h-1"
    assert hold.amount_millicredits == 30_000
    assert hold.balance == Balance(100_000, 30_000, 70_000)
    request = script.requests[0]
    assert (request.method, str(request.url)) == ("POST", "http://ledger.test/internal/holds")
    assert request.headers["authorization"] == "Bearer svc-token"
    assert request.headers["x-correlation-id"]
    assert script.body() == {
        "userId": "alice",
        "amountMillicredits": 30_000,
        "idempotencyKey": "chat:alice:k1",
        "ttlSeconds": 120,
    }


async def test_the_same_hold_again_is_a_200() -> None:
    hold = await client(Script(httpx.Response(200, json=HOLD))).create_hold("alice", 1, "k", 1)

    assert hold.hold_id == "h-1"


async def test_a_402_is_insufficient_credits() -> None:
    refusal = {
        "error": "insufficient_credits",
        "requiredMillicredits": 30_000,
        "currentMillicredits": 2_500,
        "requiredCredits": "30.000",
        "currentCredits": "2.500",
    }

    with pytest.raises(InsufficientCredits) as raised:
        await client(Script(httpx.Response(402, json=refusal))).create_hold("alice", 1, "k", 1)

    assert (raised.value.required_millicredits, raised.value.current_millicredits) == (
        30_000,
        2_500,
    )


async def test_5xx_and_network_errors_are_retried() -> None:
    script = Script(
        httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(201, json=HOLD)
    )

    hold = await client(script).create_hold("alice", 30_000, "k", 120)

    assert hold.hold_id == "h-1"
    assert len(script.requests) == 3
    assert script.body(0) == script.body(2)


async def test_a_ledger_that_stays_down_is_a_ledger_error() -> None:
    script = Script(*[httpx.Response(502) for _ in range(3)])

    with pytest.raises(LedgerError, match="HTTP 502"):
        await client(script).create_hold("alice", 1, "k", 1)

    assert len(script.requests) == 3


async def test_a_4xx_is_not_retried() -> None:
    script = Script(httpx.Response(409, json={"error": "hold_not_active", "message": "no"}))

    with pytest.raises(LedgerError, match="409 hold_not_active"):
        await client(script).release("h-1")

    assert len(script.requests) == 1


async def test_a_release_reads_the_balance() -> None:
    script = Script(httpx.Response(200, json={"holdId": "h-1", "status": "released", **BALANCE}))

    balance = await client(script).release("h-1")

    assert str(script.requests[0].url) == "http://ledger.test/internal/holds/h-1/release"
    assert balance.balance_millicredits == 100_000


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, json={"holdId": "h-1"}),
        httpx.Response(201, json={**HOLD, "amountMillicredits": "30000"}),
        httpx.Response(201, content=b"<html>"),
        httpx.Response(201, json=[1, 2]),
    ],
)
async def test_an_answer_off_the_contract_is_a_ledger_error(response: httpx.Response) -> None:
    with pytest.raises(LedgerError):
        await client(Script(response)).create_hold("alice", 1, "k", 1)
