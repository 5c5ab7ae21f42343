"""Rate limits: the window arithmetic of the shared limit, the copies of its table, and the
per-process limiter. The shared limit's statement runs on PostgreSQL in
tests/integration/test_rate_limits.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from billing_platform.ratelimit import (
    _TAKE,
    RATE_LIMIT_DDL,
    RATE_LIMIT_TAKE_DDL,
    Limit,
    Limited,
    SlidingWindowLimiter,
    Window,
    previous_share,
    rate_limited,
    retry_after_s,
    window_at,
)

ROOT = Path(__file__).resolve().parents[4]
MINUTE_MS = 60_000
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a whole minute


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- windows -------------------------------------------------------------------------------


def test_an_instant_falls_in_the_fixed_window_that_starts_on_a_whole_length() -> None:
    window = window_at(at(12.25), 60)

    assert window.start == T0
    assert window.previous_start == T0 - timedelta(minutes=1)
    assert (window.length_ms, window.remaining_ms) == (MINUTE_MS, 47_750)


def test_the_first_instant_of_a_window_still_covers_all_of_the_previous_one() -> None:
    assert window_at(T0, 60) == Window(T0, MINUTE_MS, MINUTE_MS)
    assert window_at(at(59.999), 60) == Window(T0, MINUTE_MS, 1)


def test_windows_are_cut_the_same_in_any_time_zone() -> None:
    paris = at(30).astimezone(datetime.fromisoformat("2026-03-01T00:00+01:00").tzinfo)

    assert window_at(paris, 60) == window_at(at(30), 60)


@pytest.mark.parametrize(
    ("previous", "remaining_ms", "share"),
    [
        (0, MINUTE_MS, 0),
        (10, MINUTE_MS, 10),
        (10, 30_000, 5),
        (10, 29_999, 5),
        (10, 1, 1),
        (3, 40_000, 2),
    ],
)
def test_the_previous_windows_share_is_rounded_up(
    previous: int, remaining_ms: int, share: int
) -> None:
    assert previous_share(previous, Window(T0, MINUTE_MS, remaining_ms)) == share


# --- when a refused key comes back ----------------------------------------------------------


def test_a_full_window_without_history_frees_a_slot_just_after_it_ends() -> None:
    window = window_at(at(20), 60)  # 40 s left; 5 of 5 used, none before

    # In the next window all 5 still count (ceil) until 1/5 of it has passed: 12 s.
    assert retry_after_s(5, window, 0, 5) == 40 + 12


def test_history_that_slides_out_frees_a_slot_within_the_window() -> None:
    window = window_at(at(15), 60)  # 45 s left; 10 before, 5 now, limit 10

    # One more fits once ceil(10 x left / 60 s) <= 4: left <= 24 s, i.e. 21 s from now.
    assert retry_after_s(10, window, 10, 5) == 21


def test_the_answer_is_when_the_rule_admits_again() -> None:
    limit, previous, current = 10, 10, 5
    now = window_at(at(15), 60)
    wait = retry_after_s(limit, now, previous, current)

    def admits(window: Window) -> bool:
        return previous_share(previous, window) + current < limit

    assert not admits(now)
    assert admits(window_at(at(15 + wait), 60))
    assert not admits(window_at(at(15 + wait - 1), 60))


def test_a_wait_is_at_least_one_second() -> None:
    assert retry_after_s(10, window_at(at(59.9), 60), 10, 9) == 1


# --- the table, the limit, the refusal -----------------------------------------------------


def squeeze(sql: str) -> str:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def rate_limit_migrations() -> list[Path]:
    found = ROOT.glob("services/*/src/*/migrations/*.sql")
    return [p for p in found if "CREATE TABLE rate_limit_hits" in p.read_text()]


def test_the_services_with_shared_limits_own_the_table() -> None:
    owners = {p.parts[p.parts.index("services") + 1] for p in rate_limit_migrations()}
    assert {"checkout", "metering"} <= owners


def test_each_copy_matches_the_library_ddl() -> None:
    for migration in rate_limit_migrations():
        assert squeeze(RATE_LIMIT_DDL) in squeeze(migration.read_text()), migration


def test_the_take_function_is_the_take_statement_word_for_word() -> None:
    found = ROOT.glob("services/*/src/*/migrations/*.sql")
    copies = [p for p in found if "CREATE FUNCTION rate_limit_take" in p.read_text()]

    assert [p.parts[p.parts.index("services") + 1] for p in copies] == ["metering"]
    assert squeeze(RATE_LIMIT_TAKE_DDL) in squeeze(copies[0].read_text())
    assert squeeze(_TAKE) in squeeze(RATE_LIMIT_TAKE_DDL)


@pytest.mark.parametrize(("per_window", "window_s"), [(0, 60), (5, 0)])
def test_a_limit_must_admit_something(per_window: int, window_s: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Limit("x", per_window, window_s)


def test_a_refusal_says_when_to_come_back() -> None:
    error = rate_limited(7, "for this user")

    assert error.status == 429
    assert error.code == "rate_limited"
    assert error.headers == {"Retry-After": "7"}
    assert error.extra == {"retryAfterSeconds": 7}


# --- per process ---------------------------------------------------------------------------


async def test_the_process_limiter_refuses_past_the_limit_until_the_window_slides() -> None:
    now = [100.0]
    limiter = SlidingWindowLimiter(2, 60.0, clock=lambda: now[0])

    assert [await limiter.take("ip") for _ in range(2)] == [None, None]
    now[0] = 130.2
    assert await limiter.take("ip") == Limited(30)
    assert await limiter.take("other") is None
    now[0] = 160.0
    assert await limiter.take("ip") is None
