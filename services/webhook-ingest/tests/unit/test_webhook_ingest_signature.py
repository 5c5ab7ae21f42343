"""Stripe signature verification, cross-checked against the official stripe SDK."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import stripe
from webhook_ingest.signature import SignatureError, verify_signature

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"
TOLERANCE = 300
BODY = json.dumps(
    {"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {"id": "cs_1"}}}
).encode()


def _sign(body: bytes, secret: str, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def _header(body: bytes, secret: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    return f"t={t},v1={_sign(body, secret, t)}"


def _code(body: bytes, header: str | None, secrets: list[str], now: float | None = None) -> str:
    with pytest.raises(SignatureError) as info:
        verify_signature(body, header, secrets, TOLERANCE, time.time() if now is None else now)
    return info.value.code


def _sdk_accepts(body: bytes, header: str, secret: str) -> bool:
    try:
        # The SDK signs the payload as text; Stripe bodies are UTF-8, so the bytes are equal.
        verify = stripe.WebhookSignature.verify_header
        return bool(verify(body.decode(), header, secret, TOLERANCE))  # type: ignore[no-untyped-call]
    except stripe.SignatureVerificationError:
        return False


@pytest.mark.parametrize(
    "body",
    [BODY, b"{}", '{"name": "Zoë 🚀", "amount": 999}'.encode(), b'{"a":1}\n'],
)
def test_a_header_we_accept_is_accepted_by_the_sdk(body: bytes) -> None:
    header = _header(body, SECRET)

    verify_signature(body, header, [SECRET], TOLERANCE, time.time())
    assert _sdk_accepts(body, header, SECRET)


def test_a_tampered_body_is_rejected_by_both() -> None:
    header = _header(BODY, SECRET)
    tampered = BODY.replace(b"cs_1", b"cs_2")

    assert _code(tampered, header, [SECRET]) == "invalid_signature"
    assert not _sdk_accepts(tampered, header, SECRET)


def test_a_wrong_secret_is_rejected_by_both() -> None:
    header = _header(BODY, "whsec_someone_else")

    assert _code(BODY, header, [SECRET]) == "invalid_signature"
    assert not _sdk_accepts(BODY, header, SECRET)


def test_during_rotation_either_secret_is_accepted() -> None:
    for signer in (OLD_SECRET, SECRET):
        header = _header(BODY, signer)

        verify_signature(BODY, header, [OLD_SECRET, SECRET], TOLERANCE, time.time())
        assert _sdk_accepts(BODY, header, signer)


def test_any_of_several_v1_signatures_may_match() -> None:
    t = int(time.time())
    header = f"t={t},v1={_sign(BODY, 'whsec_rolled', t)},v1={_sign(BODY, SECRET, t)},v0=ab12"

    verify_signature(BODY, header, [SECRET], TOLERANCE, time.time())
    assert _sdk_accepts(BODY, header, SECRET)


def test_a_v0_signature_alone_does_not_count() -> None:
    t = int(time.time())
    header = f"t={t},v0={_sign(BODY, SECRET, t)}"

    assert _code(BODY, header, [SECRET]) == "malformed_signature"
    assert not _sdk_accepts(BODY, header, SECRET)


def test_a_stale_timestamp_is_rejected_by_both() -> None:
    header = _header(BODY, SECRET, int(time.time()) - TOLERANCE - 5)

    assert _code(BODY, header, [SECRET]) == "stale_signature"
    assert not _sdk_accepts(BODY, header, SECRET)


def test_a_timestamp_just_inside_the_tolerance_is_accepted() -> None:
    now = 1_700_000_000
    for t in (now - TOLERANCE, now + TOLERANCE):
        verify_signature(BODY, _header(BODY, SECRET, t), [SECRET], TOLERANCE, now)


def test_a_timestamp_too_far_in_the_future_is_rejected() -> None:
    now = 1_700_000_000
    header = _header(BODY, SECRET, now + TOLERANCE + 1)

    assert _code(BODY, header, [SECRET], now=now) == "stale_signature"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_missing_signature(header: str | None) -> None:
    assert _code(BODY, header, [SECRET]) == "missing_signature"


@pytest.mark.parametrize(
    "header",
    [
        "v1=abcdef",
        "t=1700000000",
        "t=,v1=abcdef",
        "t=soon,v1=abcdef",
        "t=-5,v1=abcdef",
        "garbage",
        "t=1700000000,v0=abcdef",
    ],
)
def test_a_header_without_timestamp_or_v1_is_malformed(header: str) -> None:
    assert _code(BODY, header, [SECRET]) == "malformed_signature"
    assert not _sdk_accepts(BODY, header, SECRET)


def test_non_ascii_signatures_are_invalid_not_an_error() -> None:
    header = f"t={int(time.time())},v1=é{'0' * 63}"

    assert _code(BODY, header, [SECRET]) == "invalid_signature"


def test_no_configured_secret_accepts_nothing() -> None:
    assert _code(BODY, _header(BODY, SECRET), []) == "invalid_signature"


def test_an_empty_secret_is_never_a_key() -> None:
    assert _code(BODY, _header(BODY, ""), [""]) == "invalid_signature"


def test_the_error_names_no_secret() -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(BODY, _header(BODY, "whsec_x"), [SECRET], TOLERANCE, time.time())

    assert SECRET not in str(info.value)
