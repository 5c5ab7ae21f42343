"""Periodic: the one way a service runs background work on a period."""

from __future__ import annotations

import asyncio

from billing_platform.tasks import Periodic


async def test_ticks_repeat_and_a_failing_tick_does_not_end_the_task() -> None:
    calls: list[int] = []

    async def tick() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise ConnectionRefusedError("database away")

    task = Periodic("test-periodic", tick, 0.001)
    await task.start()
    while len(calls) < 5:
        await asyncio.sleep(0.005)
    await task.stop()

    assert calls[:5] == [0, 1, 2, 3, 4]


async def test_the_first_tick_waits_for_the_first_delay_and_stop_cancels_it() -> None:
    calls: list[str] = []

    async def tick() -> None:
        calls.append("tick")

    task = Periodic("test-delayed", tick, 0.001, first_delay_s=30)
    await task.start()
    await asyncio.sleep(0.02)
    await task.stop()

    assert calls == []


async def test_the_pause_may_be_computed_for_each_round() -> None:
    pauses: list[float] = []
    ticks = asyncio.Event()

    def pause() -> float:
        pauses.append(0.001)
        if len(pauses) == 3:
            ticks.set()
        return 0.001

    async def tick() -> None:
        return None

    task = Periodic("test-schedule", tick, pause)
    await task.start()
    await asyncio.wait_for(ticks.wait(), 5)
    await task.stop()

    assert len(pauses) >= 3
