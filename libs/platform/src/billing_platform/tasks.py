"""Background work a service runs on a period, as a lifecycle part of its app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """End a background task and wait until it has ended (a no-op for None)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Periodic:
    """Calls ``tick`` after ``first_delay_s``, then again ``every`` seconds after each call.

    ``every`` may be a function, for schedules whose next pause depends on the clock. A tick
    that fails is logged and the next round tries again: the database, the broker or a
    remote API may be away for a while, and the task must outlive that.
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], Awaitable[Any]],
        every: float | Callable[[], float],
        first_delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self._tick = tick
        self._pause = every if callable(every) else (lambda: float(every))
        self._first_delay_s = first_delay_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(self._first_delay_s)
        while True:
            try:
                await self._tick()
            except Exception as exc:
                log.warning("%s failed; retrying next round", self.name, exc_info=exc)
            await asyncio.sleep(self._pause())
