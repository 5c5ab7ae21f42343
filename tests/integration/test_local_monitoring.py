"""`billing up --with-monitoring`: a real Prometheus scraping the running stack, rules loaded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from billing_cli.stack import Stack


@pytest.fixture
def prometheus(stack: Stack) -> Iterator[str]:
    stack.start_monitoring()
    try:
        yield stack.prometheus.url
    finally:
        stack.prometheus.stop()


def _get(url: str, path: str) -> Any:
    answer = httpx.get(f"{url}{path}", timeout=5)
    answer.raise_for_status()
    return answer.json()["data"]


def _healthy_targets(url: str) -> dict[str, str]:
    targets = _get(url, "/api/v1/targets")["activeTargets"]
    return {t["labels"]["service"]: t["health"] for t in targets}


def test_prometheus_scrapes_every_service_with_the_alert_rules_loaded(
    stack: Stack, prometheus: str
) -> None:
    deadline = time.monotonic() + 40
    while set(_healthy_targets(prometheus).values()) != {"up"}:
        assert time.monotonic() < deadline, _healthy_targets(prometheus)
        time.sleep(1)

    assert set(_healthy_targets(prometheus)) == set(stack.services)
    loaded = {
        rule["name"]
        for group in _get(prometheus, "/api/v1/rules")["groups"]
        for rule in group["rules"]
    }
    shipped = yaml.safe_load(stack.prometheus.rules.read_text())
    assert loaded == {rule["alert"] for group in shipped["groups"] for rule in group["rules"]}
    up = _get(prometheus, '/api/v1/query?query=sum(up{job="billing"})')["result"]
    assert float(up[0]["value"][1]) == len(stack.services)
