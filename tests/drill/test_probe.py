"""`billing probe` on a clean stack: the checkout, AI and reconciliation probes pass and the
metrics file says so."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from billing_cli.stack import Stack
from prometheus_client.parser import text_string_to_metric_families


def test_every_probe_passes_on_the_stack_and_the_metrics_file_says_so(
    drill_stack: Stack, billing: Callable[..., str], tmp_path: Path
) -> None:
    metrics = tmp_path / "billing_probe.prom"
    user = f"probe-{uuid.uuid4().hex[:8]}"

    out = billing("probe", "--user", user, "--json", "--metrics-file", str(metrics))

    report = json.loads(out)
    assert report["passed"] is True, report
    assert [p["probe"] for p in report["probes"]] == ["checkout", "ai", "reconciliation"]
    assert all(p["passed"] for p in report["probes"]), report
    success = {
        sample.labels["probe"]: sample.value
        for family in text_string_to_metric_families(metrics.read_text())
        for sample in family.samples
        if sample.name == "billing_probe_success"
    }
    assert success == {"checkout": 1.0, "ai": 1.0, "reconciliation": 1.0}
