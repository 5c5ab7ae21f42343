"""The AI gateway on the running platform: metering, the ledger's holds and the local
OpenAI-compatible model server, called through the real services as `billing up` runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from billing_cli.procs import wait_until
from billing_cli.stack import Stack
from metering.pricing import estimate_prompt_tokens

HERE = Path(__file__).parent
GPT_4O = (5, 15)  # USD per 1M tokens in the shipped rate card
MARKUP = 4


def metering_url(stack: Stack) -> str:
    return stack.services["metering"].url


def exact_prompt(text: str) -> str:
    """A prompt whose reported prompt tokens equal the gateway's own worst-case estimate,
    so a call costs exactly what its hold reserved (the directive sets the model's count)."""
    tokens = 0
    for _ in range(5):
        content = f"{text} [[prompt_tokens={tokens}]]"
        estimated = estimate_prompt_tokens([content])
        if estimated == tokens:
            return content
        tokens = estimated
    raise AssertionError("no fixed point for the prompt estimate")


def gpt_4o_price(input_tokens: int, output_tokens: int) -> int:
    # USD per 1M tokens x tokens is millicredits; this case has no rounding to do.
    return MARKUP * (input_tokens * GPT_4O[0] + output_tokens * GPT_4O[1])


async def chat(platform: Any, user: str, content: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}
    headers = platform.auth(user)
    url = f"{metering_url(platform.stack)}/api/ai/chat"
    answer: httpx.Response = await platform.http.post(url, json=body, headers=headers)
    return answer


async def test_golden_reconcile_charges_exactly_fifty_credits_once(
    platform: Any, user: str
) -> None:
    await platform.give(user, 200_000)
    url = f"{metering_url(platform.stack)}/api/usage/reconcile"
    body = {
        "userId": user,
        "model": "gpt-4o",
        "inputTokens": 1000,
        "outputTokens": 500,
        "idempotencyKey": f"golden-{user}",
    }
    admin = platform.auth("ops", admin=True)
    first = await platform.http.post(url, json=body, headers=admin)
    again = await platform.http.post(url, json=body, headers=admin)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["usage"]["chargedMillicredits"] == 50_000
    assert again.json() == first.json()
    assert (await platform.balance(user))["balanceMillicredits"] == 150_000
    forbidden = await platform.http.post(url, json=body, headers=platform.auth(user))
    assert forbidden.status_code == 403


async def test_chat_charges_the_actual_tokens_and_answers_the_balance(
    platform: Any, user: str
) -> None:
    await platform.give(user, 1_000_000)
    answer = await chat(platform, user, "hello there [[tokens=40]]", max_tokens=100)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    usage = body["usage"]
    assert usage["outputTokens"] == 40
    assert usage["chargedMillicredits"] == gpt_4o_price(usage["inputTokens"], 40)
    assert body["balance"]["balanceMillicredits"] == 1_000_000 - usage["chargedMillicredits"]
    assert body["balance"]["heldMillicredits"] == 0
    assert float(answer.headers["x-billing-overhead-ms"]) >= 0
    ledger = await platform.http.get(f"{platform.ledger}/api/ledger", headers=platform.auth(user))
    newest = ledger.json()["entries"][0]
    assert (newest["kind"], newest["model"]) == ("usage", "gpt-4o")
    assert newest["amountMillicredits"] == -usage["chargedMillicredits"]


async def test_hundred_concurrent_calls_with_credit_for_ten(platform: Any, user: str) -> None:
    content = exact_prompt("one call, priced exactly")
    max_tokens = 50
    cost = gpt_4o_price(estimate_prompt_tokens([content]), max_tokens)
    await platform.give(user, 10 * cost)
    # The burst's worst cases count against the hourly cap while in flight; this test is
    # about the balance, so the caps are lifted for this user.
    caps = await platform.http.put(
        f"{metering_url(platform.stack)}/api/admin/caps/{user}",
        json={"perHourMillicredits": 10**9, "perDayMillicredits": 10**9, "reason": "burst test"},
        headers=platform.auth("ops", admin=True),
    )
    assert caps.status_code == 200, caps.text

    answers = await asyncio.gather(
        *(chat(platform, user, content, max_tokens=max_tokens) for _ in range(100))
    )
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(402) == 90
    assert all(a.json()["usage"]["chargedMillicredits"] == cost for a in answers if a.is_success)
    balance = await platform.balance(user)
    assert (balance["balanceMillicredits"], balance["heldMillicredits"]) == (0, 0)
    lowest = await platform.sql(
        "SELECT min(balance_after_millicredits) FROM ledger.journal_entries WHERE user_id = $1",
        user,
    )
    assert lowest == 0


async def test_insufficient_credits_answer_matches_the_contract(platform: Any, user: str) -> None:
    await platform.give(user, 1_000)
    answer = await chat(platform, user, "expensive", max_tokens=500, returnTo="/chat?x=1")
    assert answer.status_code == 402
    body = answer.json()
    assert body["error"] == "insufficient_credits"
    assert body["currentMillicredits"] == 1_000
    assert body["currentCredits"] == "1.000"
    assert body["requiredMillicredits"] > 1_000
    assert body["requiredCredits"] == f"{body['requiredMillicredits'] / 1000:.3f}"
    assert body["returnTo"] == "/credits?returnTo=%2Fchat%3Fx%3D1"
    assert "x-billing-overhead-ms" in answer.headers


async def test_model_failure_releases_the_hold_and_charges_nothing(
    platform: Any, user: str
) -> None:
    await platform.give(user, 500_000)
    answer = await chat(platform, user, "please fail [[fail]]", max_tokens=50)
    assert answer.status_code == 502
    assert answer.json()["error"] == "model_error"
    balance = await platform.balance(user)
    assert (balance["balanceMillicredits"], balance["heldMillicredits"]) == (500_000, 0)
    released = await platform.sql(
        "SELECT count(*) FROM ledger.holds WHERE user_id = $1 AND status = 'released'", user
    )
    assert released == 1


async def test_streaming_charges_from_the_final_usage_chunk(platform: Any, user: str) -> None:
    await platform.give(user, 500_000)
    url = f"{metering_url(platform.stack)}/api/ai/chat"
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "stream please [[tokens=12]]"}],
        "max_tokens": 30,
        "stream": True,
    }
    events: list[str] = []
    async with platform.http.stream("POST", url, json=body, headers=platform.auth(user)) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in answer.aiter_lines() if line]
    assert events[-1] == "data: [DONE]"
    billing = json.loads(events[events.index("event: billing") + 1].removeprefix("data: "))
    charged = billing["usage"]["chargedMillicredits"]
    assert billing["usage"]["outputTokens"] == 12
    assert charged > 0
    assert (await platform.balance(user))["balanceMillicredits"] == 500_000 - charged


