"""Opaque page cursors: a keyset position behind a kind prefix.

The prefix keeps a cursor of one listing from being accepted by another. A position is a
row id (``encode``/``decode``) or a time and a text id (``encode_at``/``decode_at``), for
listings ordered newest first by a timestamp with the id breaking ties.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from billing_platform.errors import ApiError

T = TypeVar("T")


def encode(prefix: str, row_id: int) -> str:
    return _wrap(prefix, str(row_id))


def decode(prefix: str, cursor: str | None) -> int | None:
    """The row id of a cursor this API returned; 400 ``invalid_cursor`` for anything else."""
    value = _unwrap(prefix, cursor)
    return None if value is None else _parsed(int, value)


def encode_at(prefix: str, at: datetime, row_id: str) -> str:
    return _wrap(prefix, f"{at.isoformat()}|{row_id}")


def decode_at(prefix: str, cursor: str | None) -> tuple[datetime, str] | None:
    """The (time, id) of a cursor ``encode_at`` made; 400 ``invalid_cursor`` otherwise."""
    value = _unwrap(prefix, cursor)
    if value is None:
        return None
    at, _, row_id = value.partition("|")
    if not row_id:
        raise _invalid()
    return _parsed(datetime.fromisoformat, at), row_id


def _wrap(prefix: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{value}".encode()).decode().rstrip("=")


def _unwrap(prefix: str, cursor: str | None) -> str | None:
    if not cursor:
        return None
    text = _parsed(lambda c: base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)).decode(), cursor)
    found, _, value = text.partition(":")
    if found != prefix:
        raise _invalid()
    return value


def _parsed(parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except ValueError as exc:
        raise _invalid() from exc


def _invalid() -> ApiError:
    return ApiError(400, "invalid_cursor", "cursor is not one this API returned")
