"""JWT RS256 bearer authentication with roles, as FastAPI dependencies."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import Depends, Request

from billing_platform.context import user_id_var
from billing_platform.errors import ApiError

ADMIN_ROLE = "admin"
SERVICE_ROLE = "service"
# RFC 8176 authentication method references that prove a factor beyond the password.
SECOND_FACTORS = frozenset(
    {"mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm"}
)
DEFAULT_MFA_MAX_AGE_S = 900
# Verified tokens remembered per process (a few hundred bytes each).
VERIFIED_TOKENS_KEPT = 10_000
_CLOCK_SKEW_S = 60


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]
    amr: frozenset[str] = field(default_factory=frozenset)
    auth_time: int | None = None

    def stepped_up_within(self, max_age_s: int, now: float | None = None) -> bool:
        """A second factor was used, at a sign-in no older than ``max_age_s``."""
        if not self.amr & SECOND_FACTORS or self.auth_time is None:
            return False
        age = (time.time() if now is None else now) - self.auth_time
        return -_CLOCK_SKEW_S <= age <= max_age_s

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def ensure_can_access(self, user_id: str) -> None:
        """A user reaches only their own data; admins and services reach anyone's."""
        if user_id != self.user_id and not (self.roles & {ADMIN_ROLE, SERVICE_ROLE}):
            raise ApiError(403, "forbidden", "not allowed to access another user's data")


class JwtVerifier:
    """Checks signature (any configured key, for rotation), ``iss``, ``aud`` and expiry."""

    def __init__(
        self,
        public_keys_pem: list[bytes],
        issuer: str,
        audience: str,
        mfa_max_age_s: int = DEFAULT_MFA_MAX_AGE_S,
    ) -> None:
        self._keys = public_keys_pem
        self._issuer = issuer
        self._audience = audience
        self.mfa_max_age_s = mfa_max_age_s
        # Token -> (principal, expiry): an RS256 check is most of the cost of authenticating a
        # request, and a client sends the same token until it expires. Keys are fixed for the
        # process's life, so a token verified once stays valid until its ``exp``.
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    @classmethod
    def from_files(
        cls,
        paths: list[Path],
        issuer: str,
        audience: str,
        mfa_max_age_s: int = DEFAULT_MFA_MAX_AGE_S,
    ) -> JwtVerifier:
        return cls([p.read_bytes() for p in paths], issuer, audience, mfa_max_age_s)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            self._verified.move_to_end(token)
            return known[0]
        principal, expires = self._verify(token)
        self._verified[token] = (principal, expires)
        if len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        if not self._keys:
            raise ApiError(401, "unauthorized", "no token verification keys configured")
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["RS256"],
                    issuer=self._issuer,
                    audience=self._audience,
                    options={"require": ["exp", "sub", "iss", "aud"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise ApiError(401, "unauthorized", f"invalid token: {exc}") from exc
            return _principal(claims), float(claims["exp"])
        raise ApiError(401, "unauthorized", "invalid token: signature verification failed")


def _principal(claims: dict[str, object]) -> Principal:
    roles = _string_list(claims.get("roles"), "roles")
    amr = _string_list(claims.get("amr"), "amr")
    auth_time = claims.get("auth_time")
    if auth_time is not None and (isinstance(auth_time, bool) or not isinstance(auth_time, int)):
        raise ApiError(401, "unauthorized", "invalid token: auth_time must be an integer")
    return Principal(str(claims["sub"]), frozenset(roles), frozenset(amr), auth_time)


def _string_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(401, "unauthorized", f"invalid token: {name} must be a list of strings")
    return value


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token")
    return token.strip()


async def current_principal(request: Request) -> Principal:
    # async on purpose: a sync dependency runs in a thread and its context var set is lost.
    verifier: JwtVerifier = request.app.state.jwt_verifier
    principal = verifier.verify(_bearer(request))
    user_id_var.set(principal.user_id)
    return principal


def require_role(*roles: str) -> object:
    def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.roles & set(roles):
            raise ApiError(403, "forbidden", f"requires role: {' or '.join(roles)}")
        return principal

    return Depends(check)


def _stepped_up_admin(
    request: Request, principal: Annotated[Principal, require_role(ADMIN_ROLE)]
) -> Principal:
    verifier: JwtVerifier = request.app.state.jwt_verifier
    if not principal.stepped_up_within(verifier.mfa_max_age_s):
        raise ApiError(
            401,
            "mfa_required",
            "this action needs a sign-in with a second factor "
            f"in the last {verifier.mfa_max_age_s // 60} minutes",
        )
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, require_role(ADMIN_ROLE)]
# Money-moving admin actions: the admin role and a recent second factor (step-up MFA).
SteppedUpAdmin = Annotated[Principal, Depends(_stepped_up_admin)]
