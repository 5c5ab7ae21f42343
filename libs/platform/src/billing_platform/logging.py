"""Structured JSON logs with request/correlation ids and masking of PII and secrets."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from billing_platform.context import correlation_id_var, request_id_var, user_id_var

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Stripe and OpenAI keys, webhook secrets and bearer tokens must never reach a log line.
_SECRET = re.compile(r"\b(sk|rk|whsec|pk)[_-](?:[A-Za-z]+[_-])?[A-Za-z0-9]{6,}\b")
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+")
# Log fields that carry user ids (one, or a list): their values are logged as pseudonyms,
# whichever module logs them. Admins are users too, so "actor" is one of them.
USER_ID_KEYS = frozenset(
    {
        "user",
        "user_id",
        "userId",
        "user_ids",
        "target_user",
        "target_user_id",
        "targetUserId",
        "paused_user",
        "actor",
        "requested_by",
        "updated_by",
    }
)
# "target" names what an admin action was done to, "<kind>:<id>"; only user ids are masked.
TARGET_KEY = "target"
_USER_TARGET = "user:"
_PSEUDONYM = re.compile(r"u_[0-9a-f]{12}")
# color_message: uvicorn's ANSI-coloured duplicate of msg.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def mask_user_id(user_id: str) -> str:
    """Stable pseudonym so logs of one user can be followed without exposing the id."""
    return "u_" + hashlib.sha256(user_id.encode()).hexdigest()[:12]


# Cheap first look: most log text holds none of them, and one search beats three rewrites.
_MAYBE_SECRET = re.compile(r"@|(?i:bearer)|\b(?:sk|rk|whsec|pk)[_-]")


def mask_text(text: str) -> str:
    if not _MAYBE_SECRET.search(text):
        return text
    text = _BEARER.sub("Bearer ***", text)
    text = _SECRET.sub(lambda m: m.group(1) + "_***", text)
    return _EMAIL.sub("***@***", text)


def mask_user_field(value: Any) -> Any:
    """A user id field's value as logged: pseudonyms (an existing one is kept as it is)."""
    if isinstance(value, str):
        return value if _PSEUDONYM.fullmatch(value) else mask_user_id(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_user_field(v) for v in value]
    return value


def mask_target(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_USER_TARGET):
        return _USER_TARGET + mask_user_field(value[len(_USER_TARGET) :])
    return _mask_value(value)


def mask_field(key: str, value: Any) -> Any:
    """A log field's value with PII and secrets masked, user id fields by their key."""
    if key in USER_ID_KEYS:
        return mask_user_field(value)
    if key == TARGET_KEY:
        return mask_target(value)
    return _mask_value(value)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": mask_text(record.getMessage()),
        }
        self._add_context(body)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                body[key] = mask_field(key, value)
        if record.exc_info:
            body["exc"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(body, default=str)

    @staticmethod
    def _add_context(body: dict[str, Any]) -> None:
        from opentelemetry import trace

        span_ctx = trace.get_current_span().get_span_context()
        if span_ctx.is_valid:
            body["trace_id"] = format(span_ctx.trace_id, "032x")
        for name, var in (("request_id", request_id_var), ("correlation_id", correlation_id_var)):
            if (value := var.get()) is not None:
                body[name] = value
        if (user := user_id_var.get()) is not None:
            body["user"] = mask_user_id(user)


def configure_logging(service: str, level: str = "INFO") -> None:
    # A line names no source file, thread or process, so none is looked up for it: the
    # caller's frame alone is a walk up the stack on every line (the logging HOWTO's
    # "Optimization" settings).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print raw paths and bypass masking; our middleware logs requests.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
