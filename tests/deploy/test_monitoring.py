"""Monitoring: the alert rules and their promtool unit tests, the Grafana dashboards, the
Alertmanager routing example and the chart's PrometheusRule, checked against the metrics the
services really export (read from their Counter/Gauge/Histogram definitions)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, REPO, Helm, Manifest, of_kind

MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERTS_TEST = MONITORING / "alerts_test.yaml"
ALERTMANAGER = MONITORING / "alertmanager.example.yaml"
DASHBOARDS = {
    name: MONITORING / "dashboards" / f"{name}.json" for name in ("revenue", "operations")
}
CHART_ALERTS = CHART / "files" / "alerts.yaml"

SEVERITY_RECEIVERS = {"page": "billing-pagerduty", "ticket": "billing-slack"}

# What Grafana puts in place of its variables before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1d", "$__interval": "1m"}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}
METRIC_KINDS = {"Counter", "Gauge", "Histogram", "Summary"}


# --- what the services export --------------------------------------------------------------


# Where what Prometheus sees is defined: the services' /metrics (libs/ and services/), and
# the synthetic probe's results, which `billing probe` pushes to a Pushgateway or writes for
# node-exporter's textfile collector.
METRIC_SOURCES = (
    "libs/*/src/**/*.py",
    "services/*/src/**/*.py",
    "tools/cli/src/billing_cli/probe.py",
)


def _metric_definitions() -> Iterator[tuple[str, str, set[str]]]:
    """(kind, name as passed, label names) of every metric defined in METRIC_SOURCES."""
    sources = [path for pattern in METRIC_SOURCES for path in REPO.glob(pattern)]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if kind not in METRIC_KINDS or not isinstance(first, ast.Constant):
                continue
            labels_node = node.args[2] if len(node.args) > 2 else None
            for keyword in node.keywords:
                if keyword.arg == "labelnames":
                    labels_node = keyword.value
            labels: set[str] = set()
            if isinstance(labels_node, ast.List | ast.Tuple):
                labels = {str(e.value) for e in labels_node.elts if isinstance(e, ast.Constant)}
            yield str(kind), str(first.value), labels


def exported_series() -> dict[str, set[str]]:
    """Every series name a service exposes -> its label names (prometheus_client's naming)."""
    series: dict[str, set[str]] = {}
    for kind, name, labels in _metric_definitions():
        if kind == "Counter":
            base = name.removesuffix("_total")
            for suffix in ("_total", "_created"):
                series[base + suffix] = labels
        elif kind == "Gauge":
            series[name] = labels
        else:
            for suffix in ("_sum", "_count", "_created"):
                series[name + suffix] = labels
            if kind == "Histogram":
                series[name + "_bucket"] = labels | {"le"}
    return series


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return exported_series()


# --- reading PromQL --------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    metrics: set[str]
    # metric -> label names its matchers use
    matchers: dict[str, set[str]]
    # label names of by/without/on/ignoring/group_* clauses
    grouping: set[str]


def promql_usage(expr: str) -> Usage:
    """The metric names and label names a PromQL expression refers to."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    matchers: dict[str, set[str]] = {}
    for name, body in re.findall(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", text):
        matchers.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    grouping: set[str] = set()
    clause = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for labels in re.findall(clause, text):
        grouping.update(label.strip() for label in labels.split(",") if label.strip())
    text = re.sub(clause, " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", text)
    names = re.findall(r"(?<![\w:$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    metrics = {n for n in names if n.lower() not in PROMQL_KEYWORDS}
    return Usage(metrics | set(matchers), matchers, grouping)


def unknown_references(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What an expression names that no service exports: metrics, or labels of a metric."""
    usage = promql_usage(expr)
    problems = [f"metric {m}" for m in sorted(usage.metrics - set(exported))]
    known_labels: set[str] = set()
    for metric in usage.metrics & set(exported):
        known_labels |= exported[metric]
        for label in sorted(usage.matchers.get(metric, set()) - exported[metric]):
            problems.append(f"label {label} of {metric}")
    for label in sorted(usage.grouping - known_labels):
        problems.append(f"grouping label {label}")
    return problems


def test_promql_reader_finds_names_and_labels() -> None:
    usage = promql_usage(
        "histogram_quantile(0.99, sum by (service, le) ("
        'rate(http_request_duration_seconds_bucket{route!~"/a|/b"}[$__rate_interval])))'
        " > 1e6 * max(outbox_pending) unless on (schema) sum(foo:bar offset 1d) and bool vector(0)"
    )
    assert usage.metrics == {"http_request_duration_seconds_bucket", "outbox_pending", "foo:bar"}
    assert usage.matchers == {"http_request_duration_seconds_bucket": {"route"}}
    assert usage.grouping == {"service", "le", "schema"}


def test_exported_metrics_are_read_from_the_code(exported: dict[str, set[str]]) -> None:
    assert exported["http_requests_total"] == {"service", "method", "route", "status"}
    assert exported["http_request_duration_seconds_bucket"] == {"service", "method", "route", "le"}
    assert exported["outbox_pending"] == {"schema"}
    assert exported["billing_insufficient_credits_total"] == set()
    assert "kafka_handler_outage_retries_total" in exported
    # The probe's gauges, pushed rather than scraped from a service.
    assert exported["billing_probe_success"] == {"probe"}
    assert exported["billing_probe_last_run_timestamp_seconds"] == {"probe"}
    # Names that look right but are not exported are told apart.
    assert unknown_references("rate(billing_refunds_total[5m])", exported) == [
        "metric billing_refunds_total"
    ]
    assert unknown_references('sum by (user) (outbox_pending{topic="x"})', exported) == [
        "label topic of outbox_pending",
        "grouping label user",
    ]


# --- alert rules ---------------------------------------------------------------------------


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = _load(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _tool(name: str, package: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(
            f"{name} not installed: `apt-get install -y {package}` (scripts/test installs it)"
        )
    return binary


def _run(*args: str, cwd: Path = REPO, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def test_promtool_accepts_the_rules() -> None:
    result = _run(_tool("promtool", "prometheus"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    # Some cases need 8 days of series at a 1-minute evaluation interval: about a minute.
    result = _run(_tool("promtool", "prometheus"), "test", "rules", str(ALERTS_TEST), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = _load(ALERTS_TEST)
    assert tests["rule_files"] == [ALERTS.name]
    fires: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            counts = fires if expected else quiet
            counts[check["alertname"]] = counts.get(check["alertname"], 0) + 1
            for alert in expected:
                # The whole notification is asserted, not only that something fired.
                assert {"severity", "team"} <= set(alert["exp_labels"]), check["alertname"]
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
    names = {rule["alert"] for rule in alert_rules()}
    assert names - set(fires) == set(), "alerts without a case where they fire"
    assert names - set(quiet) == set(), "alerts without a case where they stay quiet"
    assert set(fires) | set(quiet) <= names, "cases for alerts that do not exist"


def _readme_anchors() -> set[str]:
    anchors = set()
    for line in (REPO / "README.md").read_text().splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(slug.replace(" ", "-"))
    return anchors


def test_alerts_are_labelled_for_routing_and_have_a_runbook() -> None:
    anchors = _readme_anchors()
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITY_RECEIVERS, rule["alert"]
        assert rule["labels"]["team"] == "billing", rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "README.md", annotations["runbook_url"]
        assert anchor in anchors, annotations["runbook_url"]
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    # The seeds' split: money and pipeline at risk page, finance trends go to Slack.
    assert severities["ReconciliationMismatch"] == "page"
    assert severities["StripeWebhookFailures"] == "page"
    assert severities["InsufficientCreditsSpike"] == "page"
    assert severities["OutstandingLiabilityAboveLimit"] == "ticket"
    assert severities["DailyMarginBelowTarget"] == "ticket"
    assert severities["KafkaConsumerLagHigh"] == "page"
    assert severities["NewModelCostsAboveBudget"] == "ticket"


def test_alerts_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    for rule in alert_rules():
        assert promql_usage(rule["expr"]).metrics, rule["alert"]
        assert unknown_references(rule["expr"], exported) == [], rule["alert"]


def test_the_alerts_once_left_out_for_want_of_a_metric_are_in() -> None:
    header = ALERTS.read_text().split("groups:")[0]
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert "left out" not in header.lower()
    assert "metering_model_cost_millicredits_total" in rules["NewModelCostsAboveBudget"]["expr"]
    assert "kafka_consumer_lag" in rules["KafkaConsumerLagHigh"]["expr"]


# --- dashboards ----------------------------------------------------------------------------


def _dashboard(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARDS[name].read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _queries(name: str) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every query in a dashboard."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in _panels(_dashboard(name))
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_uses_the_datasource_variable(name: str) -> None:
    dashboard = _dashboard(name)
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == f"billing-{name}"
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_queries_parse(name: str, tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:{name}:query_{i}", "expr": _grafana_free(expr)}
        for i, (_, expr) in enumerate(_queries(name))
    ]
    path = tmp_path / f"{name}-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": f"dashboard-{name}", "rules": rules}]}))
    result = _run(_tool("promtool", "prometheus"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def _grafana_free(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_queries_name_exported_metrics(name: str, exported: dict[str, set[str]]) -> None:
    for where, expr in _queries(name):
        assert unknown_references(expr, exported) == [], where


def test_dashboards_show_what_finance_and_on_call_look_for() -> None:
    def used(name: str) -> set[str]:
        return set().union(*(promql_usage(expr).metrics for _, expr in _queries(name)))

    assert {
        "billing_credits_purchased_total",
        "billing_credits_deducted_total",
        "margin_gross_daily_usd",
        "billing_credits_consumed_day_millicredits",
        "billing_insufficient_credits_total",
        "openai_tokens_in_total",
        "metering_model_cost_millicredits_total",
    } <= used("revenue")
    assert {
        "outbox_pending",
        "stripe_webhook_events_total",
        "stripe_webhook_failures_total",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "billing_dlq_depth",
        "kafka_handler_outage_retries_total",
        "kafka_assigned_partitions",
        "kafka_consumer_lag",
        "liability_outstanding_credits_usd",
        "billing_probe_success",
        "billing_probe_duration_seconds",
    } <= used("operations")


# --- Alertmanager --------------------------------------------------------------------------


def test_amtool_accepts_the_alertmanager_example() -> None:
    result = _run(_tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("severity", sorted(SEVERITY_RECEIVERS))
def test_alertmanager_routes_each_severity(severity: str) -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    args = ["config", "routes", "test", f"--config.file={ALERTMANAGER}"]
    result = _run(amtool, *args, f"severity={severity}", "team=billing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [SEVERITY_RECEIVERS[severity]]
    # Every alert of that severity carries what the route matches on.
    for rule in alert_rules():
        if rule["labels"]["severity"] == severity:
            labels = [f"{k}={v}" for k, v in rule["labels"].items()]
            routed = _run(amtool, *args, f"alertname={rule['alert']}", *labels)
            assert routed.stdout.split() == [SEVERITY_RECEIVERS[severity]], rule["alert"]


def test_alertmanager_receivers_and_inhibition() -> None:
    config = _load(ALERTMANAGER)
    receivers = {r["name"]: r for r in config["receivers"]}
    [pagerduty] = receivers["billing-pagerduty"]["pagerduty_configs"]
    # Events API v2 takes a routing key (v1 took a service key); read from a mounted secret.
    assert "routing_key_file" in pagerduty
    assert "routing_key" not in pagerduty
    assert "service_key" not in pagerduty
    [slack] = receivers["billing-slack"]["slack_configs"]
    assert "api_url_file" in slack
    assert "api_url" not in slack
    [billing] = config["route"]["routes"]
    assert billing["matchers"] == ['team="billing"']
    by_severity = {route["matchers"][0]: route["receiver"] for route in billing["routes"]}
    assert by_severity == {f'severity="{s}"': r for s, r in SEVERITY_RECEIVERS.items()}
    assert "alertname" in billing["group_by"]
    [inhibit] = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="page"']
    assert inhibit["target_matchers"] == ['severity="ticket"']
    assert inhibit["equal"] == ["alertname"]


# --- the chart -----------------------------------------------------------------------------


def test_chart_rules_are_a_copy_of_the_monitoring_rules() -> None:
    assert (
        CHART_ALERTS.read_bytes() == ALERTS.read_bytes()
    ), "cp deploy/monitoring/alerts.yaml deploy/helm/billing/files/alerts.yaml"


def test_chart_renders_the_prometheus_rule_only_when_enabled(
    helm: Helm, default_render: list[Manifest]
) -> None:
    assert of_kind(default_render, "PrometheusRule") == []
    manifests = helm.template(
        sets=["prometheusRule.enabled=true", "prometheusRule.labels.release=prom"]
    )
    [rule] = of_kind(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "billing"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "billing"
    # The groups as the file has them, {{ $labels }} templates untouched.
    assert rule["spec"]["groups"] == _load(ALERTS)["groups"]
