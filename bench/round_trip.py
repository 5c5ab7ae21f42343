"""What one round trip to PostgreSQL costs on this machine, back to back and paced.

A charged call makes two round trips to PostgreSQL on its critical path (admission,
settlement), each waking a backend and then the caller. Back to back, a process wakes a
busy peer; paced (``--gap-ms`` of idle time between statements, as at 100 calls a second
spread over a few connections), every wake-up finds its CPU idle. On a virtual machine
the second kind can cost several times the first. This prints, for each statement and
both ways, the median and p90 wall time and the PostgreSQL CPU per statement, in one run:

- ``SELECT 1``: a round trip and nothing else;
- an ``INSERT`` that commits asynchronously (``synchronous_commit`` off for it, as the
  admission commits);
- an ``INSERT`` that waits for its WAL flush (as the settlement commits).

Uses the dev stack's PostgreSQL only (port 15432, durable commits), started if it is not
running and stopped afterwards unless it was running already.

Run: ``./scripts/run python bench/round_trip.py [--statements 300] [--gap-ms 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
from pipeline import cpu_snapshot, dev_postgres

STATEMENTS = {
    "SELECT 1": "SELECT 1",
    "INSERT, asynchronous commit": "INSERT INTO bench_round_trip (v) SELECT 1"
    " FROM set_config('synchronous_commit', 'off', true)",
    "INSERT, durable commit": "INSERT INTO bench_round_trip (v) VALUES (1)",
}


async def timed(conn: asyncpg.Connection, sql: str, count: int, gap_s: float) -> list[float]:
    wall = []
    for _ in range(count):
        started = time.perf_counter()
        await conn.execute(sql)
        wall.append((time.perf_counter() - started) * 1000)
        if gap_s:
            await asyncio.sleep(gap_s)
    return wall


async def measure(dsn: str, pid: int, count: int, gap_s: float) -> list[str]:
    conn = await asyncpg.connect(dsn)
    lines = []
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_round_trip (v int)")
        for name, sql in STATEMENTS.items():
            for way, gap in (("back to back", 0.0), (f"paced {gap_s * 1000:.0f} ms", gap_s)):
                await timed(conn, sql, 20, gap)  # warm
                before = cpu_snapshot({"postgres": pid})["postgres"]
                wall = await timed(conn, sql, count, gap)
                cpu_us = (cpu_snapshot({"postgres": pid})["postgres"] - before) / count * 1e6
                p90 = sorted(wall)[int(len(wall) * 0.9)]
                lines.append(
                    f"{name:30}{way:>16}{statistics.median(wall):10.3f}{p90:10.3f}{cpu_us:12.0f}"
                )
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_round_trip")
        await conn.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args()
    with dev_postgres() as postgres:
        pid = int((postgres.data / "postmaster.pid").read_text().split()[0])
        lines = asyncio.run(measure(postgres.dsn, pid, args.statements, args.gap_ms / 1000))
    print(f"{'statement':30}{'way':>16}{'p50 ms':>10}{'p90 ms':>10}{'PG CPU us':>12}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
