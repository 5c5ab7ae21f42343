"""Opaque page cursors: a keyset position behind a kind prefix.

The prefix keeps a cursor of one listing from being accepted by another. A position is a
row id (``encode``/``decode``) or several columns (``encode_key``/``decode_key``).
"""

from __future__ import annotations

import base64

from billing_platform.errors import ApiError


def encode(prefix: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{row_id}".encode()).decode().rstrip("=")


def decode(prefix: str, cursor: str | None) -> int | None:
    """The row id of a cursor this API returned; 400 ``invalid_cursor`` for anything else."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = text.partition(":")
        if found != prefix:
            raise ValueError(found)
        return int(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc


def encode_key(prefix: str, *parts: str) -> str:
    """A cursor for a keyset of several columns (e.g. a time and an id), none with ``|``."""
    text = f"{prefix}:" + "|".join(parts)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_key(prefix: str, cursor: str | None, arity: int) -> tuple[str, ...] | None:
    """The columns of a cursor ``encode_key`` made; 400 ``invalid_cursor`` for anything else."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc
    found, _, value = text.partition(":")
    parts = tuple(value.split("|"))
    if found != prefix or len(parts) != arity or not all(parts):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    return parts
