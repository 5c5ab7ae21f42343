"""GroupCommitter: concurrent submissions share transactions, each waiter gets its own answer.

The connection port is a fake that keeps the writes of a transaction apart until it commits
(and drops them on a rollback), so the tests see exactly what a database would hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from billing_platform.group_commit import (
    CommitterStopped,
    GroupCommitter,
    Overloaded,
)
from billing_platform.outages import DependencyUnavailable


class BadItem(ValueError):
    pass


class FakeDb:
    """Transactions over a list of committed rows; ``acquire`` is the committer's port."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.transactions: list[list[str]] = []  # items each write_batch call was given
        self.rollbacks = 0
        self.down: BaseException | None = None
        self.gate: asyncio.Event | None = None  # when set, writes wait for it
        self._staged: list[str] = []

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeDb]:
        if self.down is not None:
            raise self.down
        yield self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self._staged = []
        try:
            yield
        except BaseException:
            self.rollbacks += 1
            raise
        self.committed.extend(self._staged)

    async def write_batch(self, conn: FakeDb, items: Sequence[str]) -> list[str]:
        self.transactions.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        for item in items:
            if item.startswith("bad"):
                raise BadItem(item)
            conn._staged.append(item)
        return [f"stored:{item}" for item in items]


@pytest.fixture
def db() -> FakeDb:
    return FakeDb()


@asynccontextmanager
async def running(db: FakeDb, **options: Any) -> AsyncIterator[GroupCommitter[str, str]]:
    committer: GroupCommitter[str, str] = GroupCommitter(
        "test", db.acquire, db.write_batch, **options
    )
    await committer.start()
    try:
        yield committer
    finally:
        await committer.stop()


async def outcomes(committer: GroupCommitter[str, str], items: list[str]) -> list[Any]:
    return await asyncio.gather(*(committer.submit(i) for i in items), return_exceptions=True)


async def test_concurrent_items_share_one_transaction_and_each_gets_its_own_result(
    db: FakeDb,
) -> None:
    items = [f"item-{n}" for n in range(10)]
    async with running(db) as committer:
        results = await outcomes(committer, items)

    assert results == [f"stored:{i}" for i in items]
    assert db.transactions == [items]  # one transaction, in submission order
    assert db.committed == items


async def test_a_waiter_is_answered_only_after_its_commit(db: FakeDb) -> None:
    async with running(db) as committer:
        result = await committer.submit("one")
        seen_committed = list(db.committed)

    assert result == "stored:one"
    assert seen_committed == ["one"]


async def test_batches_are_at_most_max_batch_items(db: FakeDb) -> None:
    items = [f"item-{n}" for n in range(10)]
    async with running(db, max_batch=4) as committer:
        await outcomes(committer, items)

    assert [len(t) for t in db.transactions] == [4, 4, 2]
    assert db.committed == items


async def test_items_queued_while_a_batch_commits_go_in_the_next_one(db: FakeDb) -> None:
    db.gate = asyncio.Event()
    async with running(db) as committer:
        first = asyncio.ensure_future(committer.submit("first"))
        while not db.transactions:
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(committer.submit(f"later-{n}")) for n in range(3)]
        await asyncio.sleep(0)
        db.gate.set()
        await asyncio.gather(first, *later)

    assert db.transactions == [["first"], ["later-0", "later-1", "later-2"]]


async def test_a_bad_item_fails_alone_and_the_others_are_written_one_by_one(db: FakeDb) -> None:
    items = ["a", "b", "bad-c", "d"]
    async with running(db) as committer:
        results = await outcomes(committer, items)

    assert results[:2] == ["stored:a", "stored:b"]
    assert isinstance(results[2], BadItem)
    assert results[3] == "stored:d"
    assert db.committed == ["a", "b", "d"]
    # The shared batch rolled back, then one transaction per item.
    assert db.transactions == [items, ["a"], ["b"], ["bad-c"], ["d"]]
    assert db.rollbacks == 2


async def test_an_outage_fails_every_waiter_without_retrying_item_by_item(db: FakeDb) -> None:
    db.down = ConnectionRefusedError("database away")
    async with running(db) as committer:
        results = await outcomes(committer, ["a", "b", "c"])

    assert all(isinstance(r, DependencyUnavailable) for r in results)
    assert all(isinstance(r.__cause__, ConnectionRefusedError) for r in results)
    assert len({id(r) for r in results}) == 3  # each waiter raises its own exception
    assert db.committed == []


