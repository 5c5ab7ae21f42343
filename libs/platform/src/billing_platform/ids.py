"""Ids in the order they are made, for rows that every AI call or posting adds.

A random id (UUID version 4) puts each new row's entry on a random leaf of its primary key:
on a table that grows by a row per call, nearly every insert reads a leaf into the buffer
cache for that one entry, and the first change to each leaf after a checkpoint copies the
whole page into the WAL. With the milliseconds first (the layout of UUID version 7),
inserts go to the right-hand leaf. The ledger's SQL makes the same layout
(``time_ordered_uuid``, the ledger's migration 0017).
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62


def time_ordered_uuid() -> uuid.UUID:
    """48 bits of the clock's milliseconds since the epoch, version 7, RFC 4122's variant,
    and 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    high = (rand >> 62) & 0xFFF  # 12 bits after the version
    low = rand & ((1 << 62) - 1)
    value = ((millis & ((1 << 48) - 1)) << 80) | _VERSION_7 | (high << 64) | _VARIANT | low
    return uuid.UUID(int=value)
