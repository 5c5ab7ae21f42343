"""Request/message scoped identifiers, carried into logs, traces and Kafka headers."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)
# What a request's handler adds to that request's access line: one line per request, not two.
log_fields_var: ContextVar[dict[str, Any] | None] = ContextVar("log_fields", default=None)


def new_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str:
    """The correlation id of the current scope, minting one if the scope has none."""
    value = correlation_id_var.get()
    if value is None:
        value = new_id()
        correlation_id_var.set(value)
    return value


def annotate_request(**fields: Any) -> None:
    """Add fields to the current request's access log line (masked like any log field)."""
    current = log_fields_var.get()
    if current is not None:
        current.update(fields)
