"""Dev credentials of a local stack: JWT key pair, DB passwords, Stripe and OpenAI keys.

They are made on first use, kept under the stack's ignored state dir, and never committed.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from billing_cli.layout import Layout

ISSUER = "billing-dev"
AUDIENCE = "billing-platform"


def _write_private(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def ensure_keys(layout: Layout) -> tuple[Path, Path]:
    private, public = layout.keys / "jwt-private.pem", layout.keys / "jwt-public.pem"
    if private.exists() and public.exists():
        return private, public
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return private, public


def ensure_secrets(layout: Layout) -> dict[str, str]:
    path = layout.keys / "secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded
    values = {
        "postgres_password": secrets.token_urlsafe(18),
        # Stripe-shaped dev values; stripe-mock accepts any test-mode key.
        "stripe_api_key": "sk_test_" + secrets.token_hex(12),
        "stripe_webhook_secret": "whsec_" + secrets.token_hex(16),
        "openai_api_key": "sk-dev-" + secrets.token_hex(12),
    }
    _write_private(path, json.dumps(values, indent=2))
    return values


def ensure_db_passwords(layout: Layout, roles: list[str]) -> dict[str, str]:
    """A password per database role of the stack, made the first time the role is named."""
    path = layout.keys / "db-roles.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if missing := [role for role in roles if role not in stored]:
        stored.update({role: secrets.token_urlsafe(18) for role in missing})
        _write_private(path, json.dumps(stored, indent=2))
    return {role: stored[role] for role in roles}


def mint_token(
    layout: Layout,
    user: str,
    roles: list[str] | None = None,
    ttl_s: int = 3600,
    *,
    mfa: bool = False,
) -> str:
    """A dev token; ``mfa`` adds what an identity provider states after a second factor."""
    private, _ = ensure_keys(layout)
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + ttl_s,
        "roles": roles or [],
    }
    if mfa:
        claims |= {"amr": ["pwd", "otp"], "auth_time": now}
    return jwt.encode(claims, private.read_bytes(), algorithm="RS256")
