"""One chaos run: a fresh stack, load under kills, quiet, checks, teardown, a summary."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from billing_cli.chaos import checks, killer
from billing_cli.chaos.model import Model, seeded
from billing_cli.chaos.workload import USERS, Workload, admin_token
from billing_cli.layout import Layout
from billing_cli.stack import Stack

# The service settings of a chaos stack: client traffic from one IP far above the
# production per-IP limits, no spend caps to pause the users, holds and claims of killed
# calls given up quickly, and a reconciler that may check everything as soon as it is quiet.
CHAOS_SERVICE_ENV = {
    "CHECKOUT_PURCHASE_RATE_LIMIT_PER_MINUTE": "1000000",
    "WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "1000000",
    "METERING_RATE_LIMIT_PER_MINUTE": "1000000",
    "METERING_CAP_PER_DAY_MILLICREDITS": "1000000000",
    "METERING_CAP_PER_HOUR_MILLICREDITS": "1000000000",
    "METERING_HOLD_TTL_S": "10",
    "LEDGER_DLQ_DEPTH_INTERVAL_S": "1",
    "LEDGER_HOLD_SWEEP_INTERVAL_S": "1",
    "RECONCILER_SCHEDULE_INTERVAL_S": "0",
    "RECONCILER_CHAIN_SETTLE_S": "0",
    "RECONCILER_LAG_GRACE_S": "5",
}
# How long clients keep retrying after the load stops (a purchase key left in progress by a
# killed checkout, a metering claim waiting for its hold to lapse).
DRAIN_S = 45.0
QUIET_TIMEOUT_S = 120.0

Progress = Callable[[str], None]


def fresh_stack() -> Stack:
    """The chaos layout, stopped and wiped (keys kept): every run starts from empty books."""
    layout = Layout.chaos()
    stack = Stack(layout, service_env=CHAOS_SERVICE_ENV)
    stack.down()
    for part in ("postgres", "kafka", "logs", "run"):
        shutil.rmtree(layout.state / part, ignore_errors=True)
    return Stack(layout, service_env=CHAOS_SERVICE_ENV)


def run(seed: int, seconds: float, progress: Progress) -> dict[str, Any]:
    stack = fresh_stack()
    try:
        stack.up(lambda label, s: progress(f"{label} ({s:.1f}s)"))
        return asyncio.run(campaign(stack, seed, seconds, progress))
    finally:
        stack.down()


async def campaign(stack: Stack, seed: int, seconds: float, progress: Progress) -> dict[str, Any]:
    master = seeded(seed)
    plan = killer.schedule(seeded(master.getrandbits(64)), seconds)
    rngs = [seeded(master.getrandbits(64)) for _ in range(USERS)]
    model = Model()
    first_day = datetime.now(UTC).date()
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64)) as http:
        load = Workload(stack, model, http, seed)
        kills = killer.Killer(stack, plan)
        started = time.monotonic()
        progress(f"load: {USERS} users, {len(plan)} kills planned")
        work = asyncio.create_task(load.run(rngs))
        chaos = asyncio.create_task(kills.run())
        await asyncio.sleep(seconds)
        await kills.mandatory_done.wait()
        kills.stopping = True
        load.stop(DRAIN_S)
        progress(f"load stopped after {time.monotonic() - started:.0f}s; draining")
        await chaos
        restarted = await asyncio.to_thread(killer.restart_all, stack)
        await work
        progress("waiting for the pipeline to go quiet")
        quiet = await checks.wait_quiet(stack.postgres.dsn, stack.kafka.bootstrap, QUIET_TIMEOUT_S)
        report = await verify(stack, model, http, _days(first_day), kills.errors)
    return summary(seed, seconds, model, kills, report, quiet, restarted)


def _days(first: date) -> list[date]:
    last = datetime.now(UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


async def verify(
    stack: Stack, model: Model, http: httpx.AsyncClient, days: list[date], kills_errors: list[str]
) -> checks.Report:
    report = checks.Report()
    books = await checks.read_books(stack.postgres.dsn, model.users)
    checks.check_books(model, books, report)
    url = f"{stack.services['reconciler'].url}/api/admin/reconcile"
    headers = {"Authorization": f"Bearer {admin_token(stack)}"}
    await checks.reconcile(http, url, headers, days, report)
    await checks.dead_letters(stack.kafka.bootstrap, stack.topic_namespace, report)
    for error in kills_errors:
        report.fail("restarts", error)
    for anomaly in model.anomalies:
        report.fail("api", anomaly)
    return report


def render(result: dict[str, Any]) -> list[str]:
    """The summary for people: one line per figure, then every failure."""
    kills = ", ".join(f"{k} {n}" for k, n in result["kills"].items()) or "none"
    events = ", ".join(f"{k} {n}" for k, n in result["events"].items())
    lines = [
        f"seed {result['seed']}, {result['seconds']:.0f}s of load: "
        + ("PASSED" if result["passed"] else "FAILED"),
        f"events: {events}",
        f"kills: {kills}",
        f"lost {result['lost']}, doubled {result['doubled']}, reconciler findings "
        f"{result['findings']}, dead letters {result['deadLetters']}, quiet {result['quiet']}",
    ]
    lines += [f"  failure: {f}" for f in result["failures"]]
    lines += [f"  finding: {f['kind']} {f['detail']}" for f in result["findingDetails"]]
    lines += [
        f"  dead letter: {d['originalTopic']} {d['key']} {d['errorType']}: {d['errorMessage']}"
        for d in result["deadLetterDetails"]
    ]
    return lines


def summary(
    seed: int,
    seconds: float,
    model: Model,
    kills: killer.Killer,
    report: checks.Report,
    quiet: dict[str, int],
    restarted: list[str],
) -> dict[str, Any]:
    settled = all(quiet.get(k, 1) == 0 for k in ("outbox", "lag", "holds"))
    passed = (
        settled
        and not report.failures
        and not report.findings
        and not report.dead_letters
        and bool(report.reconciliation)
    )
    return {
        "seed": seed,
        "seconds": seconds,
        "passed": passed,
        "events": model.events(),
        "kills": dict(sorted(kills.kills.items())),
        "killLog": kills.log,
        "restartNotes": kills.notes,
        "restartedAfterLoad": restarted,
        "quiet": {**quiet, "settled": settled},
        "lost": report.lost,
        "doubled": report.doubled,
        "failures": report.failures,
        "failuresByCheck": dict(report.per_check),
        "reconciliation": report.reconciliation,
        "findings": len(report.findings),
        "findingDetails": report.findings[:50],
        "deadLetters": len(report.dead_letters),
        "deadLetterDetails": report.dead_letters[:50],
        "http": model.http_summary(),
    }
