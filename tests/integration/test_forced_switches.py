"""Switches forced by the deployment, with the runbooks' variable names, on the real stack.

Checkout runs on a schema of its own with the runbooks' phase-0 settings (shadow billing on,
charging off, an allowlist); metering reads the switches from that schema. The forced values
must override the stored rows, show as forced, refuse admin changes, and mean what phase 0
says: the allowlisted account is charged, everyone else only logged.
"""

from __future__ import annotations

import uuid
from typing import Any

PHASE_0 = {
    "SHADOW_BILLING_ENABLED": "true",
    "BILLING_PURCHASE_ENABLED": "true",
    "BILLING_CHARGING_ENABLED": "false",
}
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello [[tokens=7]]"}],
    "max_tokens": 20,
}


async def test_phase_zero_settings_force_the_switches_and_charge_only_the_allowlist(
    platform: Any, migrated_db: Any, schema: str, run_service: Any
) -> None:
    await migrated_db(schema, "checkout")
    insider, outsider = (f"{k}-{uuid.uuid4().hex[:6]}" for k in ("insider", "outsider"))
    for user in (insider, outsider):
        await platform.give(user, 1_000_000)
    env = {**PHASE_0, "BILLING_ALLOWLIST": f"{insider},internal-2", "CHECKOUT_DB_SCHEMA": schema}
    with run_service("checkout", env) as checkout:
        features = (await platform.http.get(f"{checkout.url}/api/v1/meta/features")).json()
        assert (features["shadowBilling"], features["chargingEnabled"]) == (True, False)
        assert features["forced"] == sorted(
            ["shadowBilling", "purchasesEnabled", "chargingEnabled", "shadowAllowlist"]
        )
        await _admin_cannot_change_what_is_forced(platform, checkout.url)
        metering_env = {"METERING_CHECKOUT_SCHEMA": schema, "METERING_SWITCH_CACHE_S": "0"}
        with run_service("metering", metering_env) as metering:
            charged = await _chat(platform, metering.url, insider)
            logged = await _chat(platform, metering.url, outsider)
    assert (charged["billingMode"], charged["usage"]["chargedMillicredits"] > 0) == (
        "charged",
        True,
    )
    assert (logged["billingMode"], logged["usage"]["chargedMillicredits"]) == ("shadow", 0)
    assert (await platform.balance(outsider))["balanceMillicredits"] == 1_000_000
    changed_by = await platform.sql(
        f'SELECT count(*) FROM "{schema}".feature_switch_changes'
        " WHERE actor = 'checkout:deployment'"
    )
    assert changed_by >= 1


async def _admin_cannot_change_what_is_forced(platform: Any, url: str) -> None:
    admin = platform.auth("ops-admin", admin=True)
    forced = await platform.http.patch(
        f"{url}/api/admin/features",
        json={"chargingEnabled": True, "reason": "try to undo the rollback"},
        headers=admin,
    )
    assert forced.status_code == 409, forced.text
    assert forced.json()["error"] == "switch_forced"
    assert "BILLING_CHARGING_ENABLED" in forced.json()["message"]
    free = await platform.http.patch(
        f"{url}/api/admin/features",
        json={"rolloutPercentage": 50, "reason": "not forced, so an admin may"},
        headers=admin,
    )
    assert free.status_code == 200, free.text
    assert free.json()["rolloutPercentage"] == 50


async def _chat(platform: Any, url: str, user: str) -> dict[str, Any]:
    answer = await platform.http.post(f"{url}/api/ai/chat", json=CHAT, headers=platform.auth(user))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body
