"""Consumer positions kept in the service's own database, beside the effects they cover.

A consumer's handler applies a record (or a fetched batch of one topic, across its
partitions) in one transaction, the *unit of work* of that message scope; the same
transaction stores the next offset of each partition it covers in ``consumer_offsets``.
So the effect and the position commit together: no crash can separate them, and no broker
round trip is spent on an offset commit per batch.

When partitions are assigned, the consumer resumes from these rows; a partition without
one starts from the earliest record Kafka retains, never from the group's offset in Kafka
(a copy for lag tooling only, and ahead of a database restored to an earlier point). A
database restored to an earlier point therefore resumes from the position it knew at that
point and replays the rest from Kafka; the inbox claims, restored with it, absorb what it
had applied. Rewinding a consumer means updating its rows here, not in Kafka.

The table is bookkeeping created in every service schema by the migration runner
(``billing_platform.db``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from billing_platform.db import HasPool


@dataclass
class OffsetScope:
    """The position a message scope moves its partition to once its effect is durable."""

    group: str
    topic: str
    partition: int
    next_offset: int
    saved: bool = False


_scopes: ContextVar[tuple[OffsetScope, ...]] = ContextVar("offset_scopes", default=())

_UPSERT = (
    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[])"
    " ON CONFLICT (group_id, topic, partition) DO UPDATE"
    # Never backwards: a partition's previous owner finishing late cannot rewind it.
    " SET next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset),"
    " updated_at = now()"
)


def enter_scope(scope: OffsetScope | Sequence[OffsetScope] | None) -> None:
    """Set the scope of the message (or batch) the current task is about to handle: one
    position, or one per partition of a batch that spans several."""
    if scope is None:
        _scopes.set(())
    else:
        _scopes.set((scope,) if isinstance(scope, OffsetScope) else tuple(scope))


@asynccontextmanager
async def unit_of_work(db: HasPool) -> AsyncIterator[Any]:
    """The message scope's transaction: the handler's effect, then the consumer position.

    Outside a consumer (an API request) it is a plain transaction. A handler takes one unit
    of work per message scope: with two, the first would save the position before the
    second's effect is durable.
    """
    scopes = _scopes.get()
    async with db.pool.acquire() as conn:
        async with conn.transaction():
            yield conn
            await save(conn, scopes)
        for scope in scopes:
            scope.saved = True


async def save(conn: Any, scopes: Iterable[OffsetScope]) -> None:
    rows = [(s.group, s.topic, s.partition, s.next_offset) for s in scopes]
    if rows:
        await conn.execute(_UPSERT, *map(list, zip(*rows, strict=True)))


class OffsetStore:
    """One consumer group's positions in one service schema."""

    def __init__(self, db: HasPool) -> None:
        self._db = db

    async def load(self, group: str, partitions: Iterable[tuple[str, int]]) -> dict[Any, int]:
        """The stored next offset of each of these partitions that has one."""
        wanted = list(partitions)
        if not wanted:
            return {}
        rows = await self._db.pool.fetch(
            "SELECT o.topic, o.partition, o.next_offset FROM consumer_offsets o"
            " JOIN unnest($2::text[], $3::int[]) AS w(topic, partition)"
            " USING (topic, partition) WHERE o.group_id = $1",
            group,
            [t for t, _ in wanted],
            [p for _, p in wanted],
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def store(self, group: str, positions: Mapping[tuple[str, int], int]) -> None:
        """Positions the consumer reached without a unit of work (records it skipped,
        dead-lettered, or handled with no database effect)."""
        scopes = [OffsetScope(group, t, p, o) for (t, p), o in positions.items()]
        async with self._db.pool.acquire() as conn:
            await save(conn, scopes)
