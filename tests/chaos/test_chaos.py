"""Seeded chaos runs of the whole platform (``billing chaos``), two short seeds.

Each run brings up its own stack (``Layout.chaos()``), loads it while SIGKILLing Kafka,
PostgreSQL and services on the seed's schedule, and checks every grant, clawback, charge and
adjustment the clients saw against the journal, a reconciliation run and the DLQs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.integration

LOAD_S = 40


def chaos_run(seed: int) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "billing_cli",
            "chaos",
            "--seed",
            str(seed),
            "--seconds",
            str(LOAD_S),
            "--json",
        ],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if summary["passed"] else 1), result.stderr[-3000:]
    return summary


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
def test_seeded_chaos_run_loses_and_doubles_nothing(seed: int) -> None:
    summary = chaos_run(seed)
    events, kills = summary["events"], summary["kills"]

    assert summary["failures"] == []
    assert (summary["lost"], summary["doubled"]) == (0, 0)
    assert (summary["findings"], summary["deadLetters"]) == (0, 0), summary["findingDetails"]
    assert summary["quiet"]["settled"], summary["quiet"]
    assert [r["status"] for r in summary["reconciliation"]] == ["clean"] * len(
        summary["reconciliation"]
    )
    assert summary["reconciliation"]
    assert kills.get("kafka", 0) >= 1, kills
    assert kills.get("postgres", 0) >= 1, kills
    assert sum(1 for n in kills.values() if n > 0) >= 3, kills
    assert events["paymentsConfirmed"] > 0, events
    assert events["chargesConfirmed"] > 0, events
    assert events["adjustments"] > 0, events
    assert events["webhookDeliveries"] > events["purchases"], events
    assert summary["passed"] is True