async def test_rate_card_and_unknown_models(platform: Any, user: str) -> None:
    card = await platform.http.get(
        f"{metering_url(platform.stack)}/api/rate-card", headers=platform.auth(user)
    )
    models = {m["model"]: m for m in card.json()["models"]}
    assert (models["gpt-4o"]["inputUsdPer1M"], models["gpt-4o"]["outputUsdPer1M"]) == (
        "5.00",
        "15.00",
    )
    wrong = await platform.http.post(
        f"{metering_url(platform.stack)}/api/ai/chat",
        json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]},
        headers=platform.auth(user),
    )
    assert wrong.status_code == 422
    assert wrong.json()["error"] == "unknown_model"
    assert "gpt-4o" in wrong.json()["knownModels"]


async def test_usage_totals_per_model(platform: Any, user: str) -> None:
    await platform.give(user, 1_000_000)
    charged = 0
    for tokens in (5, 7):
        answer = await chat(platform, user, f"count [[tokens={tokens}]]", max_tokens=20)
        charged += answer.json()["usage"]["chargedMillicredits"]
    totals = await platform.http.get(
        f"{metering_url(platform.stack)}/api/usage", headers=platform.auth(user)
    )
    [row] = totals.json()["models"]
    assert (row["model"], row["calls"], row["outputTokens"]) == ("gpt-4o", 2, 12)
    assert totals.json()["totalChargedMillicredits"] == charged


