"""Masking of PII and secrets, and the JSON log line format."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import pytest
from billing_platform.context import correlation_id_var, request_id_var, user_id_var
from billing_platform.logging import JsonFormatter, mask_text, mask_user_id


@pytest.mark.parametrize(
    ("raw", "leak"),
    [
        ("mail alice.smith+tag@example.co.uk now", "alice.smith+tag@example.co.uk"),
        ("key sk_live_51HxYzAbCdEf0123456789 used", "51HxYzAbCdEf0123456789"),
        ("key sk_test_abcdef123456 used", "abcdef123456"),
        ("rk_live_AbC123dEf456 restricted", "AbC123dEf456"),
        ("secret=whsec_0123456789abcdefABCDEF", "0123456789abcdefABCDEF"),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "eyJhbGciOi"),
        ("authorization: bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ],
)
def test_mask_text_removes_pii_and_secrets(raw: str, leak: str) -> None:
    masked = mask_text(raw)

    assert leak not in masked
    assert masked != raw


def test_mask_text_keeps_a_recognisable_placeholder() -> None:
    assert mask_text("to bob@example.com") == "to ***@***"
    assert mask_text("k=sk_live_abcdef123456") == "k=sk_***"
    assert mask_text("s=whsec_abcdef123456") == "s=whsec_***"
    assert mask_text("Bearer abc.def") == "Bearer ***"


def test_mask_text_leaves_ordinary_text_alone() -> None:
    text = "charged 500 credits for user 42 on task_abc (sk is short)"

    assert mask_text(text) == text


def test_mask_user_id_is_stable_and_hides_the_raw_id() -> None:
    masked = mask_user_id("user-12345")

    assert re.fullmatch(r"u_[0-9a-f]{12}", masked)
    assert masked == mask_user_id("user-12345")
    assert masked != mask_user_id("user-12346")
    assert "12345" not in masked


def _record(
    msg: str, *args: Any, extra: dict[str, Any] | None = None, exc_info: Any = None
) -> logging.LogRecord:
    logger = logging.getLogger("billing.test")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra
    )


def _format(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter("svc-test").format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


@pytest.fixture
def scope_ids() -> Iterator[None]:
    values: list[tuple[ContextVar[str | None], str]] = [
        (request_id_var, "req-1"),
        (correlation_id_var, "corr-1"),
        (user_id_var, "user-secret-id-77"),
    ]
    tokens = [(var, var.set(value)) for var, value in values]
    yield
    for var, token in reversed(tokens):
        var.reset(token)


def test_json_line_has_service_level_logger_and_message() -> None:
    body = _format(_record("paid %s credits", 12))

    assert body["service"] == "svc-test"
    assert body["level"] == "warning"
    assert body["logger"] == "billing.test"
    assert body["msg"] == "paid 12 credits"
    assert body["ts"].endswith("+00:00")


def test_json_line_without_scope_has_no_ids() -> None:
    body = _format(_record("hello"))

    assert not {"request_id", "correlation_id", "user"} & body.keys()


@pytest.mark.usefixtures("scope_ids")
def test_json_line_carries_ids_and_masked_user_from_context() -> None:
    line = JsonFormatter("svc-test").format(_record("hello"))
    body = json.loads(line)

    assert body["request_id"] == "req-1"
    assert body["correlation_id"] == "corr-1"
    assert body["user"] == mask_user_id("user-secret-id-77")
    assert re.fullmatch(r"u_[0-9a-f]{12}", body["user"])
    assert "user-secret-id-77" not in line


def test_message_is_masked() -> None:
    body = _format(_record("customer %s paid with %s", "eve@example.com", "sk_live_abcdef123456"))

    assert "eve@example.com" not in body["msg"]
    assert "abcdef123456" not in body["msg"]


def test_extra_fields_are_included_and_masked() -> None:
    extra = {
        "email": "carol@example.org",
        "nested": {"auth": "Bearer tok.en.value", "keys": ["whsec_abcdef123456"]},
        "amount": 1500,
    }
    line = JsonFormatter("svc-test").format(_record("event", extra=extra))
    body = json.loads(line)

    assert body["amount"] == 1500
    assert body["email"] == "***@***"
    assert body["nested"] == {"auth": "Bearer ***", "keys": ["whsec_***"]}
    for leak in ("carol@example.org", "tok.en.value", "abcdef123456"):
        assert leak not in line


def test_exception_text_is_included_and_masked() -> None:
    try:
        raise ValueError("bad key sk_test_abcdef123456 for dave@example.com")
    except ValueError:
        record = _record("failed", exc_info=sys.exc_info())

    body = _format(record)

    assert "ValueError" in body["exc"]
    assert "abcdef123456" not in body["exc"]
    assert "dave@example.com" not in body["exc"]
