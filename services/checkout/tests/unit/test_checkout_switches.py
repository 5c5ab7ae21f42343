"""The billing switches: defaults from the settings, what they mean together, the cache in
front of the database, the admin change endpoint's validation, and the purchase switch.

No database here: the cache reads a fake source, the routes a fake admin service.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.errors import ApiError
from billing_platform.ratelimit import SlidingWindowLimiter
from billing_platform.settings import InfraSettings
from checkout import api
from checkout.idempotency import IdempotencyKeys
from checkout.repository import NewPurchase
from checkout.schemas import AdminFeaturesOut
from checkout.service import PurchaseService, admin_view
from checkout.settings import Settings
from checkout.stripe_checkout import CheckoutSession
from checkout.switches import (
    Switches,
    SwitchValues,
    as_stored,
    charging_allowed,
    defaults_from,
    forced_from,
    from_stored,
    purchases_allowed,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError

ISSUER = "switches-test"
AUDIENCE = "billing-test"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SWITCH_ENV = (
    "CHECKOUT_BILLING_ENABLED",
    "CHECKOUT_PURCHASES_ENABLED",
    "CHECKOUT_CHARGING_ENABLED",
    "CHECKOUT_SHADOW_BILLING",
    "CHECKOUT_SHADOW_ALLOWLIST",
    "CHECKOUT_ROLLOUT_PERCENTAGE",
    "CHECKOUT_SWITCH_CACHE_S",
)
DEFAULTS = SwitchValues(
    billing_enabled=True,
    purchases_enabled=True,
    charging_enabled=True,
    shadow_billing=False,
    shadow_allowlist=(),
    rollout_percentage=100,
)


# -- defaults from the environment -------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SWITCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_without_env(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert defaults_from(settings) == DEFAULTS
    assert settings.switch_cache_s == 1.0


def test_defaults_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CHECKOUT_BILLING_ENABLED", "false")
    clean_env.setenv("CHECKOUT_CHARGING_ENABLED", "false")
    clean_env.setenv("CHECKOUT_SHADOW_BILLING", "true")
    clean_env.setenv("CHECKOUT_SHADOW_ALLOWLIST", " staff-1, staff-2,,")
    clean_env.setenv("CHECKOUT_ROLLOUT_PERCENTAGE", "25")
    clean_env.setenv("CHECKOUT_SWITCH_CACHE_S", "2.5")

    settings = Settings()

    assert defaults_from(settings) == SwitchValues(
        billing_enabled=False,
        purchases_enabled=True,
        charging_enabled=False,
        shadow_billing=True,
        shadow_allowlist=("staff-1", "staff-2"),
        rollout_percentage=25,
    )
    assert settings.switch_cache_s == 2.5


@pytest.mark.parametrize("value", ["-1", "101"])
def test_rollout_outside_0_to_100_is_refused_at_startup(
    clean_env: pytest.MonkeyPatch, value: str
) -> None:
    clean_env.setenv("CHECKOUT_ROLLOUT_PERCENTAGE", value)

    with pytest.raises(ValidationError):
        Settings()


def test_stored_values_round_trip_and_missing_rows_keep_defaults() -> None:
    values = replace(DEFAULTS, shadow_billing=True, shadow_allowlist=("a", "b"))
    stored = as_stored(values)

    assert stored == {
        "billingEnabled": True,
        "purchasesEnabled": True,
        "chargingEnabled": True,
        "shadowBilling": True,
        "shadowAllowlist": ["a", "b"],
        "rolloutPercentage": 100,
    }
    assert from_stored(stored, DEFAULTS) == values
    assert from_stored({"rolloutPercentage": 5}, DEFAULTS) == replace(
        DEFAULTS, rollout_percentage=5
    )


# -- the master switch -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billing", "own", "allowed"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_billing_enabled_is_the_master_switch(billing: bool, own: bool, allowed: bool) -> None:
    purchases = replace(DEFAULTS, billing_enabled=billing, purchases_enabled=own)
    charging = replace(DEFAULTS, billing_enabled=billing, charging_enabled=own)

    assert purchases_allowed(purchases) is allowed
    assert charging_allowed(charging) is allowed


def test_purchases_and_charging_are_independent() -> None:
    values = replace(DEFAULTS, purchases_enabled=False)

    assert not purchases_allowed(values)
    assert charging_allowed(values)


# -- the cache ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """The switch rows as a dict; counts reads, can fail or hold a read open."""

    def __init__(self, stored: dict[str, Any] | None = None) -> None:
        self.stored = dict(stored or {})
        self.loads = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def load(self) -> dict[str, Any]:
        self.loads += 1
        snapshot = dict(self.stored)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return snapshot


def _switches(source: FakeSource, clock: FakeClock, ttl_s: float = 1.0) -> Switches:
    return Switches(source, DEFAULTS, ttl_s, clock=clock)


async def test_cache_reads_the_source_once_per_ttl() -> None:
    clock, source = FakeClock(), FakeSource({"purchasesEnabled": False})
    switches = _switches(source, clock)

    first = await switches.current()
    source.stored["purchasesEnabled"] = True
    clock.now += 0.999
    second = await switches.current()

    assert source.loads == 1
    assert first == second == replace(DEFAULTS, purchases_enabled=False)


async def test_cache_refreshes_on_the_first_read_after_the_ttl() -> None:
    clock, source = FakeClock(), FakeSource({"purchasesEnabled": False})
    switches = _switches(source, clock)
    await switches.current()

    source.stored["purchasesEnabled"] = True
    clock.now += 1.0
    refreshed = await switches.current()
    clock.now += 0.5
    await switches.current()

    assert refreshed.purchases_enabled is True
    assert source.loads == 2


async def test_invalidate_makes_the_next_read_go_to_the_source() -> None:
    clock, source = FakeClock(), FakeSource()
    switches = _switches(source, clock)
    await switches.current()

    source.stored["rolloutPercentage"] = 10
    switches.invalidate()

    assert (await switches.current()).rollout_percentage == 10
    assert source.loads == 2


async def test_a_read_begun_before_a_change_is_not_kept_as_fresh() -> None:
    clock, source = FakeClock(), FakeSource({"billingEnabled": True})
    switches = _switches(source, clock)
    source.gate = asyncio.Event()
    reading = asyncio.create_task(switches.current())
    await asyncio.sleep(0)  # the read has taken its snapshot of the old rows

    source.stored["billingEnabled"] = False
    switches.invalidate()
    source.gate.set()
    await reading

    assert (await switches.current()).billing_enabled is False
    assert source.loads == 2


async def test_concurrent_reads_after_expiry_hit_the_source_once() -> None:
    clock, source = FakeClock(), FakeSource()
    switches = _switches(source, clock)
    source.gate = asyncio.Event()

    readers = [asyncio.create_task(switches.current()) for _ in range(5)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*readers)

    assert source.loads == 1
    assert set(results) == {DEFAULTS}


async def test_a_failed_refresh_keeps_the_last_values_for_another_ttl() -> None:
    clock, source = FakeClock(), FakeSource({"chargingEnabled": False})
    switches = _switches(source, clock)
    await switches.current()

    source.error = ConnectionError("database away")
    clock.now += 1.0
    stale = await switches.current()
    clock.now += 0.5
    await switches.current()

    assert stale.charging_enabled is False
    assert source.loads == 2
    source.error = None
    clock.now += 0.5
    assert (await switches.current()).charging_enabled is False
    assert source.loads == 3


async def test_no_values_at_all_is_503() -> None:
    source = FakeSource()
    source.error = ConnectionError("database away")

    with pytest.raises(ApiError) as raised:
        await _switches(source, FakeClock()).current()

    assert (raised.value.status, raised.value.code) == (503, "switches_unavailable")


# -- HTTP: the public and admin routes ----------------------------------------------------


class Keys:
    def __init__(self, folder: Path) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_path = folder / "public.pem"
        self.public_path.write_bytes(public)

    def headers(self, user: str = "alice", *roles: str) -> dict[str, str]:
        now = int(time.time())
        claims = {
            "sub": user,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "roles": list(roles),
        }
        token = jwt.encode(claims, self._private, algorithm="RS256")
        return {"Authorization": f"Bearer {token}"}

    def admin(self) -> dict[str, str]:
        return self.headers("root", "admin")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt"))


@pytest.fixture
def settings(keys: Keys) -> Settings:
    infra = InfraSettings(
        jwt_public_keys=[keys.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    return Settings(infra=infra)


class FakeSwitches:
    def __init__(self, values: SwitchValues = DEFAULTS) -> None:
        self.values = values
        self.reads = 0

    async def current(self) -> SwitchValues:
        self.reads += 1
        return self.values


class FakeAdmin:
    """Stores changes in a dict, as the rows would be after the transaction."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] = as_stored(DEFAULTS)
        self.changes: list[tuple[str, dict[str, Any], str]] = []
        self.forced: list[str] = []

    async def view(self) -> AdminFeaturesOut:
        rows = [{"name": n, "value": v, "updated_at": NOW} for n, v in self.stored.items()]
        return admin_view(rows, DEFAULTS, self.forced)

    async def change(self, actor: str, changes: dict[str, Any], reason: str) -> AdminFeaturesOut:
        self.changes.append((actor, changes, reason))
        self.stored.update(changes)
        return await self.view()


