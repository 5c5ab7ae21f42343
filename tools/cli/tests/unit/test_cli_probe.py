"""`billing probe`: each probe's pass and fail paths against a fake platform, the metrics as
Prometheus reads them, and a push to a real (tiny) HTTP server standing in for a Pushgateway."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from billing_cli import main, probe
from billing_cli.layout import Layout
from billing_cli.probe import Prober, ProbeResult, ProbeSettings
from billing_cli.target import OpsTarget, TargetError, TokenSource
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

runner = CliRunner(mix_stderr=False)

SECRET = "whsec_probe_test"
USER_TOKEN = "user-token"
ADMIN_TOKEN = "admin-token"
PUBLIC = "https://billing.example.com"
ADMIN = "https://billing-admin.example.com"

PACKAGES = [
    {"code": "growth", "priceCents": 2499, "currency": "usd"},
    {"code": "starter", "priceCents": 999, "currency": "usd"},
]
RATE_CARD = {
    "version": "2026-11-01",
    "models": [
        {"model": "gpt-4o", "inputUsdPer1M": "5.00", "outputUsdPer1M": "15.00"},
        {"model": "gpt-4o-mini", "inputUsdPer1M": "0.15", "outputUsdPer1M": "0.60"},
        {"model": "o3-mini", "inputUsdPer1M": "1.10", "outputUsdPer1M": "4.40"},
    ],
}


def _signed_by(secret: str, header: str, body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(parts.get("v1", ""), expected.hexdigest())


@dataclass
class Call:
    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakePlatform:
    """The services' answers a probe relies on, with switches for what goes wrong."""

    # GETs of a paid purchase before it reads fulfilled; None: never.
    fulfilled_after: int | None = 1
    ai_status: int = 200
    charged: int = 18
    findings: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    status: str = "none"
    paid_polls: int = 0
    pushed: list[Call] = field(default_factory=list)

    def answer(self, call: Call) -> tuple[int, Any]:
        self.calls.append(call)
        route = (call.method, call.path)
        auth = call.headers.get("authorization")
        if call.method == "PUT" and call.path.startswith("/metrics/job/"):
            self.pushed.append(call)
            return 200, {}
        if route == ("GET", "/api/packages"):
            return 200, PACKAGES
        if route == ("POST", "/api/purchases"):
            if auth != f"Bearer {USER_TOKEN}":
                return 401, {"error": "unauthorized", "message": "no token"}
            self.status = "pending"
            return 201, {"purchaseId": "pur_1", "checkoutUrl": "https://x", "status": "pending"}
        if route == ("GET", "/api/purchases/pur_1"):
            return 200, self._purchase()
        if route == ("POST", "/webhooks/stripe"):
            if not _signed_by(SECRET, call.headers.get("stripe-signature", ""), call.body):
                return 400, {"error": "invalid_signature", "message": "bad signature"}
            if call.json()["data"]["object"]["client_reference_id"] == "pur_1":
                self.status = "paid"
            return 200, {"received": True}
        if route == ("GET", "/api/rate-card"):
            return 200, RATE_CARD
        if route == ("POST", "/api/ai/chat"):
            if self.ai_status == 402:
                body = {"error": "insufficient_credits", "currentCredits": "0.004"}
                return 402, {**body, "message": "not enough credits"}
            usage = {"inputTokens": 9, "outputTokens": 2, "chargedMillicredits": self.charged}
            return self.ai_status, {"usage": usage, "balance": {}}
        if route == ("POST", "/api/admin/reconcile"):
            if auth != f"Bearer {ADMIN_TOKEN}":
                return 403, {"error": "forbidden", "message": "admin only"}
            status = "findings" if self.findings else "clean"
            return 200, {"runId": "run-1", "status": status, "findings": self.findings}
        return 404, {"error": "not_found", "message": call.path}

    def _purchase(self) -> dict[str, Any]:
        if self.status == "paid":
            self.paid_polls += 1
            if self.fulfilled_after is not None and self.paid_polls > self.fulfilled_after:
                self.status = "fulfilled"
        return {
            "purchaseId": "pur_1",
            "userId": "probe",
            "packageCode": "starter",
            "priceCents": 999,
            "currency": "usd",
            "stripeSessionId": "cs_test_1",
            "status": self.status,
        }

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            call = Call(
                request.method,
                request.url.host,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                request.content,
            )
            status, body = self.answer(call)
            return httpx.Response(status, json=body)

        return httpx.MockTransport(handle)

    def called(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if (c.method, c.path) == (method, path)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def remote_target() -> OpsTarget:
    return OpsTarget({}, PUBLIC, ADMIN, None, TokenSource(value=ADMIN_TOKEN, target=PUBLIC), SECRET)


def run_probes(
    platform: FakePlatform, probes: tuple[str, ...] = probe.PROBES, timeout_s: float = 5
) -> list[ProbeResult]:
    clock = FakeClock()
    settings = ProbeSettings("probe-run-1", USER_TOKEN, SECRET, timeout_s, poll_s=1)
    with httpx.Client(transport=platform.transport()) as client:
        prober = Prober(
            client, remote_target(), settings, monotonic=clock.monotonic, sleep=clock.sleep
        )
        return prober.run(probes)


def by_probe(results: list[ProbeResult]) -> dict[str, ProbeResult]:
    return {r.probe: r for r in results}


# --- the probes --------------------------------------------------------------------------------


def test_every_probe_passes_on_a_healthy_platform() -> None:
    platform = FakePlatform()

    results = by_probe(run_probes(platform))

    assert [r.passed for r in results.values()] == [True, True, True], results
    assert results["checkout"].reason == "starter purchase pur_1 fulfilled"
    assert results["ai"].reason == "gpt-4o-mini charged 18 millicredits"
    assert results["reconciliation"].reason == "run run-1 clean"
    # The smallest package, once per run (its own Idempotency-Key), paid by a signed webhook.
    [created] = platform.called("POST", "/api/purchases")
    assert created.json()["packageCode"] == "starter"
    assert created.headers["idempotency-key"] == "probe-run-1-checkout"
    [webhook] = platform.called("POST", "/webhooks/stripe")
    assert webhook.json()["type"] == "checkout.session.completed"
    assert webhook.json()["data"]["object"]["payment_status"] == "paid"
    # A small call on the cheapest model, as the probe user.
    [chat] = platform.called("POST", "/api/ai/chat")
    assert chat.json()["model"] == "gpt-4o-mini"
    assert 0 < chat.json()["max_tokens"] <= 16
    assert chat.headers["authorization"] == f"Bearer {USER_TOKEN}"
    # The admin call goes to the admin host; the public ones to the public host.
    [run] = platform.called("POST", "/api/admin/reconcile")
    assert run.host == "billing-admin.example.com"
    assert run.headers["idempotency-key"] == "probe-run-1-reconciliation"
    assert {c.host for c in platform.calls if c is not run} == {"billing.example.com"}


def test_a_purchase_never_fulfilled_fails_the_checkout_probe_after_the_timeout() -> None:
    platform = FakePlatform(fulfilled_after=None)

    [result] = run_probes(platform, ("checkout",), timeout_s=5)

    assert not result.passed
    assert result.reason == "purchase pur_1 still paid after 5s (never fulfilled)"
    assert 5 <= result.seconds <= 6
    # Polled until the deadline, not once and not forever.
    assert 5 <= len(platform.called("GET", "/api/purchases/pur_1")) <= 8


def test_a_refused_webhook_fails_the_checkout_probe_with_the_answer() -> None:
    platform = FakePlatform()
    settings = ProbeSettings("probe-run-2", USER_TOKEN, "whsec_wrong", 5)
    with httpx.Client(transport=platform.transport()) as client:
        [result] = Prober(client, remote_target(), settings).run(["checkout"])

    assert not result.passed
    assert result.reason.startswith("POST /webhooks/stripe answered 400")
    assert "invalid_signature" in result.reason


def test_a_402_fails_the_ai_probe_and_says_the_probe_user_cannot_pay() -> None:
    platform = FakePlatform(ai_status=402)

    results = by_probe(run_probes(platform, ("ai", "reconciliation")))

    assert not results["ai"].passed
    assert "402 insufficient_credits" in results["ai"].reason
    assert "0.004 credits" in results["ai"].reason
    # One failing probe does not stop the others.
    assert results["reconciliation"].passed


def test_a_call_charged_nothing_fails_the_ai_probe() -> None:
    [result] = run_probes(FakePlatform(charged=0), ("ai",))

    assert not result.passed
    assert "charged 0 millicredits" in result.reason


def test_findings_fail_the_reconciliation_probe_naming_their_kinds() -> None:
    findings = [
        {"check": "balances", "kind": "balance_drift"},
        {"check": "payments", "kind": "grant_without_payment"},
        {"check": "balances", "kind": "balance_drift"},
    ]

    [result] = run_probes(FakePlatform(findings=findings), ("reconciliation",))

    assert not result.passed
    assert result.reason.startswith(
        "run run-1 is findings: 3 finding(s) (balance_drift, grant_without_payment)"
    )


def test_an_unreachable_service_fails_the_probe_instead_of_crashing_the_run() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = ProbeSettings("probe-run-3", USER_TOKEN, SECRET, 5)
    with httpx.Client(transport=httpx.MockTransport(refuse)) as client:
        results = Prober(client, remote_target(), settings).run(list(probe.PROBES))

    assert [r.passed for r in results] == [False, False, False]
    assert all(r.reason == "ConnectError: connection refused" for r in results)


# --- which probes run ----------------------------------------------------------------------------


def plan_for(target: OpsTarget, env: dict[str, str], checkout: bool | None = None) -> probe.Plan:
    return probe.plan(
        target,
        user="probe",
        user_token_file=None,
        checkout=checkout,
        ai=True,
        reconciliation=True,
        timeout_s=60,
        run_id="r",
        env=env,
    )


def test_checkout_is_opt_in_on_a_remote_target_without_the_secret() -> None:
    tokens = TokenSource(value=ADMIN_TOKEN, target=PUBLIC)
    remote = OpsTarget({}, PUBLIC, None, None, tokens, None)
    env = {"BILLING_PROBE_USER_TOKEN": USER_TOKEN}

    plan = plan_for(remote, env)

    assert plan.probes == ["ai", "reconciliation"]
    assert "checkout" in plan.skipped
    with pytest.raises(TargetError, match="BILLING_STRIPE_WEBHOOK_SECRET"):
        plan_for(remote, env, checkout=True)
    assert plan_for(remote_target(), env).probes == list(probe.PROBES)


def test_a_remote_target_needs_the_probe_users_token() -> None:
    with pytest.raises(TargetError, match="pass --user-token-file or set BILLING_PROBE_USER"):
        plan_for(remote_target(), {})


def test_the_local_stack_mints_the_probe_users_token(tmp_path: Path) -> None:
    local = OpsTarget.local_stack(Layout("t", tmp_path), env={})

    plan = plan_for(local, {})

    assert plan.probes == list(probe.PROBES)
    assert plan.settings.user_token
    assert plan.settings.webhook_secret == local.webhook_secret()


# --- metrics -----------------------------------------------------------------------------------

RESULTS = [
    ProbeResult("checkout", True, 2.5, "ok", 1_760_000_000.0),
    ProbeResult("ai", False, 0.25, "402", 1_760_000_001.0),
]


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, probe label) -> value, read back with prometheus_client's parser."""
    return {
        (s.name, s.labels["probe"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


EXPECTED = {
    ("billing_probe_success", "checkout"): 1.0,
    ("billing_probe_success", "ai"): 0.0,
    ("billing_probe_duration_seconds", "checkout"): 2.5,
    ("billing_probe_duration_seconds", "ai"): 0.25,
    ("billing_probe_last_run_timestamp_seconds", "checkout"): 1_760_000_000.0,
    ("billing_probe_last_run_timestamp_seconds", "ai"): 1_760_000_001.0,
}


def test_the_metrics_file_is_the_text_format_with_every_gauge(tmp_path: Path) -> None:
    path = tmp_path / "billing_probe.prom"

    probe.write_metrics_file(path, RESULTS)

    text = path.read_text()
    assert samples(text) == EXPECTED
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert set(families.values()) == {"gauge"}
    # Written next to the target and renamed: no temporary file left for the collector.
    assert [p.name for p in tmp_path.iterdir()] == ["billing_probe.prom"]


class Pushgateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]]

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append((self.command, self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = _record
    do_POST = _record

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (Pushgateway,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_push_replaces_the_jobs_group_on_the_pushgateway(
    pushgateway: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, received = pushgateway

    probe.push_metrics(url, RESULTS)

    [(method, path, body)] = received
    assert (method, path) == ("PUT", "/metrics/job/billing_probe")
    assert samples(body.decode()) == EXPECTED


def test_push_to_a_dead_gateway_raises_an_os_error() -> None:
    with pytest.raises(OSError, match="refused"):
        probe.push_metrics("http://127.0.0.1:9", RESULTS, timeout_s=2)


def test_the_table_has_a_row_per_probe_with_its_reason() -> None:
    header, checkout, ai = probe.render_table(RESULTS)

    assert header.split()[:4] == ["PROBE", "RESULT", "SECONDS", "REASON"]
    assert checkout.split() == ["checkout", "pass", "2.50", "ok"]
    assert ai.split() == ["ai", "FAIL", "0.25", "402"]


# --- the command, end to end over HTTP --------------------------------------------------------


class PlatformServer(BaseHTTPRequestHandler):
    platform: FakePlatform

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        call = Call(
            self.command,
            self.headers.get("Host", ""),
            self.path.split("?", 1)[0],
            {k.lower(): v for k, v in self.headers.items()},
            self.rfile.read(length),
        )
        status, body = self.platform.answer(call)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def served() -> Iterator[tuple[str, FakePlatform]]:
    platform = FakePlatform()
    handler = type("Handler", (PlatformServer,), {"platform": platform})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", platform
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Layout:
    for name in (
        "BILLING_TARGET_URL",
        "BILLING_ADMIN_TARGET_URL",
        "BILLING_ADMIN_TOKEN_FILE",
        "BILLING_ADMIN_TOKEN",
        "BILLING_STRIPE_WEBHOOK_SECRET",
        "BILLING_PROBE_USER_TOKEN",
        "BILLING_RECONCILER_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    chosen = Layout("t", tmp_path)
    monkeypatch.setattr(Layout, "selected", classmethod(lambda cls: chosen))
    return chosen


def test_the_command_probes_a_target_and_exports_the_results(
    clean_env: Layout, served: tuple[str, FakePlatform], tmp_path: Path
) -> None:
    url, platform = served
    metrics = tmp_path / "probe.prom"
    env = {
        "BILLING_STRIPE_WEBHOOK_SECRET": SECRET,
        "BILLING_PROBE_USER_TOKEN": USER_TOKEN,
        "BILLING_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    args = ["probe", "--target", url, "--json", "--metrics-file", str(metrics)]

    result = runner.invoke(main.app, [*args, "--pushgateway", url], env=env)

    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["target"] == url
    assert [p["probe"] for p in report["probes"]] == ["checkout", "ai", "reconciliation"]
    assert all(p["passed"] for p in report["probes"])
    written = samples(metrics.read_text())
    assert {k: v for k, v in written.items() if k[0] == "billing_probe_success"} == {
        ("billing_probe_success", name): 1.0 for name in probe.PROBES
    }
    [push] = platform.pushed
    assert push.path == "/metrics/job/billing_probe"
    assert samples(push.body.decode()) == written
    # A remote target: nothing was minted with a local dev key.
    assert not clean_env.keys.exists()


def test_the_command_exits_1_when_a_probe_fails(
    clean_env: Layout, served: tuple[str, FakePlatform]
) -> None:
    url, platform = served
    platform.findings = [{"check": "balances", "kind": "balance_drift"}]
    env = {"BILLING_PROBE_USER_TOKEN": USER_TOKEN, "BILLING_ADMIN_TOKEN": ADMIN_TOKEN}

    result = runner.invoke(main.app, ["probe", "--target", url], env=env)

    assert result.exit_code == 1
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert rows == {"ai": "pass", "reconciliation": "FAIL"}
    assert "checkout probe skipped" in result.stderr


def test_the_command_on_a_remote_target_without_an_admin_token_exits_1_at_once(
    clean_env: Layout, served: tuple[str, FakePlatform]
) -> None:
    url, platform = served

    result = runner.invoke(
        main.app,
        ["probe", "--json"],
        env={"BILLING_TARGET_URL": url, "BILLING_PROBE_USER_TOKEN": "u"},
    )

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert f"no admin token for {url}" in line
    assert result.stdout == ""
    assert platform.calls == []
