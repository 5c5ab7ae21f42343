"""Page cursors: what one listing hands out, it takes back; anything else is a 400."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from billing_platform import cursors
from billing_platform.errors import ApiError

AT = datetime(2026, 11, 26, 7, 43, 1, 123456, tzinfo=UTC)


def test_a_row_id_cursor_round_trips() -> None:
    assert cursors.decode("e", cursors.encode("e", 42)) == 42
    assert cursors.decode("e", None) is None


def test_a_time_and_id_cursor_round_trips() -> None:
    assert cursors.decode_at("p", cursors.encode_at("p", AT, "p-1")) == (AT, "p-1")
    assert cursors.decode_at("p", "") is None


@pytest.mark.parametrize(
    "cursor",
    [
        "bm9wZQ",  # "nope": no prefix
        cursors.encode("e", 42),  # another listing's cursor
        cursors.encode_at("q", AT, "p-1"),  # another listing's cursor
        cursors._wrap("p", "not a time|p-1"),
        cursors._wrap("p", AT.isoformat()),  # no id
        "%%%",
    ],
)
def test_a_cursor_this_listing_did_not_make_is_refused(cursor: str) -> None:
    with pytest.raises(ApiError) as refused:
        cursors.decode_at("p", cursor)
    assert (refused.value.status, refused.value.code) == (400, "invalid_cursor")


def test_a_row_id_cursor_of_another_kind_is_refused() -> None:
    with pytest.raises(ApiError, match="cursor is not one this API returned"):
        cursors.decode("e", cursors.encode_at("e", AT, "x"))
