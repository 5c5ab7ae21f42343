"""A stack of its own for the tests that need a clean, durable platform (``Layout.drill()``).

It archives its WAL with pgBackRest (the restore drill rewinds its database) and nobody
else writes to it, so a reconciliation of it is clean unless these tests break something.
Rebuilt from nothing every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from billing_cli.layout import Layout
from billing_cli.stack import Stack

SERVICE_ENV = {
    "CHECKOUT_PURCHASE_RATE_LIMIT_PER_MINUTE": "1000000",
    "WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "1000000",
    "RECONCILER_SCHEDULE_INTERVAL_S": "0",
    "RECONCILER_CHAIN_SETTLE_S": "0",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/drill" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def drill_stack() -> Iterator[Stack]:
    layout = Layout.drill()
    Stack(layout).down()
    for part in ("postgres", "kafka", "run", "logs"):
        shutil.rmtree(layout.state / part, ignore_errors=True)
    stack = Stack(layout, service_env=SERVICE_ENV)
    try:
        stack.up(lambda label, s: print(f"  {label} ({s:.1f}s)", file=sys.stderr))
        yield stack
    finally:
        stack.down()


def run_billing(*args: str, findings_ok: bool = False) -> str:
    """The CLI against the drill stack; ``reconcile`` and ``probe`` exit 1 on findings."""
    env = {**os.environ, "BILLING_LOCAL_STACK": "drill"}
    result = subprocess.run(
        [sys.executable, "-m", "billing_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode in ((0, 1) if findings_ok else (0,)), result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def billing() -> Callable[..., str]:
    return run_billing