CRASH_TIMING = {"METERING_HOLD_TTL_S": "2", "METERING_MODEL_TIMEOUT_S": "3"}
CRASH_BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi [[tokens=9]]"}],
    "max_tokens": 100,
}


async def crash_a_call(
    platform: Any, user: str, stack: Stack, log: Path, crash_at: str
) -> dict[str, str]:
    """A keyed chat to a metering that dies at ``crash_at`` (crashing_metering.py); the
    headers to retry it with."""
    port = free_port()
    env = {
        **os.environ,
        **stack.env(),
        **CRASH_TIMING,
        "METERING_PORT": str(port),
        "CRASH_AT": crash_at,
    }
    crashing = subprocess.Popen(
        [sys.executable, str(HERE / "crashing_metering.py")],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_until(lambda: ready(f"http://127.0.0.1:{port}"), 30)
        headers = {**platform.auth(user), "Idempotency-Key": f"crash-{user}"}
        try:
            await platform.http.post(
                f"http://127.0.0.1:{port}/api/ai/chat", json=CRASH_BODY, headers=headers
            )
            raise AssertionError("the gateway answered instead of dying")
        except httpx.TransportError:
            pass
        assert crashing.wait(10) == 137
    finally:
        crashing.kill()
    return headers


async def retry_until_answered(platform: Any, url: str, headers: dict[str, str]) -> httpx.Response:
    answer: httpx.Response = await platform.http.post(
        f"{url}/api/ai/chat", json=CRASH_BODY, headers=headers
    )
    for _ in range(40):  # the dead attempt's claim is taken over once abandoned
        if answer.status_code != 409:
            break
        await asyncio.sleep(0.5)
        answer = await platform.http.post(f"{url}/api/ai/chat", json=CRASH_BODY, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


async def charged_once(platform: Any, user: str, charged: int) -> None:
    assert (await platform.balance(user))["balanceMillicredits"] == 500_000 - charged
    postings = await platform.sql(
        "SELECT count(*) FROM ledger.journal_transactions WHERE kind = 'usage' AND user_id = $1",
        user,
    )
    records = await platform.sql(
        "SELECT count(*) FROM metering.usage_records WHERE user_id = $1", user
    )
    assert (postings, records) == (1, 1)


async def test_gateway_killed_after_the_model_answered_never_double_charges(
    platform: Any, user: str, stack: Stack, tmp_path: Path, run_service: Any
) -> None:
    await platform.give(user, 500_000)
    headers = await crash_a_call(platform, user, stack, tmp_path / "crash.log", "settle")

    async def hold_expired() -> bool:
        balance = await platform.balance(user)
        return bool(balance["heldMillicredits"] == 0)

    await platform.eventually(hold_expired, "the orphaned hold never expired", timeout=15)
    assert (await platform.balance(user))["balanceMillicredits"] == 500_000

    with run_service("metering", CRASH_TIMING) as metering:
        answer = await retry_until_answered(platform, metering.url, headers)
        again = await retry_until_answered(platform, metering.url, headers)
    charged = answer.json()["usage"]["chargedMillicredits"]
    assert again.json() == answer.json()
    await charged_once(platform, user, charged)


async def test_gateway_killed_after_charging_answers_the_retry_from_its_record(
    platform: Any, user: str, stack: Stack, tmp_path: Path, run_service: Any
) -> None:
    """The capture and the record are one statement: a crash right after it leaves both,
    so the retry is answered at once from the record, charged once, and the books agree."""
    await platform.give(user, 500_000)
    headers = await crash_a_call(platform, user, stack, tmp_path / "crash.log", "answer")
    assert (await platform.balance(user))["heldMillicredits"] == 0  # captured, not held

    with run_service("metering", CRASH_TIMING) as metering:
        answer = await platform.http.post(
            f"{metering.url}/api/ai/chat", json=CRASH_BODY, headers=headers
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"]["content"]
    await charged_once(platform, user, answer.json()["usage"]["chargedMillicredits"])


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
