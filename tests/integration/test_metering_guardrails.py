"""Guardrails and rollout switches of the gateway, on the running platform.

Switch changes go through checkout's admin API (as an operator would) and are restored in
``finally``; metering picks them up within its switch cache time, without a restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from billing_cli.stack import Stack
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2
from metering.switches import stable_bucket

DEFAULTS = {
    "billingEnabled": True,
    "chargingEnabled": True,
    "shadowBilling": False,
    "shadowAllowlist": [],
    "rolloutPercentage": 100,
}
SWITCH_PICKUP_S = 1.5  # metering re-reads switches at least every second


async def chat(
    platform: Any, user: str, tokens: int = 10, max_tokens: int = 40, model: str = "gpt-4o-mini"
) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"hello [[tokens={tokens}]]"}],
        "max_tokens": max_tokens,
    }
    url = f"{platform.stack.services['metering'].url}/api/ai/chat"
    answer: httpx.Response = await platform.http.post(url, json=body, headers=platform.auth(user))
    return answer


async def set_caps(platform: Any, user: str, **caps: int) -> None:
    url = f"{platform.stack.services['metering'].url}/api/admin/caps/{user}"
    answer = await platform.http.put(
        url, json={**caps, "reason": "test caps"}, headers=platform.auth("ops", admin=True)
    )
    assert answer.status_code == 200, answer.text


@asynccontextmanager
async def switches(platform: Any, **values: Any) -> AsyncIterator[None]:
    url = f"{platform.checkout}/api/admin/features"
    admin = platform.auth("ops", admin=True)
    answer = await platform.http.patch(url, json={**values, "reason": "test"}, headers=admin)
    assert answer.status_code == 200, answer.text
    await asyncio.sleep(SWITCH_PICKUP_S)
    try:
        yield
    finally:
        back = await platform.http.patch(
            url, json={**DEFAULTS, "reason": "test over"}, headers=admin
        )
        assert back.status_code == 200, back.text
        await asyncio.sleep(SWITCH_PICKUP_S)


async def usage_mode(platform: Any, user: str) -> list[str]:
    modes = await platform.sql(
        "SELECT array_agg(mode ORDER BY created_at) FROM metering.usage_records"
        " WHERE user_id = $1",
        user,
    )
    return list(modes or [])


async def test_a_request_over_the_per_request_cap_is_refused(platform: Any, user: str) -> None:
    await platform.give(user, 10_000_000)
    answer = await chat(platform, user, model="gpt-4o", max_tokens=1000)  # worst case 60+ credits
    assert answer.status_code == 429
    body = answer.json()
    assert body["error"] == "request_cap_exceeded"
    assert body["capMillicredits"] == 50_000
    assert body["requestedMillicredits"] > 50_000
    assert (await platform.balance(user))["heldMillicredits"] == 0


async def test_tripping_the_hourly_cap_pauses_the_user_until_an_admin_resumes(
    platform: Any, user: str
) -> None:
    await platform.give(user, 10_000_000)
    await set_caps(platform, user, perHourMillicredits=300)
    answers = [await chat(platform, user) for _ in range(12)]
    codes = [a.status_code for a in answers]
    tripped = codes.index(429)
    assert tripped > 0
    assert all(c == 200 for c in codes[:tripped])
    trip = answers[tripped].json()
    assert trip["error"] == "hourly_cap_exceeded"
    assert trip["resetsAt"]
    assert "Retry-After" in answers[tripped].headers
    assert all(a.json()["error"] == "user_paused" for a in answers[tripped + 1 :])
    assert all(c == 423 for c in codes[tripped + 1 :])

    await set_caps(platform, user, perHourMillicredits=100_000)
    still = await chat(platform, user)
    assert still.status_code == 423  # raising the cap does not lift the pause
    assert user in await paused_users(platform)
    resume = await platform.http.post(
        f"{platform.stack.services['metering'].url}/api/admin/users/{user}/resume",
        json={"reason": "checked with the customer"},
        headers=platform.auth("ops", admin=True),
    )
    assert resume.status_code == 200, resume.text
    assert (await chat(platform, user)).status_code == 200
    assert user not in await paused_users(platform)


async def paused_users(platform: Any) -> list[str]:
    """The admin view's list of users paused now."""
    got = await platform.http.get(
        f"{platform.stack.services['metering'].url}/api/admin/paused-users",
        headers=platform.auth("ops", admin=True),
    )
    assert got.status_code == 200, got.text
    return [u["userId"] for u in got.json()["users"] if u["paused"]]


