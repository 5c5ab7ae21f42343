"""What a consumer's inbox claim of a whole batch leaves to apply."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def first_claimed(items: Iterable[T], key: Callable[[T], str], claimed: set[str]) -> list[T]:
    """The items whose key this batch newly claimed, in order and once each.

    A fetched batch may hold one record twice (a producer's retry, an outbox relayed again);
    the claim keeps one, so the effect must be applied once too.
    """
    taken: set[str] = set()
    first = []
    for item in items:
        k = key(item)
        if k in claimed and k not in taken:
            taken.add(k)
            first.append(item)
    return first
