"""JwtVerifier, Principal and the FastAPI auth dependencies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_platform.app import create_app
from billing_platform.auth import AdminUser, CurrentUser, JwtVerifier, Principal, SteppedUpAdmin
from billing_platform.context import user_id_var
from billing_platform.errors import ApiError
from billing_platform.settings import InfraSettings, ServiceSettings
from fastapi import APIRouter
from fastapi.testclient import TestClient


def _verifier(*keys: Any) -> JwtVerifier:
    first = keys[0]
    return JwtVerifier([k.public_pem for k in keys], first.issuer, first.audience)


def _assert_unauthorized(verifier: JwtVerifier, token: str) -> None:
    with pytest.raises(ApiError) as info:
        verifier.verify(token)
    assert info.value.status == 401
    assert info.value.code == "unauthorized"
    assert info.value.body()["error"] == "unauthorized"


def test_valid_token_gives_principal_with_user_and_roles(key_a: Any) -> None:
    principal = _verifier(key_a).verify(key_a.token(sub="u-42", roles=["admin", "ops"]))

    assert principal == Principal("u-42", frozenset({"admin", "ops"}))
    assert principal.is_admin


def test_token_without_roles_claim_has_no_roles(key_a: Any) -> None:
    principal = _verifier(key_a).verify(key_a.token(roles=None))

    assert principal.roles == frozenset()
    assert not principal.is_admin


def test_expired_token_is_unauthorized(key_a: Any) -> None:
    now = int(time.time())
    _assert_unauthorized(_verifier(key_a), key_a.token(iat=now - 600, exp=now - 300))


def test_wrong_issuer_is_unauthorized(key_a: Any) -> None:
    _assert_unauthorized(_verifier(key_a), key_a.token(iss="someone-else"))


def test_wrong_audience_is_unauthorized(key_a: Any) -> None:
    _assert_unauthorized(_verifier(key_a), key_a.token(aud="other-platform"))


def test_missing_sub_is_unauthorized(key_a: Any) -> None:
    _assert_unauthorized(_verifier(key_a), key_a.token(sub=None))


def test_missing_exp_is_unauthorized(key_a: Any) -> None:
    _assert_unauthorized(_verifier(key_a), key_a.token(exp=None))


def test_hs256_token_is_unauthorized(key_a: Any) -> None:
    # Signed with a shared secret (here: the public key text, the classic confusion attack).
    claims = jwt.decode(key_a.token(), options={"verify_signature": False})
    forged = jwt.encode(claims, "a-shared-secret-of-sufficient-length-32b", algorithm="HS256")

    _assert_unauthorized(_verifier(key_a), forged)


def test_unsigned_none_alg_token_is_unauthorized(key_a: Any) -> None:
    claims = jwt.decode(key_a.token(), options={"verify_signature": False})
    forged = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]

    _assert_unauthorized(_verifier(key_a), forged)


def test_token_signed_by_unknown_key_is_unauthorized(key_a: Any, key_unknown: Any) -> None:
    _assert_unauthorized(_verifier(key_a), key_unknown.token())


def test_garbage_token_is_unauthorized(key_a: Any) -> None:
    _assert_unauthorized(_verifier(key_a), "not-a-jwt")


def test_no_configured_keys_rejects_every_token(key_a: Any) -> None:
    _assert_unauthorized(JwtVerifier([], key_a.issuer, key_a.audience), key_a.token())


def test_both_rotated_keys_are_accepted(key_a: Any, key_b: Any) -> None:
    verifier = _verifier(key_a, key_b)

    assert verifier.verify(key_a.token(sub="by-a")).user_id == "by-a"
    assert verifier.verify(key_b.token(sub="by-b")).user_id == "by-b"


def test_expired_token_from_second_key_is_still_rejected(key_a: Any, key_b: Any) -> None:
    now = int(time.time())
    _assert_unauthorized(_verifier(key_a, key_b), key_b.token(iat=now - 600, exp=now - 300))


def test_from_files_reads_pem_files(tmp_path: Path, key_a: Any) -> None:
    verifier = JwtVerifier.from_files([key_a.write_public(tmp_path)], key_a.issuer, key_a.audience)

    assert verifier.verify(key_a.token(sub="u-file")).user_id == "u-file"


def test_user_can_access_own_data() -> None:
    Principal("u1", frozenset()).ensure_can_access("u1")


def test_user_cannot_access_another_users_data() -> None:
    with pytest.raises(ApiError) as info:
        Principal("u1", frozenset({"reader"})).ensure_can_access("u2")

    assert (info.value.status, info.value.code) == (403, "forbidden")


@pytest.mark.parametrize("role", ["admin", "service"])
def test_admin_and_service_can_access_anyones_data(role: str) -> None:
    Principal("u1", frozenset({role})).ensure_can_access("u2")


# --- through the app factory ------------------------------------------------------------


def _router() -> APIRouter:
    router = APIRouter()

    @router.get("/me")
    async def me(user: CurrentUser) -> dict[str, Any]:
        return {"user_id": user.user_id, "roles": sorted(user.roles)}

    @router.get("/admin")
    async def admin(user: AdminUser) -> dict[str, str]:
        return {"admin": user.user_id}

    @router.post("/money")
    async def money(user: SteppedUpAdmin) -> dict[str, str]:
        return {"moved_by": user.user_id}

    @router.get("/whoami-context")
    async def whoami_context(user: CurrentUser) -> dict[str, str | None]:
        return {"user_id_var": user_id_var.get()}

    return router


@pytest.fixture
def client(tmp_path: Path, key_a: Any) -> Any:
    infra = InfraSettings(
        jwt_public_keys=[key_a.write_public(tmp_path)],
        jwt_issuer=key_a.issuer,
        jwt_audience=key_a.audience,
    )
    settings = ServiceSettings(service_name="auth-test", infra=infra)
    with TestClient(create_app(settings, routers=[_router()])) as test_client:
        yield test_client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_missing_header_is_401(client: TestClient) -> None:
    response = client.get("/me")

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.json()["message"]


def test_non_bearer_scheme_is_401(client: TestClient, key_a: Any) -> None:
    response = client.get("/me", headers={"authorization": f"Basic {key_a.token()}"})

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_invalid_token_over_http_is_401(client: TestClient, key_unknown: Any) -> None:
    response = client.get("/me", headers=_bearer(key_unknown.token()))

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_valid_token_reaches_user_route(client: TestClient, key_a: Any) -> None:
    response = client.get("/me", headers=_bearer(key_a.token(sub="u-7", roles=["x"])))

    assert response.status_code == 200
    assert response.json() == {"user_id": "u-7", "roles": ["x"]}


def test_non_admin_on_admin_route_is_403(client: TestClient, key_a: Any) -> None:
    response = client.get("/admin", headers=_bearer(key_a.token(roles=["service"])))

    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


def test_admin_route_without_token_is_401(client: TestClient) -> None:
    response = client.get("/admin")

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_admin_reaches_admin_route(client: TestClient, key_a: Any) -> None:
    response = client.get("/admin", headers=_bearer(key_a.token(sub="boss", roles=["admin"])))

    assert response.status_code == 200
    assert response.json() == {"admin": "boss"}


def test_authenticated_user_is_visible_in_request_context(client: TestClient, key_a: Any) -> None:
    response = client.get("/whoami-context", headers=_bearer(key_a.token(sub="u-ctx")))

    assert response.status_code == 200
    assert response.json() == {"user_id_var": "u-ctx"}


# --- step-up MFA for money-moving admin actions -----------------------------------------


def test_amr_and_auth_time_reach_the_principal(key_a: Any) -> None:
    token = key_a.token(amr=["pwd", "otp"], auth_time=1_700_000_000)

    principal = _verifier(key_a).verify(token)

    assert principal.amr == frozenset({"pwd", "otp"})
    assert principal.auth_time == 1_700_000_000


@pytest.mark.parametrize(
    "claims",
    [{"amr": "otp"}, {"amr": [1]}, {"auth_time": "yesterday"}, {"auth_time": True}],
)
def test_malformed_mfa_claims_are_unauthorized(key_a: Any, claims: dict[str, Any]) -> None:
    _assert_unauthorized(_verifier(key_a), key_a.token(**claims))


@pytest.mark.parametrize(
    ("amr", "age_s", "stepped_up"),
    [
        (["pwd", "otp"], 60, True),
        (["mfa"], 899, True),
        (["hwk"], 0, True),
        (["pwd"], 60, False),  # a password alone is one factor
        ([], 60, False),
        (["pwd", "otp"], 901, False),  # second factor too long ago
        (["pwd", "otp"], -3600, False),  # a sign-in from the future is not believed
    ],
)
def test_step_up_needs_a_second_factor_within_the_max_age(
    amr: list[str], age_s: int, stepped_up: bool
) -> None:
    now = 1_800_000_000.0
    principal = Principal("ops", frozenset({"admin"}), frozenset(amr), int(now) - age_s)

    assert principal.stepped_up_within(900, now=now) is stepped_up


def test_step_up_without_auth_time_is_refused() -> None:
    assert not Principal("ops", frozenset({"admin"}), frozenset({"otp"})).stepped_up_within(900)


def test_money_moving_admin_route_without_mfa_is_401_mfa_required(
    client: TestClient, key_a: Any
) -> None:
    response = client.post("/money", headers=_bearer(key_a.token(roles=["admin"])))

    assert response.status_code == 401
    assert response.json()["error"] == "mfa_required"


def test_money_moving_admin_route_with_stale_mfa_is_401(client: TestClient, key_a: Any) -> None:
    token = key_a.token(roles=["admin"], amr=["otp"], auth_time=int(time.time()) - 3600)

    response = client.post("/money", headers=_bearer(token))

    assert response.json()["error"] == "mfa_required"


def test_money_moving_admin_route_with_recent_mfa_is_allowed(
    client: TestClient, key_a: Any
) -> None:
    token = key_a.token(sub="boss", roles=["admin"], amr=["pwd", "otp"], auth_time=int(time.time()))

    response = client.post("/money", headers=_bearer(token))

    assert response.status_code == 200
    assert response.json() == {"moved_by": "boss"}


def test_money_moving_route_checks_the_admin_role_before_mfa(
    client: TestClient, key_a: Any
) -> None:
    token = key_a.token(roles=[], amr=["otp"], auth_time=int(time.time()))

    assert client.post("/money", headers=_bearer(token)).status_code == 403


def test_a_token_verified_once_is_not_checked_again_until_it_expires(
    key_a: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = _verifier(key_a)
    now = int(time.time())
    token = key_a.token(sub="u-7", iat=now, exp=now + 2)  # valid for at least a second
    first = verifier.verify(token)
    checks: list[str] = []
    real_decode = jwt.decode

    def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counted)
    assert verifier.verify(token) == first
    assert checks == []  # remembered: no second RS256 check

    time.sleep(max(0.0, now + 2.05 - time.time()))
    _assert_unauthorized(verifier, token)  # past its exp it is checked again, and refused
    assert checks == ["decode"]


def test_a_refused_token_is_not_remembered(key_a: Any, key_b: Any) -> None:
    verifier = _verifier(key_a)
    forged = key_b.token(sub="u-1")
    _assert_unauthorized(verifier, forged)
    _assert_unauthorized(verifier, forged)
