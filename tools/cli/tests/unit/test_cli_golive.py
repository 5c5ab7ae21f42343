"""`billing go-live`: the dry run of each stage, the canary gate, and runs on fake backends."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import yaml
from billing_cli import golive, main
from billing_cli.golive import HttpCall, Options, Reply, Runner
from billing_cli.installers import ensure_helm
from billing_cli.layout import Layout, repo_root
from billing_cli.procs import LaunchError
from billing_platform import metrics
from typer.testing import CliRunner

runner = CliRunner(mix_stderr=False)

CHART = "deploy/helm/billing"
BASE = "https://billing.example.com"
PROM = "http://prom.example:9090"
CANARY = [
    "--chart", CHART, "-f", "my-values.yaml", "--image-tag", "0.2.0",
    "--hold-s", "120", "--prometheus", PROM,
]  # fmt: skip

SWITCH_OFF = (
    "helm upgrade billing deploy/helm/billing -n billing --reset-then-reuse-values"
    " --set-string services.checkout.env.BILLING_PURCHASE_ENABLED=false"
    " --set-string services.checkout.env.BILLING_CHARGING_ENABLED=false --wait --timeout 15m"
)
ROLLBACK = [
    SWITCH_OFF,
    "helm rollback billing -n billing --wait --timeout 15m",
    "helm uninstall billing-canary -n billing --ignore-not-found --wait",
]


def canary_step(weight: int) -> str:
    return (
        "helm upgrade --install billing-canary deploy/helm/billing -n billing -f my-values.yaml"
        " -f deploy/helm/billing/values-canary.yaml --set image.tag=0.2.0"
        f" --set canary.enabled=true --set canary.weight={weight} --wait --timeout 15m"
    )


PROMOTE = [
    "helm upgrade billing deploy/helm/billing -n billing --reset-then-reuse-values"
    " -f my-values.yaml --set image.tag=0.2.0 --wait --timeout 15m",
    "helm uninstall billing-canary -n billing --wait",
]


def go_live(*args: str) -> Any:
    return runner.invoke(main.app, ["go-live", *args])


def commands(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if not line.startswith("#")]


@pytest.fixture(autouse=True)
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run (and a fake runner) must neither spawn a process nor open a connection."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"side effect: {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(httpx.Client, "request", refuse)


# --- dry runs ------------------------------------------------------------------------------


def test_dry_run_canary_prints_five_weights_with_a_hold_and_the_gate_between() -> None:
    result = go_live("canary", "--dry-run", *CANARY)

    assert result.exit_code == 0, result.stderr
    steps = [s for w in (1, 5, 20, 50, 100) for s in (canary_step(w), "sleep 120")]
    assert commands(result.stdout) == steps + PROMOTE
    lines = result.stdout.splitlines()
    for at, line in enumerate(lines):
        if line == "sleep 120":
            gate_lines = lines[at + 1 : at + 4]
            assert all(x.startswith(f"# GET {PROM}/api/v1/query query=") for x in gate_lines)
            assert all("[120s]" in x and 'pod=~"billing-canary-.+"' in x for x in gate_lines)


def test_dry_run_rollback_switches_off_then_rolls_back_then_removes_the_canary() -> None:
    result = go_live("rollback", "--dry-run", "--chart", CHART)

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ROLLBACK


def test_dry_run_rollback_to_a_given_revision_in_another_namespace() -> None:
    result = go_live("rollback", "--dry-run", "--chart", CHART, "-n", "pay", "--revision", "7")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == "helm rollback billing 7 -n pay --wait --timeout 15m"


def test_dry_run_preflight() -> None:
    result = go_live("preflight", "--dry-run", *CANARY)

    assert result.exit_code == 0, result.stderr
    can_i = [
        f"kubectl -n billing auth can-i create {r}"
        for r in (
            "deployments.apps", "services", "jobs.batch", "ingresses.networking.k8s.io",
            "networkpolicies.networking.k8s.io", "horizontalpodautoscalers.autoscaling",
            "poddisruptionbudgets.policy", "secrets",
        )
    ]  # fmt: skip
    assert result.stdout.splitlines() == [
        "kubectl version",
        "kubectl -n billing get secret billing-secrets",
        *can_i,
        "kubectl -n billing wait --for=condition=Available deployment"
        " -l app.kubernetes.io/instance=billing --timeout=120s",
        "helm template billing-canary deploy/helm/billing -n billing -f my-values.yaml"
        " -f deploy/helm/billing/values-canary.yaml --set image.tag=0.2.0"
        " --set canary.enabled=true --set canary.weight=1 --validate",
    ]


def test_dry_run_smoke_prints_its_http_calls_and_no_credentials() -> None:
    result = go_live(
        "smoke", "--dry-run", "--base-url", BASE + "/", "--user", "smoke-user",
        "--run-id", "r1", "--token", "user.jwt.secret", "--service-token", "svc.jwt.secret",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"# GET {BASE}/api/packages",
        f"# GET {BASE}/api/rate-card",
        f"# GET {BASE}/api/balance",
        f'# POST {BASE}/api/purchases {{"packageCode":"starter"}}',
        f'# POST {BASE}/api/usage/reconcile {{"userId":"smoke-user","model":"gpt-4o-mini",'
        '"inputTokens":1000,"outputTokens":500,"idempotencyKey":"r1-usage"}',
        f"# GET {BASE}/api/balance",
    ]
    assert "secret" not in result.stdout


def test_dry_run_webhook_sends_one_event_twice() -> None:
    result = go_live("webhook", "--dry-run", "--base-url", BASE, "--run-id", "r1")

    assert result.exit_code == 0, result.stderr
    line = f"# POST {BASE}/webhooks/stripe (signed golive.probe evt_golive_r1)"
    assert result.stdout.splitlines() == [line, line]


def test_dry_run_full_runs_the_stages_in_order() -> None:
    result = go_live(
        "full", "--dry-run", *CANARY, "--base-url", BASE, "--user", "u", "--run-id", "r1"
    )

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    firsts = [
        "kubectl version",
        f"# GET {BASE}/api/packages",
        f"# POST {BASE}/webhooks/stripe (signed golive.probe evt_golive_r1)",
        canary_step(1),
    ]
    assert [lines.index(x) for x in firsts] == sorted(lines.index(x) for x in firsts)
    assert lines[-2:] == PROMOTE


def test_missing_options_fail_before_any_step() -> None:
    result = go_live("full", "--dry-run", "--chart", CHART)

    assert result.exit_code == 1
    assert result.stdout == ""
    for option in ("--base-url", "--user", "--image-tag", "--values"):
        assert option in result.stderr


def test_a_real_smoke_needs_the_credentials() -> None:
    result = go_live("smoke", "--base-url", BASE, "--user", "u")

    assert result.exit_code == 1
    assert "--token" in result.stderr
    assert "--service-token" in result.stderr


def test_default_chart_is_the_repositorys() -> None:
    result = go_live("rollback", "--dry-run")

    chart = str(repo_root() / "deploy" / "helm" / "billing")
    assert result.stdout.splitlines()[0].startswith(f"helm upgrade billing {chart} ")


# --- the gate ------------------------------------------------------------------------------


def answer(*values: str) -> dict[str, Any]:
    """An /api/v1/query answer as Prometheus sends it, one vector sample per value."""
    result = [{"metric": {}, "value": [1767225600.123, v]} for v in values]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_gate_passes_a_healthy_canary() -> None:
    verdict = golive.gate(answer("12.5"), answer(), answer("0.231"))

    assert verdict.passed
    assert "0.00%" in verdict.reason


def test_gate_breaches_on_a_2_percent_error_rate() -> None:
    verdict = golive.gate(answer("10"), answer("0.2"), answer("0.2"))

    assert not verdict.passed
    assert verdict.reason == "error rate 2.00% above 1.00%"


def test_gate_allows_an_error_rate_at_the_limit() -> None:
    assert golive.gate(answer("10"), answer("0.1"), answer("0.2")).passed


def test_gate_breaches_on_a_p99_of_one_and_a_half_seconds() -> None:
    verdict = golive.gate(answer("10"), answer("0"), answer("1.5"))

    assert not verdict.passed
    assert verdict.reason == "p99 latency 1.50 s above 1.00 s"


@pytest.mark.parametrize(
    "requests", [answer(), answer("0"), answer("NaN")], ids=["empty", "zero", "nan"]
)
def test_gate_breaches_when_the_canary_served_nothing(requests: dict[str, Any]) -> None:
    verdict = golive.gate(requests, answer(), answer("NaN"))

    assert verdict == golive.Verdict(False, "no traffic seen")


def test_gate_breaches_when_prometheus_fails() -> None:
    failed = {"status": "error", "errorType": "bad_data", "error": "parse error"}

    verdict = golive.gate(answer("10"), failed, answer("0.1"))

    assert not verdict.passed
    assert "parse error" in verdict.reason


def test_gate_honours_other_limits() -> None:
    verdict = golive.gate(
        answer("10"), answer("0.2"), answer("1.5"), max_error_rate=0.05, max_p99_s=2.0
    )

    assert verdict.passed


def test_queries_use_the_services_metric_names_and_labels() -> None:
    requests, errors, p99 = golive.queries(Options(namespace="pay", hold_s=300))

    counter = next(iter(metrics.HTTP_REQUESTS.describe())).name + "_total"
    histogram = next(iter(metrics.HTTP_LATENCY.describe())).name + "_bucket"
    assert requests.startswith(f"sum(rate({counter}{{")
    assert errors.startswith(f"sum(rate({counter}{{")
    assert 'status=~"5.."' in errors
    assert p99.startswith("histogram_quantile(0.99, ")
    assert f"{histogram}{{" in p99
    assert {"route", "status"} <= set(metrics.HTTP_REQUESTS._labelnames)
    for query in (requests, errors, p99):
        assert 'namespace="pay",pod=~"billing-canary-.+"' in query
        assert 'route!~"/health|/readyz|/metrics"' in query
        assert "[300s]" in query


# --- runs on fake backends -----------------------------------------------------------------


class Fake:
    """Records commands and holds; answers HTTP like the services and Prometheus would."""

    def __init__(
        self, unhealthy_from: int = 1000, balances: Sequence[int] = (50_000, 48_200)
    ) -> None:
        self.steps: list[str] = []
        self.weight = 0
        self.unhealthy_from = unhealthy_from
        self.balances = list(balances)
        self.stored: set[str] = set()
        self.secret = "whsec_test"

    def command(self, argv: Sequence[str]) -> None:
        self.steps.append(" ".join(argv))
        for arg in argv:
            if arg.startswith("canary.weight="):
                self.weight = int(arg.split("=")[1])

    def hold(self, seconds: int) -> None:
        self.steps.append(f"hold {seconds}")

    def note(self, message: str) -> None:
        pass

    def http(self, call: HttpCall) -> Reply | None:
        if call.url.endswith("/api/v1/query"):
            return Reply(200, self.prometheus(call.params["query"]))
        if call.url.endswith("/api/balance"):
            return Reply(200, {"balanceMillicredits": self.balances.pop(0)})
        if call.url.endswith("/api/purchases"):
            return Reply(
                201, {"purchaseId": "p1", "checkoutUrl": "https://stripe/c", "status": "p"}
            )
        if call.url.endswith("/webhooks/stripe"):
            return self.webhook(call)
        return Reply(200, {})

    def prometheus(self, query: str) -> dict[str, Any]:
        bad = self.weight >= self.unhealthy_from
        if query.startswith("histogram_quantile"):
            return answer("0.3")
        if "5.." in query:
            return answer("0.3" if bad else "0")
        return answer("10")

    def webhook(self, call: HttpCall) -> Reply:
        assert call.content is not None
        t, v1 = (part.split("=", 1)[1] for part in call.headers["Stripe-Signature"].split(","))
        mac = hmac.new(self.secret.encode(), f"{t}.".encode() + call.content, hashlib.sha256)
        if not hmac.compare_digest(mac.hexdigest(), v1):
            return Reply(400, {"error": "bad_signature"})
        event_id = json.loads(call.content)["id"]
        duplicate = event_id in self.stored
        self.stored.add(event_id)
        return Reply(200, {"received": True, "duplicate": duplicate})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    backend = Fake()

    @contextlib.contextmanager
    def live() -> Iterator[Runner]:
        yield backend

    monkeypatch.setattr(golive, "live_runner", live)
    return backend


def test_canary_breaching_at_20_rolls_back_and_stops(fake: Fake) -> None:
    fake.unhealthy_from = 20

    result = go_live("canary", *CANARY)

    assert result.exit_code == 1
    assert "breached at 20%" in result.stderr
    assert "error rate 3.00%" in result.stderr
    assert fake.steps == [
        canary_step(1), "hold 120", canary_step(5), "hold 120", canary_step(20), "hold 120",
        *ROLLBACK,
    ]  # fmt: skip


def test_healthy_canary_goes_to_100_and_promotes(fake: Fake) -> None:
    result = go_live("canary", *CANARY)

    assert result.exit_code == 0, result.stderr
    steps = [s for w in (1, 5, 20, 50, 100) for s in (canary_step(w), "hold 120")]
    assert fake.steps == steps + PROMOTE


def test_a_failing_command_stops_the_canary(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_at_5(argv: Sequence[str]) -> None:
        Fake.command(fake, argv)
        if fake.weight == 5:
            raise golive.StageFailed("helm upgrade exited 1")

    monkeypatch.setattr(fake, "command", fail_at_5)

    result = go_live("canary", *CANARY)

    assert result.exit_code == 1
    assert "helm upgrade exited 1" in result.stderr
    assert fake.steps == [canary_step(1), "hold 120", canary_step(5)]


def live_smoke() -> Any:
    return go_live(
        "smoke", "--base-url", BASE, "--user", "u", "--token", "t", "--service-token", "s"
    )


def test_smoke_passes_when_the_charge_moves_the_balance(fake: Fake) -> None:
    result = live_smoke()

    assert result.exit_code == 0, result.stderr
    assert fake.balances == []


def test_smoke_fails_when_the_balance_does_not_move(fake: Fake) -> None:
    fake.balances = [50_000, 50_000]

    result = live_smoke()

    assert result.exit_code == 1
    assert "did not move the balance (50000 -> 50000)" in result.stderr


def test_webhook_passes_when_the_second_delivery_is_a_duplicate(fake: Fake) -> None:
    result = go_live("webhook", "--base-url", BASE, "--webhook-secret", fake.secret)

    assert result.exit_code == 0, result.stderr
    assert len(fake.stored) == 1


def test_webhook_fails_on_a_wrong_secret(fake: Fake) -> None:
    result = go_live("webhook", "--base-url", BASE, "--webhook-secret", "whsec_other")

    assert result.exit_code == 1
    assert "400" in result.stderr


def test_full_stops_at_the_first_failing_stage(fake: Fake) -> None:
    fake.balances = [50_000, 50_000]

    result = go_live(
        "full", *CANARY, "--base-url", BASE, "--user", "u", "--token", "t",
        "--service-token", "s", "--webhook-secret", fake.secret,
    )  # fmt: skip

    assert result.exit_code == 1
    assert fake.steps[0] == "kubectl version"
    assert fake.steps[-1].startswith("helm template billing-canary ")
    assert fake.stored == set()


# --- the chart takes the rollback's switches -------------------------------------------------


def test_rollback_switches_reach_checkouts_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    try:
        helm = ensure_helm(Layout.dev())
    except LaunchError as exc:
        pytest.skip(f"no helm: {exc}")
    recorded = Fake()
    golive.rollback(Options(chart=CHART), recorded)
    switch_off = recorded.steps[0].split()
    sets = [switch_off[i + 1] for i, a in enumerate(switch_off) if a == "--set-string"]
    args = [a for s in sets for a in ("--set-string", s)]

    rendered = subprocess.run(
        [str(helm), "template", "billing", str(repo_root() / CHART), "--kube-version", "1.31.0",
         *args],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip

    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    checkout = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "billing-checkout"
    )
    env = {
        e["name"]: e.get("value")
        for e in checkout["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BILLING_PURCHASE_ENABLED"] == "false"
    assert env["BILLING_CHARGING_ENABLED"] == "false"


def test_go_live_sh_runs_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    script = repo_root() / "deploy" / "go-live.sh"
    assert script.stat().st_mode & 0o111

    done = subprocess.run(
        [str(script), "rollback", "--dry-run", "--chart", CHART],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ROLLBACK
