"""Which UTC day a run covers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from reconciler.period import InvalidPeriod, Period, parse_period, yesterday

NOW = datetime(2025, 3, 1, 0, 30, tzinfo=UTC)


def test_no_date_means_yesterday_utc() -> None:
    assert parse_period(None, NOW) == Period(date(2025, 2, 28))


def test_yesterday_is_taken_in_utc_whatever_the_clock_zone() -> None:
    # 01:30 on 1 March in UTC+2 is still 28 February in UTC.
    local = datetime(2025, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))

    assert yesterday(local) == Period(date(2025, 2, 27))


def test_a_date_is_that_utc_day_from_midnight_to_midnight() -> None:
    period = parse_period("2024-02-29", NOW)

    assert period.start == datetime(2024, 2, 29, tzinfo=UTC)
    assert period.end == datetime(2024, 3, 1, tzinfo=UTC)


def test_today_may_be_reconciled_as_a_partial_day() -> None:
    assert parse_period("2025-03-01", NOW).day == date(2025, 3, 1)


@pytest.mark.parametrize(
    "text", ["2025-02-30", "2025-13-01", "20250201", "2025-2-01", "2025-W05-1", "", " 2025-02-01"]
)
def test_anything_but_a_real_yyyy_mm_dd_day_is_refused(text: str) -> None:
    with pytest.raises(InvalidPeriod):
        parse_period(text, NOW)


def test_a_day_that_has_not_begun_is_refused() -> None:
    with pytest.raises(InvalidPeriod, match="not begun"):
        parse_period("2025-03-02", NOW)
