"""The launcher and the running platform, as a newcomer and an operator meet them."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
from billing_cli.procs import pid_alive, wait_until
from billing_cli.stack import Stack

KAFKA_USERS = ("webhook-ingest", "ledger", "metering", "reconciler")


def readyz(stack: Stack) -> dict[str, int]:
    return {
        name: httpx.get(f"{svc.url}/readyz", timeout=5).status_code
        for name, svc in stack.services.items()
    }


def test_status_json_lists_every_component_ready(stack: Stack, billing: Any) -> None:
    status = json.loads(billing("status", "--json"))
    expected = {
        "postgres",
        "kafka",
        "stripe-mock",
        "devllm",
        "checkout",
        "webhook-ingest",
        "ledger",
        "metering",
        "reconciler",
        "web",
    }
    assert set(status) == expected
    assert all(info["ready"] for info in status.values()), status
    assert status["checkout"]["url"] == "http://127.0.0.1:18101"
    # The Credits page, where checkout sends buyers back to, with the services it calls.
    assert status["web"]["url"] == "http://127.0.0.1:15173"
    config = httpx.get(f"{status['web']['url']}/config.json", timeout=5).json()
    assert config["checkoutUrl"] == status["checkout"]["url"]
    assert config["ledgerUrl"] == status["ledger"]["url"]
    page = httpx.get(f"{status['web']['url']}/credits/admin", timeout=5)
    assert page.status_code == 200
    assert '<div id="root">' in page.text
    assert "connect-src 'self' http://127.0.0.1:18101" in page.headers["content-security-policy"]
    missing = httpx.get(f"{status['web']['url']}/assets/nope.js", timeout=5)
    assert missing.status_code == 404
    assert stack.secrets["postgres_password"] not in json.dumps(status)


def test_env_prints_the_dev_settings(stack: Stack, billing: Any) -> None:
    lines = dict(line.split("=", 1) for line in billing("env").splitlines())
    assert lines["BILLING_KAFKA_BOOTSTRAP"] == "127.0.0.1:29092"
    assert lines["BILLING_DATABASE_URL"].startswith("postgresql://billing:")
    assert lines["BILLING_STRIPE_WEBHOOK_SECRETS"].startswith("whsec_")
    assert lines["BILLING_OPENAI_BASE_URL"] == "http://127.0.0.1:18110/v1"
    # Each service's own roles: the runtime one to serve, its schema's owner to migrate.
    assert lines["LEDGER_DATABASE_URL"].startswith("postgresql://ledger_runtime:")
    assert lines["LEDGER_MIGRATE_DATABASE_URL"].startswith("postgresql://ledger_owner:")
    assert lines["CHECKOUT_DB_LEDGER_ROLE"] == "ledger_runtime"


def test_printed_token_is_accepted_by_every_service(stack: Stack, billing: Any) -> None:
    user_token = billing("token", "--user", "alice").strip()
    admin_token = billing("token", "--user", "root", "--admin").strip()
    for svc in stack.services.values():
        me = httpx.get(f"{svc.url}/api/whoami", headers={"Authorization": f"Bearer {user_token}"})
        assert me.json() == {"userId": "alice", "roles": []}
        admin = httpx.get(
            f"{svc.url}/api/whoami", headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert admin.json()["roles"] == ["admin"]
        anonymous = httpx.get(f"{svc.url}/api/whoami")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "unauthorized"


def test_every_service_serves_health_metrics_and_openapi(stack: Stack) -> None:
    for name, svc in stack.services.items():
        assert httpx.get(f"{svc.url}/health").json()["service"] == name
        assert "http_requests_total" in httpx.get(f"{svc.url}/metrics").text
        assert httpx.get(f"{svc.url}/openapi.json").json()["info"]["title"] == name


# The Credits page calls these; the reconciler for its admin view.
BROWSER_FACING = ("checkout", "ledger", "metering", "reconciler")


def test_browser_facing_services_grant_cors_only_to_the_web_origin(stack: Stack) -> None:
    page = stack.web.url  # http://127.0.0.1:15173 on the test stack
    for name, svc in stack.services.items():
        web = httpx.get(f"{svc.url}/health", headers={"Origin": page})
        evil = httpx.get(f"{svc.url}/health", headers={"Origin": "https://evil.example"})
        granted = web.headers.get("access-control-allow-origin")
        assert granted == (page if name in BROWSER_FACING else None), name
        assert "access-control-allow-origin" not in evil.headers, name
        for answer in (web, evil):
            assert answer.headers["x-content-type-options"] == "nosniff", name
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], name
            assert "max-age=" in answer.headers["strict-transport-security"], name


def test_broker_outage_turns_readiness_503_and_back_without_restart(stack: Stack) -> None:
    pids = {name: stack.procs.running_pid(name) for name in stack.services}
    stack.kafka.stop()
    try:
        assert wait_until(lambda: all(readyz(stack)[n] == 503 for n in KAFKA_USERS), 10)
        assert readyz(stack)["checkout"] == 200  # checkout does not depend on Kafka
        body = httpx.get(f"{stack.services['ledger'].url}/readyz").json()
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["kafka"] != "ok"
    finally:
        stack.kafka.start()
        stack.kafka.wait_ready(60)
    assert wait_until(lambda: set(readyz(stack).values()) == {200}, 30), readyz(stack)
    assert {name: stack.procs.running_pid(name) for name in stack.services} == pids


def test_up_again_is_a_no_op_and_keeps_processes(stack: Stack) -> None:
    pids = {part.name: stack.procs.running_pid(part.name) for part in stack.components}
    started = time.monotonic()
    stack.up()
    assert time.monotonic() - started < 30
    assert {part.name: stack.procs.running_pid(part.name) for part in stack.components} == pids


def test_component_killed_hard_is_restarted_over_its_stale_pid_file(stack: Stack) -> None:
    pid = stack.procs.running_pid("devllm")
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 5)
    assert stack.procs.pid_file("devllm").exists()  # left behind, as after a crash
    stack.devllm.start()
    stack.devllm.wait_ready(30)
    assert stack.procs.running_pid("devllm") not in (None, pid)