@pytest.fixture
def admin() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def client(settings: Settings, admin: FakeAdmin) -> TestClient:
    routes = api.features_router(FakeSwitches(replace(DEFAULTS, shadow_allowlist=("x",))), admin)
    return TestClient(build_app(settings, routers=[routes]), raise_server_exceptions=False)


def test_public_features_need_no_token_and_hide_the_allowlist(client: TestClient) -> None:
    response = client.get("/api/v1/meta/features")

    assert response.status_code == 200
    assert response.json() == {
        "billingEnabled": True,
        "purchasesEnabled": True,
        "chargingEnabled": True,
        "shadowBilling": False,
        "rolloutPercentage": 100,
        "forced": [],
    }


def test_public_features_name_the_switches_the_deployment_forces(
    client: TestClient, admin: FakeAdmin
) -> None:
    admin.forced = ["chargingEnabled", "purchasesEnabled"]

    response = client.get("/api/v1/meta/features")

    assert response.json()["forced"] == ["chargingEnabled", "purchasesEnabled"]


def test_the_runbooks_variables_force_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_PURCHASE_ENABLED", "false")
    monkeypatch.setenv("BILLING_CHARGING_ENABLED", "false")
    monkeypatch.setenv("SHADOW_BILLING_ENABLED", "true")
    monkeypatch.setenv("BILLING_ALLOWLIST", " alice, bob ,alice")
    monkeypatch.setenv("BILLING_ROLLOUT_PERCENTAGE", "5")

    assert forced_from(Settings()) == {
        "purchasesEnabled": False,
        "chargingEnabled": False,
        "shadowBilling": True,
        "shadowAllowlist": ["alice", "bob"],
        "rolloutPercentage": 5,
    }


