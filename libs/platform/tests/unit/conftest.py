"""RSA key pairs and a token factory shared by the platform unit tests."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_platform.logging import JsonFormatter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "test-issuer"
AUDIENCE = "test-audience"

TokenFactory = Callable[..., str]


class KeyPair:
    issuer = ISSUER
    audience = AUDIENCE

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, **overrides: Any) -> str:
        """An RS256 token valid for ISSUER/AUDIENCE; ``name=None`` drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": "user-1",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "roles": [],
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private_pem, algorithm="RS256")

    def write_public(self, folder: Path, name: str = "public.pem") -> Path:
        path = folder / name
        path.write_bytes(self.public_pem)
        return path


@pytest.fixture(scope="session")
def key_a() -> KeyPair:
    return KeyPair()


@pytest.fixture(scope="session")
def key_b() -> KeyPair:
    return KeyPair()


@pytest.fixture(scope="session")
def key_unknown() -> KeyPair:
    return KeyPair()


@pytest.fixture(autouse=True)
def _no_scope_left_over() -> Any:
    """Each test starts outside any request or message scope, whatever ran before it in
    this process (tests elsewhere set ids at module level, outside a task)."""
    from billing_platform import context

    variables: tuple[ContextVar[Any], ...] = (
        context.request_id_var,
        context.correlation_id_var,
        context.user_id_var,
        context.log_fields_var,
    )
    tokens = [(var, var.set(None)) for var in variables]
    yield
    for var, token in reversed(tokens):
        var.reset(token)


class _JsonLines(logging.Handler):
    """Formats at emit time, while the request's context vars are still set."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("unit-test"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def app_log() -> Iterator[list[dict[str, Any]]]:
    """The app factory's log lines (the access line above all), as the JSON they are."""
    handler = _JsonLines()
    logger = logging.getLogger("billing_platform.app")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
