"""The period a reconciliation run covers: one UTC day, [00:00, next 00:00)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class InvalidPeriod(ValueError):
    """The requested day is not a real calendar day, or it has not begun yet."""


@dataclass(frozen=True)
class Period:
    day: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)


def yesterday(now: datetime) -> Period:
    return Period(now.astimezone(UTC).date() - timedelta(days=1))


def parse_period(text: str | None, now: datetime) -> Period:
    """``YYYY-MM-DD`` -> that UTC day; None -> yesterday. Today is allowed (a partial day)."""
    if text is None:
        return yesterday(now)
    # fromisoformat alone would also take "20240101" or week dates.
    if not _DAY.fullmatch(text):
        raise InvalidPeriod("date must be YYYY-MM-DD")
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidPeriod(f"not a calendar day: {text}") from exc
    if day > now.astimezone(UTC).date():
        raise InvalidPeriod(f"{text} has not begun yet (UTC)")
    return Period(day)
