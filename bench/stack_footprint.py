"""Start-up time, memory and idle CPU of the local stack.

Brings the dev stack down, times ``up`` (warm: downloads cached), reports each component's
resident memory (its whole process tree, e.g. postgres and its backends), with ``--idle S``
the CPU each burns in S seconds of doing nothing (after ``--settle`` seconds; Kafka's JIT
compiler threads shown apart), then times ``down`` unless ``--keep``. Idle CPU is a fixed
cost every billed call shares: at 100 calls/s, 10 ms/s of it is 0.1 ms per call.

Run: ``./scripts/run python bench/stack_footprint.py [--runs N] [--idle 60 --settle 60]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from billing_cli.layout import Layout
from billing_cli.stack import Stack
from pipeline import KAFKA_JIT, cpu_snapshot


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int, tree: dict[int, list[int]]) -> float:
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss_kib(pid)
        todo.extend(tree.get(pid, []))
    return total / 1024


def root_pid(stack: Stack, name: str) -> int | None:
    if name == "postgres":
        pidfile = stack.postgres.data / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.exists() else None
    return stack.procs.running_pid(name)


def memory_report(stack: Stack) -> float:
    tree = children_map()
    total = 0.0
    print(f"{'component':16}{'RSS MiB':>10}")
    for part in stack.components:
        pid = root_pid(stack, part.name)
        mib = tree_rss_mib(pid, tree) if pid else 0.0
        total += mib
        print(f"{part.name:16}{mib:10.1f}")
    print(f"{'total':16}{total:10.1f}")
    return total


def idle_report(stack: Stack, seconds: float) -> float:
    """Each component's CPU in ``seconds`` of no traffic, in ms per second."""
    roots = {p.name: pid for p in stack.components if (pid := root_pid(stack, p.name))}
    before = cpu_snapshot(roots)
    time.sleep(seconds)
    after = cpu_snapshot(roots)
    burned = {name: (after[name] - before[name]) * 1000 / seconds for name in roots}
    print(f"{'component':16}{'idle ms/s':>10}")
    for name, ms in burned.items():
        print(f"{name:16}{ms:10.1f}")
    jit = (after[KAFKA_JIT] - before[KAFKA_JIT]) * 1000 / seconds if "kafka" in roots else 0
    print(f"{'(kafka: JIT)':16}{jit:10.1f}")
    total = sum(burned.values())
    print(f"{'total':16}{total:10.1f}")
    print(f"{'total but JIT':16}{total - jit:10.1f}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument("--idle", type=float, default=0, help="seconds of idle CPU to measure")
    parser.add_argument("--settle", type=float, default=60, help="seconds before --idle")
    args = parser.parse_args()
    stack = Stack(Layout.dev())
    ups, downs = [], []
    for run in range(args.runs):
        stack.down()
        started = time.monotonic()
        stack.up()
        ups.append(time.monotonic() - started)
        if run == args.runs - 1:
            time.sleep(5)  # let services settle after their first requests
            memory_report(stack)
            if args.idle:
                time.sleep(args.settle)
                idle_report(stack, args.idle)
            if args.keep:
                break
        started = time.monotonic()
        stack.down()
        downs.append(time.monotonic() - started)
    print(
        f"billing up (warm)   runs={len(ups)} median={statistics.median(ups):.1f}s "
        f"min={min(ups):.1f}s max={max(ups):.1f}s"
    )
    if downs:
        print(f"billing down        runs={len(downs)} median={statistics.median(downs):.1f}s")


if __name__ == "__main__":
    main()
