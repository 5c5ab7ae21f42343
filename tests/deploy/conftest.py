"""Shared pieces of the deployment checks: the pinned helm, rendering the chart, and the
settings each service really reads (so manifests are checked against the code, not a copy).

helm is installed once by the launcher's installer (``go install`` of a pinned version into
``.local/bin``), as CI does on its first run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from billing_cli.installers import ensure_helm
from billing_cli.layout import SERVICES, Layout, repo_root
from billing_platform.settings import InfraSettings, ServiceSettings
from checkout.settings import Settings as CheckoutSettings
from ledger.settings import Settings as LedgerSettings
from metering.settings import Settings as MeteringSettings
from reconciler.settings import Settings as ReconcilerSettings
from webhook_ingest.settings import Settings as WebhookIngestSettings

REPO = repo_root()
CHART = REPO / "deploy" / "helm" / "billing"
PRODUCTION_VALUES = CHART / "values-production.yaml"
CANARY_VALUES = CHART / "values-canary.yaml"
# Rendered for this API version: the chart needs 1.25+, and kubernetes-validate ships its
# schemas up to 1.35. A helm built by `go install` would otherwise assume 1.20.
KUBE_VERSION = "1.31.0"

Manifest = dict[str, Any]

# service name -> its python package, in the launcher's order.
PACKAGES: dict[str, str] = {name: pkg for name, (pkg, _) in SERVICES.items()}

SETTINGS: dict[str, type[ServiceSettings]] = {
    "checkout": CheckoutSettings,
    "webhook-ingest": WebhookIngestSettings,
    "ledger": LedgerSettings,
    "metering": MeteringSettings,
    "reconciler": ReconcilerSettings,
}

# Read by uvicorn itself, not by a settings class.
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}


def settings_env(service: str) -> set[str]:
    """Every variable a service process reads: its own prefix, aliases, and BILLING_*."""
    cls = SETTINGS[service]
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = {
        field.validation_alias if isinstance(field.validation_alias, str) else prefix + name.upper()
        for name, field in cls.model_fields.items()
        if name != "infra"
    }
    infra_prefix = str(InfraSettings.model_config.get("env_prefix", ""))
    names |= {infra_prefix + name.upper() for name in InfraSettings.model_fields}
    return names | UVICORN_ENV


@dataclass(frozen=True)
class Helm:
    binary: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=60, check=False
        )

    def template_result(
        self,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        release: str = "billing",
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--kube-version", KUBE_VERSION]
        for path in values:
            args += ["-f", str(path)]
        for item in sets:
            args += ["--set", item]
        return self.run(*args)

    def template(
        self,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        release: str = "billing",
    ) -> list[Manifest]:
        result = self.template_result(values, sets, release)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(ensure_helm(Layout.test()))


@pytest.fixture(scope="session")
def default_render(helm: Helm) -> list[Manifest]:
    return helm.template()


@pytest.fixture(scope="session")
def production_render(helm: Helm) -> list[Manifest]:
    return helm.template([PRODUCTION_VALUES])


@pytest.fixture(scope="session")
def canary_render(helm: Helm) -> list[Manifest]:
    return helm.template([PRODUCTION_VALUES, CANARY_VALUES], release="billing-canary")


def chart_values(*files: Path) -> dict[str, Any]:
    """values.yaml with the given files over it (maps merged, anything else replaced)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in files:
        _merge(merged, yaml.safe_load(path.read_text()))
    return merged


def _merge(into: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def by_component(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m
        for m in of_kind(manifests, kind)
        if "app.kubernetes.io/component" in m["metadata"].get("labels", {})
    }


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            yield f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"]


def containers(pod: Manifest) -> list[Manifest]:
    init: list[Manifest] = pod.get("initContainers", [])
    main: list[Manifest] = pod["containers"]
    return init + main


def env_names(container: Manifest) -> list[str]:
    return [str(e["name"]) for e in container.get("env", [])]


def env_value(container: Manifest, name: str) -> Any:
    [entry] = [e for e in container.get("env", []) if e["name"] == name]
    return entry.get("value", entry.get("valueFrom"))