async def test_daily_cap_names_when_it_resets(platform: Any, user: str) -> None:
    await platform.give(user, 10_000_000)
    await set_caps(platform, user, perDayMillicredits=300)
    codes = []
    for _ in range(12):
        answer = await chat(platform, user)
        codes.append(answer.status_code)
        if answer.status_code == 429:
            break
    assert codes[-1] == 429
    body = answer.json()
    assert body["error"] == "daily_cap_exceeded"
    assert body["resetsAt"].startswith(time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400)))


async def test_a_call_far_above_the_users_average_is_flagged_for_review(
    platform: Any, user: str, stack: Stack
) -> None:
    await platform.give(user, 10_000_000)
    for _ in range(6):
        assert (await chat(platform, user, tokens=5)).status_code == 200
    spike = await chat(platform, user, tokens=400, max_tokens=400)
    assert spike.status_code == 200  # served and charged, but flagged
    flags = await platform.http.get(
        f"{stack.services['metering'].url}/api/admin/review-flags",
        params={"userId": user},
        headers=platform.auth("ops", admin=True),
    )
    [flag] = [f for f in flags.json()["flags"] if f["model"] == "gpt-4o-mini"]
    assert flag["chargeMillicredits"] > 5 * flag["averageMillicredits"]
    alert = await find_alert(stack, "usage_anomaly", user)
    assert alert.user_id == user


async def find_alert(stack: Stack, kind: str, user: str, timeout: float = 20) -> Any:
    consumer = AIOKafkaConsumer(
        Topics("").alerts, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    alert = alert_pb2.BillingAlert.FromString(record.value or b"")
                    if alert.kind == kind and alert.user_id == user:
                        return alert
        raise AssertionError(f"no {kind} alert for {user}")
    finally:
        await consumer.stop()


async def test_charging_off_keeps_ai_working_and_records_unbilled_usage(
    platform: Any, user: str
) -> None:
    await platform.give(user, 1_000_000)
    async with switches(platform, chargingEnabled=False):
        answer = await chat(platform, user)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["chargedMillicredits"] == 0
    assert (await platform.balance(user))["balanceMillicredits"] == 1_000_000
    assert await usage_mode(platform, user) == ["unbilled"]


async def test_rollout_bills_only_the_users_in_the_percentage(platform: Any) -> None:
    users = [f"roll-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    inside = [u for u in users if stable_bucket(u) < 50]
    outside = [u for u in users if stable_bucket(u) >= 50]
    assert inside
    assert outside
    billed, free = inside[0], outside[0]
    for who in (billed, free):
        await platform.give(who, 1_000_000)
    async with switches(platform, rolloutPercentage=50):
        charged = {who: (await chat(platform, who)).json() for who in (billed, free)}
    assert charged[billed]["usage"]["chargedMillicredits"] > 0
    assert charged[free]["usage"]["chargedMillicredits"] == 0
    assert (await platform.balance(free))["balanceMillicredits"] == 1_000_000


async def test_shadow_billing_charges_the_allowlist_and_totals_what_billing_would_have(
    platform: Any,
) -> None:
    allowed, others = f"shadow-a-{uuid.uuid4().hex[:6]}", f"shadow-b-{uuid.uuid4().hex[:6]}"
    for who in (allowed, others):
        await platform.give(who, 1_000_000)
    # What real billing charges for the same calls, before shadow billing is on.
    reference = f"shadow-ref-{uuid.uuid4().hex[:6]}"
    await platform.give(reference, 1_000_000)
    real = [(await chat(platform, reference, tokens=t)).json() for t in (5, 9)]
    expected = sum(r["usage"]["chargedMillicredits"] for r in real)

    async with switches(platform, shadowBilling=True, shadowAllowlist=[allowed]):
        for who in (allowed, others):
            for tokens in (5, 9):
                assert (await chat(platform, who, tokens=tokens)).status_code == 200
    spent = 1_000_000 - (await platform.balance(allowed))["balanceMillicredits"]
    assert spent == expected
    assert (await platform.balance(others))["balanceMillicredits"] == 1_000_000
    for who in (allowed, others):
        shadow_total = await platform.sql(
            "SELECT sum(charged_millicredits) FROM metering.shadow_charges WHERE user_id = $1",
            who,
        )
        assert shadow_total == expected
