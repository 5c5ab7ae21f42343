"""SIGKILL a component of the stack on a seeded schedule, then start it again.

One kill at a time: the component is killed, stays down for a seeded while, is started with
the launcher's own ``start`` and waited for until ready, and only then does the next
countdown begin. Kafka, PostgreSQL and one service come first (in a seeded order), so every
run kills both pieces of infrastructure at least once. That first Kafka kill keeps the broker
down past the consumers' session timeout, so every run also has each group's session expire
and rejoin (a path a short outage never takes).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from billing_cli.components import Component, Postgres
from billing_cli.layout import SERVICES
from billing_cli.procs import LaunchError, pid_alive, wait_until
from billing_cli.stack import Stack

INFRASTRUCTURE = ["kafka", "postgres"]
TARGETS = [*INFRASTRUCTURE, *SERVICES]
READY_TIMEOUT_S = 120.0
# The consumers' session.timeout.ms (10 s) and a heartbeat interval (3 s) more.
OUTLASTS_SESSIONS_S = 13.0


@dataclass(frozen=True)
class Kill:
    target: str
    wait_s: float  # from the previous restart (or the start of the load) to the kill
    down_s: float  # from the kill to the restart


def schedule(rng: random.Random, seconds: float) -> list[Kill]:
    """The run's kills in order; the first three always cover Kafka, PostgreSQL, a service."""
    first = [*INFRASTRUCTURE, rng.choice(sorted(SERVICES))]
    rng.shuffle(first)
    extra = max(0, int(seconds / 10) - len(first))
    targets = first + [rng.choice(TARGETS) for _ in range(extra)]
    plan = [Kill(t, rng.uniform(1.0, 4.0), rng.uniform(0.5, 3.0)) for t in targets]
    at = targets.index("kafka")
    plan[at] = Kill("kafka", plan[at].wait_s, OUTLASTS_SESSIONS_S)
    return plan


def component(stack: Stack, target: str) -> Component:
    if target == "kafka":
        return stack.kafka
    if target == "postgres":
        return stack.postgres
    return stack.services[target]


class Killer:
    def __init__(self, stack: Stack, plan: list[Kill]) -> None:
        self.stack = stack
        self.plan = plan
        self.kills: Counter[str] = Counter()
        self.log: list[dict[str, object]] = []
        self.stopping = False
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.mandatory_done = asyncio.Event()

    async def run(self) -> None:
        """Work through the plan until stopped; the first three kills are never skipped."""
        for i, kill in enumerate(self.plan):
            await asyncio.sleep(kill.wait_s)
            if self.stopping and i >= 3:
                break
            await asyncio.to_thread(self.kill_and_restart, kill)
            if i == 2 or i == len(self.plan) - 1:
                self.mandatory_done.set()
        self.mandatory_done.set()

    def kill_and_restart(self, kill: Kill) -> None:
        part = component(self.stack, kill.target)
        started = time.monotonic()
        if not part.running():
            self.errors.append(f"{kill.target} was found down before its kill")
        else:
            sigkill(part)
            self.kills[kill.target] += 1
        time.sleep(kill.down_s)
        self.restart(part)
        self.log.append({"target": kill.target, "down_s": round(time.monotonic() - started, 1)})

    def restart(self, part: Component) -> None:
        """Start it again as a supervisor would: a start that fails is retried (and noted)."""
        for attempt in range(1, 4):
            try:
                restart(part)
                return
            except LaunchError as exc:
                self.notes.append(f"{part.name} start {attempt} failed: {str(exc)[-600:]}")
        self.errors.append(f"{part.name} did not come back after 3 starts")


def sigkill(part: Component) -> None:
    """SIGKILL the component's process (for PostgreSQL: the postmaster) and wait it out."""
    if isinstance(part, Postgres):
        _kill_postmaster(part)
        return
    pid = part.procs.running_pid(part.name)
    if pid is None:
        raise LaunchError(f"{part.name} is not running; nothing to kill")
    os.killpg(pid, signal.SIGKILL)
    if not wait_until(lambda: not pid_alive(pid), 30):
        raise LaunchError(f"{part.name} (pid {pid}) survived SIGKILL")


def _kill_postmaster(pg: Postgres) -> None:
    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    children = _children(pid)
    os.kill(pid, signal.SIGKILL)
    # Backends notice the postmaster's death and exit; a new postmaster refuses to start
    # while any of them still holds the old shared memory.
    if not wait_until(lambda: not any(pid_alive(c) for c in [pid, *children]), 30):
        raise LaunchError(f"postgres backends of {pid} outlived their postmaster")


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def restart(part: Component) -> None:
    part.start()
    part.wait_ready(READY_TIMEOUT_S)


def restart_all(stack: Stack) -> list[str]:
    """Start whatever is not running (after the load, or after a failed restart)."""
    started = []
    for part in stack.components:
        if not part.running() or not part.ready():
            restart(part)
            started.append(part.name)
    return started
