"""Stripe's webhook signature scheme, checked on the raw request body.

Header ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]``; a delivery is
genuine when some ``v1`` equals hex(HMAC-SHA256(secret, f"{t}." + body)) for some
configured secret (several are accepted at once so a secret can be rotated).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass


class SignatureError(ValueError):
    """A refused delivery; ``code`` is the stable error code answered to the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ParsedHeader:
    timestamp: int
    signatures: list[str]


def parse_header(header: str | None) -> ParsedHeader:
    if header is None or not header.strip():
        raise SignatureError("missing_signature", "Stripe-Signature header is missing")
    timestamp: str | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and timestamp is None:
            timestamp = value.strip()
        elif name == "v1":
            signatures.append(value.strip())
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()) or not signatures:
        raise SignatureError("malformed_signature", "Stripe-Signature needs t= and v1=")
    return ParsedHeader(int(timestamp), signatures)


def expected_signature(raw: bytes, timestamp: int, secret: str) -> str:
    signed = f"{timestamp}.".encode() + raw
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    raw: bytes, header: str | None, secrets: Sequence[str], tolerance_s: int, now: float
) -> None:
    """Raise ``SignatureError`` unless ``header`` signs ``raw`` recently with a secret."""
    parsed = parse_header(header)
    # An empty secret would be a key anyone can sign with.
    if not any(_signed_with(raw, parsed, secret) for secret in secrets if secret):
        raise SignatureError("invalid_signature", "no signature matches the payload")
    if abs(now - parsed.timestamp) > tolerance_s:
        raise SignatureError("stale_signature", "signature timestamp outside the tolerance")


def _signed_with(raw: bytes, parsed: ParsedHeader, secret: str) -> bool:
    expected = expected_signature(raw, parsed.timestamp, secret).encode()
    # Non-ASCII never matches a hex digest; comparing bytes keeps compare_digest total.
    return any(
        hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
        for candidate in parsed.signatures
    )
