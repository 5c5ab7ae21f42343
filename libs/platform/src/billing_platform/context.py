"""Request/message scoped identifiers, carried into logs, traces and Kafka headers."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)


def new_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str:
    """The correlation id of the current scope, minting one if the scope has none."""
    value = correlation_id_var.get()
    if value is None:
        value = new_id()
        correlation_id_var.set(value)
    return value
