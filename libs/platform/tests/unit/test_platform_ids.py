"""Ids in creation order: UUID version 7's layout, the clock's milliseconds first."""

from __future__ import annotations

import time
import uuid

from billing_platform.ids import time_ordered_uuid


def test_the_layout_is_version_7_with_rfc_4122s_variant() -> None:
    made = [time_ordered_uuid() for _ in range(200)]
    assert {u.version for u in made} == {7}
    assert {u.variant for u in made} == {uuid.RFC_4122}
    assert len(set(made)) == 200


def test_the_first_48_bits_are_the_milliseconds_it_was_made_at() -> None:
    before = time.time_ns() // 1_000_000
    made = time_ordered_uuid()
    after = time.time_ns() // 1_000_000
    assert before <= made.int >> 80 <= after


def test_ids_made_a_millisecond_apart_sort_in_that_order() -> None:
    made = []
    for _ in range(20):
        made.append(time_ordered_uuid())
        time.sleep(0.002)
    assert made == sorted(made)
    assert [str(u) for u in made] == sorted(str(u) for u in made)