def test_without_those_variables_nothing_is_forced() -> None:
    assert forced_from(Settings()) == {}


def test_a_forced_rollout_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_ROLLOUT_PERCENTAGE", "101")

    with pytest.raises(ValueError, match="BILLING_ROLLOUT_PERCENTAGE"):
        Settings()


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_admin_features_need_an_admin(client: TestClient, keys: Keys, method: str) -> None:
    body = {"billingEnabled": False, "reason": "incident 42"}

    anonymous = client.request(method, "/api/admin/features", json=body)
    user = client.request(method, "/api/admin/features", json=body, headers=keys.headers())

    assert anonymous.status_code == 401
    assert user.status_code == 403


def test_admin_view_has_the_allowlist_and_update_times(client: TestClient, keys: Keys) -> None:
    response = client.get("/api/admin/features", headers=keys.admin())

    assert response.status_code == 200
    body = response.json()
    assert body["shadowAllowlist"] == []
    assert body["updatedAt"]["rolloutPercentage"] == "2025-01-02T03:04:05Z"
    assert set(body["updatedAt"]) == set(as_stored(DEFAULTS))


def test_patch_changes_switches_as_the_admin(
    client: TestClient, keys: Keys, admin: FakeAdmin
) -> None:
    response = client.patch(
        "/api/admin/features",
        json={
            "chargingEnabled": False,
            "shadowAllowlist": [" staff-1 ", "staff-2", "staff-1"],
            "rolloutPercentage": 0,
            "reason": "  shadow phase  ",
        },
        headers=keys.admin(),
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["chargingEnabled"], body["rolloutPercentage"]) == (False, 0)
    assert body["shadowAllowlist"] == ["staff-1", "staff-2"]
    assert admin.changes == [
        (
            "root",
            {
                "chargingEnabled": False,
                "shadowAllowlist": ["staff-1", "staff-2"],
                "rolloutPercentage": 0,
            },
            "shadow phase",
        )
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"rolloutPercentage": 101, "reason": "too many"},
        {"rolloutPercentage": -1, "reason": "too few"},
        {"billingEnabled": None, "reason": "null is not off"},
        {"shadowAllowlist": ["ok", "  "], "reason": "blank user id"},
        {"shadowAllowlist": ["u" * 201], "reason": "overlong user id"},
        {"reason": "nothing to change"},
    ],
)
def test_invalid_switch_values_are_422_invalid_switch(
    client: TestClient, keys: Keys, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    response = client.patch("/api/admin/features", json=body, headers=keys.admin())

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_switch"
    assert admin.changes == []


@pytest.mark.parametrize(
    "body",
    [
        {"billingEnabled": False, "reason": "typo", "bilingEnabled": False},
        {"killAll": True, "reason": "unknown switch"},
        {"billingEnabled": "false", "reason": "a string is not a boolean"},
        {"purchasesEnabled": 0, "reason": "a number is not a boolean"},
        {"rolloutPercentage": 50.0, "reason": "not an integer"},
        {"rolloutPercentage": True, "reason": "not an integer"},
        {"rolloutPercentage": "50", "reason": "not an integer"},
        {"shadowAllowlist": "staff-1", "reason": "not a list"},
        {"shadowAllowlist": [1], "reason": "not a list of strings"},
        {"billingEnabled": False},
        {"billingEnabled": False, "reason": "  x "},
        {"billingEnabled": False, "reason": "r" * 501},
    ],
)
def test_unknown_fields_bad_types_and_bad_reasons_are_422(
    client: TestClient, keys: Keys, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    response = client.patch("/api/admin/features", json=body, headers=keys.admin())

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert admin.changes == []


# -- the purchase switch -----------------------------------------------------------------


class _NoStripe:
    async def create(
        self, purchase: NewPurchase, success_url: str, cancel_url: str
    ) -> CheckoutSession:
        raise AssertionError("Stripe must not be called")


def _purchase_client(settings: Settings, switches: FakeSwitches) -> TestClient:
    db = Database("postgresql://unused@127.0.0.1:1/unused", settings.db_schema)  # not started
    routes = api.router(
        PurchaseService(db, _NoStripe(), settings.public_base_url),
        IdempotencyKeys(db),
        limiter=SlidingWindowLimiter(100, 60.0),
        switches=switches,
    )
    return TestClient(build_app(settings, routers=[routes]), raise_server_exceptions=False)


@pytest.mark.parametrize(
    "values",
    [replace(DEFAULTS, purchases_enabled=False), replace(DEFAULTS, billing_enabled=False)],
)
def test_purchases_are_503_while_the_switches_say_off(
    settings: Settings, keys: Keys, values: SwitchValues
) -> None:
    switches = FakeSwitches(values)
    client = _purchase_client(settings, switches)

    off = client.post("/api/purchases", json={"packageCode": "nope"}, headers=keys.headers())
    switches.values = DEFAULTS  # asked on every request: no restart needed
    on = client.post("/api/purchases", json={"packageCode": "nope"}, headers=keys.headers())

    assert off.status_code == 503
    assert off.json()["error"] == "purchases_disabled"
    assert on.json()["error"] == "unknown_package"
    assert switches.reads == 2


def test_the_switch_is_asked_only_after_the_token(settings: Settings) -> None:
    switches = FakeSwitches(replace(DEFAULTS, purchases_enabled=False))

    response = _purchase_client(settings, switches).post(
        "/api/purchases", json={"packageCode": "starter"}
    )

    assert response.status_code == 401
    assert switches.reads == 0
