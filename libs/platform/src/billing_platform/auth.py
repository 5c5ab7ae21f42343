"""JWT RS256 bearer authentication with roles, as FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import Depends, Request

from billing_platform.context import user_id_var
from billing_platform.errors import ApiError

ADMIN_ROLE = "admin"
SERVICE_ROLE = "service"


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def ensure_can_access(self, user_id: str) -> None:
        """A user reaches only their own data; admins and services reach anyone's."""
        if user_id != self.user_id and not (self.roles & {ADMIN_ROLE, SERVICE_ROLE}):
            raise ApiError(403, "forbidden", "not allowed to access another user's data")


class JwtVerifier:
    """Checks signature (any configured key, for rotation), ``iss``, ``aud`` and expiry."""

    def __init__(self, public_keys_pem: list[bytes], issuer: str, audience: str) -> None:
        self._keys = public_keys_pem
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def from_files(cls, paths: list[Path], issuer: str, audience: str) -> JwtVerifier:
        return cls([p.read_bytes() for p in paths], issuer, audience)

    def verify(self, token: str) -> Principal:
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
            roles = claims.get("roles") or []
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ApiError(401, "unauthorized", "invalid token: roles must be a list")
            return Principal(str(claims["sub"]), frozenset(roles))
        raise ApiError(401, "unauthorized", "invalid token: signature verification failed")


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


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, require_role(ADMIN_ROLE)]
