"""Group commit: many concurrent requests share one database transaction.

Every commit waits for a WAL flush, so one transaction per request caps a service at the
disk's flush rate. Here a request submits its item and awaits its result; one writer task
takes everything queued (up to ``max_batch``) as soon as the previous batch has committed,
writes it with the caller's ``write_batch(conn, items) -> results`` in ONE transaction and
only then answers each waiter. A result is therefore never seen before its commit: an
acknowledged item is as durable as with a transaction of its own.

A batch that fails for a reason of its own (a bad item, a constraint) is written again one
item per transaction, so the bad item fails alone and the others still get their results.
An outage (``billing_platform.outages.is_outage``: the database down, restarting, out of
connections) fails every waiter of the batch with ``DependencyUnavailable``, which the apps
answer 503: retrying item by item against a database that is away would only add load.

The queue is bounded: when it is full ``submit`` raises ``Overloaded`` at once and nothing
is written (load shedding; the caller retries later). No lock is held anywhere; the writer's
one open transaction is the only thing that spans a network call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Histogram

from billing_platform.outages import DependencyUnavailable, is_outage

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Opens a connection (e.g. ``pool.acquire()``); the connection has ``transaction()``.
Acquire = Callable[[], AbstractAsyncContextManager[Any]]

BATCH_SIZE = Histogram(
    "group_commit_batch_size",
    "Items written per group-commit transaction",
    ["committer"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
SHED = Counter("group_commit_overloaded_total", "Items refused: queue full", ["committer"])
FALLBACKS = Counter(
    "group_commit_fallbacks_total",
    "Batches that failed and were written again one item per transaction",
    ["committer"],
)


class Overloaded(Exception):
    """The queue is full: the item was not taken (shed the request; retry later)."""


class CommitterStopped(DependencyUnavailable):
    """The committer is stopping or stopped: the item was not written."""


class BatchResultMismatch(RuntimeError):
    """``write_batch`` answered a different number of results than it got items."""


@dataclass(frozen=True)
class _Waiting(Generic[T, R]):
    item: T
    result: asyncio.Future[R]


class GroupCommitter(Generic[T, R]):
    """A lifecycle part: ``start`` runs the writer, ``stop`` writes what is queued and ends."""

    def __init__(
        self,
        name: str,
        acquire: Acquire,
        write_batch: Callable[[Any, Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        max_queue: int = 1024,
        max_wait_s: float = 0.0,
        drain_timeout_s: float = 10.0,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.name = name
        self._acquire = acquire
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._max_wait_s = max_wait_s
        self._drain_timeout_s = drain_timeout_s
        self._queue: deque[_Waiting[T, R]] = deque()
        self._ready = asyncio.Event()
        self._closed = True
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"group-commit:{self.name}")

    async def stop(self) -> None:
        """Refuse new items, write the queued ones (for at most ``drain_timeout_s``), end."""
        self._closed = True
        self._ready.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self._drain_timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail(list(self._queue), CommitterStopped(f"{self.name}: stopped"))
        self._queue.clear()

    async def submit(self, item: T) -> R:
        """The item's result, once the transaction that wrote it has committed."""
        return await self._enqueue(item)

    def _enqueue(self, item: T) -> asyncio.Future[R]:
        if self._closed:
            raise CommitterStopped(f"{self.name}: not running")
        if len(self._queue) >= self._max_queue:
            SHED.labels(self.name).inc()
            raise Overloaded(f"{self.name}: {self._max_queue} items already queued")
        waiting = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._ready.set()
        return waiting.result

    async def _run(self) -> None:
        while batch := await self._next_batch():
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                self._fail(batch, CommitterStopped(f"{self.name}: stopped mid-batch"))
                raise
            except Exception as exc:  # a bug here must not end the writer or strand waiters
                log.exception("group commit failed", extra={"committer": self.name})
                self._fail(batch, exc)

    async def _next_batch(self) -> list[_Waiting[T, R]]:
        """What is queued, once there is something; empty only when closed and drained."""
        while not self._queue:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        if self._max_wait_s > 0:
            await self._fill_up()
        take = min(len(self._queue), self._max_batch)
        return [self._queue.popleft() for _ in range(take)]

    async def _fill_up(self) -> None:
        """Wait up to ``max_wait_s`` for a full batch (fewer, longer transactions)."""
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while len(self._queue) < self._max_batch and not self._closed:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)

    async def _commit(self, batch: list[_Waiting[T, R]]) -> None:
        # A waiter already gone (its request cancelled) was never promised anything.
        live = [w for w in batch if not w.result.done()]
        if not live:
            return
        BATCH_SIZE.labels(self.name).observe(len(live))
        try:
            results = await self._write([w.item for w in live])
        except Exception as exc:
            if is_outage(exc) or len(live) == 1:
                self._fail(live, exc)
                return
            FALLBACKS.labels(self.name).inc()
            log.warning(
                "group commit batch failed; writing its items one by one",
                extra={"committer": self.name, "items": len(live), "error": type(exc).__name__},
            )
            await self._one_by_one(live)
            return
        for waiting, result in zip(live, results, strict=True):
            _resolve(waiting.result, result)

    async def _one_by_one(self, batch: list[_Waiting[T, R]]) -> None:
        for index, waiting in enumerate(batch):
            try:
                [result] = await self._write([waiting.item])
            except Exception as exc:
                if is_outage(exc):
                    self._fail(batch[index:], exc)
                    return
                _reject(waiting.result, exc)
            else:
                _resolve(waiting.result, result)

    async def _write(self, items: list[T]) -> Sequence[R]:
        async with self._acquire() as conn, conn.transaction():
            results = await self._write_batch(conn, items)
            if len(results) != len(items):
                # Raised inside the transaction, so nothing of the batch commits.
                raise BatchResultMismatch(f"{len(results)} results for {len(items)} items")
        return results

    def _fail(self, batch: Sequence[_Waiting[T, R]], error: BaseException) -> None:
        for waiting in batch:
            _reject(waiting.result, _for_waiter(self.name, error))


def _for_waiter(name: str, error: BaseException) -> BaseException:
    # One exception object per waiter: each raises it in its own task (and traceback).
    if is_outage(error):
        failed = DependencyUnavailable(f"{name}: batch not written: {type(error).__name__}")
        failed.__cause__ = error
        return failed
    return error


def _resolve(future: asyncio.Future[R], result: R) -> None:
    if not future.done():
        future.set_result(result)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