async def test_an_outage_during_the_write_rolls_back_and_fails_the_batch(db: FakeDb) -> None:
    class AdminShutdown(Exception):
        sqlstate = "57P01"

    async def failing(conn: FakeDb, items: Sequence[str]) -> list[str]:
        conn._staged.extend(items)
        raise AdminShutdown("terminating connection")

    committer: GroupCommitter[str, str] = GroupCommitter("test", db.acquire, failing)
    await committer.start()
    results = await outcomes(committer, ["a", "b"])
    await committer.stop()

    assert all(isinstance(r, DependencyUnavailable) for r in results)
    assert db.committed == []
    assert db.rollbacks == 1


async def test_the_writer_goes_on_after_a_failed_batch(db: FakeDb) -> None:
    async with running(db) as committer:
        db.down = ConnectionRefusedError("database away")
        failed = await outcomes(committer, ["a"])
        db.down = None
        result = await committer.submit("b")

    assert isinstance(failed[0], DependencyUnavailable)
    assert result == "stored:b"
    assert db.committed == ["b"]


async def test_a_wrong_number_of_results_commits_nothing_of_the_batch(db: FakeDb) -> None:
    async def short(conn: FakeDb, items: Sequence[str]) -> list[str]:
        conn._staged.extend(items)
        return ["only-one"]

    committer: GroupCommitter[str, str] = GroupCommitter("test", db.acquire, short)
    await committer.start()
    results = await outcomes(committer, ["a", "b"])
    await committer.stop()

    # Each item alone then gets exactly one result, as it should.
    assert results == ["only-one", "only-one"]
    assert db.committed == ["a", "b"]
    assert db.rollbacks == 1


async def test_a_full_queue_refuses_at_once_and_takes_nothing(db: FakeDb) -> None:
    db.gate = asyncio.Event()
    async with running(db, max_queue=2) as committer:
        writing = asyncio.ensure_future(committer.submit("in-flight"))
        while not db.transactions:
            await asyncio.sleep(0)
        queued = [asyncio.ensure_future(committer.submit(f"q{n}")) for n in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await committer.submit("one-too-many")
        assert committer.queued == 2
        db.gate.set()
        await asyncio.gather(writing, *queued)

    assert db.committed == ["in-flight", "q0", "q1"]


async def test_stop_writes_what_is_queued_then_refuses_new_items(db: FakeDb) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter("test", db.acquire, db.write_batch)
    await committer.start()
    pending = [asyncio.ensure_future(committer.submit(f"item-{n}")) for n in range(5)]
    await asyncio.sleep(0)
    await committer.stop()

    assert [p.result() for p in pending] == [f"stored:item-{n}" for n in range(5)]
    with pytest.raises(CommitterStopped):
        await committer.submit("late")
    assert db.committed == [f"item-{n}" for n in range(5)]


async def test_stop_fails_the_waiters_of_a_write_that_does_not_finish(db: FakeDb) -> None:
    db.gate = asyncio.Event()  # never set: the transaction hangs
    committer: GroupCommitter[str, str] = GroupCommitter(
        "test", db.acquire, db.write_batch, drain_timeout_s=0.01
    )
    await committer.start()
    stuck = asyncio.ensure_future(committer.submit("stuck"))
    while not db.transactions:
        await asyncio.sleep(0)
    queued = asyncio.ensure_future(committer.submit("queued"))
    await asyncio.sleep(0)
    await committer.stop()
    results = await asyncio.gather(stuck, queued, return_exceptions=True)

    assert [type(r) for r in results] == [DependencyUnavailable] * 2
    assert [type(getattr(r, "__cause__", None)) for r in results] == [CommitterStopped] * 2
    assert db.committed == []
    assert db.rollbacks == 1


async def test_a_cancelled_waiter_is_not_written(db: FakeDb) -> None:
    db.gate = asyncio.Event()
    async with running(db) as committer:
        first = asyncio.ensure_future(committer.submit("first"))
        while not db.transactions:
            await asyncio.sleep(0)
        gone = asyncio.ensure_future(committer.submit("gone"))
        kept = asyncio.ensure_future(committer.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        db.gate.set()
        await asyncio.gather(first, kept)

    assert db.committed == ["first", "kept"]


async def test_with_a_wait_the_writer_fills_a_batch_before_writing(db: FakeDb) -> None:
    async with running(db, max_batch=3, max_wait_s=30) as committer:
        first = asyncio.ensure_future(committer.submit("a"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(committer.submit(i)) for i in ("b", "c")]
        await asyncio.gather(first, *rest)

    assert db.transactions == [["a", "b", "c"]]


def test_sizes_must_be_positive(db: FakeDb) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommitter("test", db.acquire, db.write_batch, max_batch=0)
