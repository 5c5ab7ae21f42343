"""The Helm chart: lint, render with each shipped values file, validate every manifest against
the Kubernetes schemas, and check what the chart promises by reading the rendered YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from billing_cli import probe, target
from billing_events.topics import CONTRACT_TOPICS

from .conftest import (
    CANARY_VALUES,
    KUBE_VERSION,
    PACKAGES,
    PRODUCTION_VALUES,
    REPO,
    SETTINGS,
    Helm,
    Manifest,
    by_component,
    chart_values,
    containers,
    env_names,
    env_value,
    of_kind,
    pod_specs,
    settings_env,
)

# Custom resources: kubernetes-validate has no schema for them; their key fields are
# asserted by the tests below instead.
CRD_KINDS = {
    ("external-secrets.io/v1beta1", "ExternalSecret"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
}
VALUE_SETS: dict[str, tuple[list[Path], str]] = {
    "default": ([], "billing"),
    "production": ([PRODUCTION_VALUES], "billing"),
    "canary": ([PRODUCTION_VALUES, CANARY_VALUES], "billing-canary"),
}
ORDER = list(PACKAGES)


def _render(helm: Helm, value_set: str) -> list[Manifest]:
    files, release = VALUE_SETS[value_set]
    return helm.template(files, release=release)


def _services_calling_external_apis() -> set[str]:
    """Services whose wiring builds a Stripe or OpenAI client, read from their main.py."""
    calling = set()
    for name, pkg in PACKAGES.items():
        main = (REPO / "services" / name / "src" / pkg / "main.py").read_text()
        if "stripe_client(" in main or "OpenAIModelClient(" in main:
            calling.add(name)
    return calling


def _declared_paths(service: str) -> set[str]:
    """Every route path literal in a service's package (FastAPI decorators and prefixes)."""
    pkg_dir = REPO / "services" / service / "src" / PACKAGES[service]
    found: set[str] = set()
    for source in pkg_dir.glob("*.py"):
        found |= set(re.findall(r"[\"'](/(?:api|webhooks|internal)/[^\"'{]*)", source.read_text()))
    return found


def _is_prefix(prefix: str, path: str) -> bool:
    """Ingress pathType Prefix semantics: whole path elements."""
    want = [p for p in prefix.split("/") if p]
    have = [p for p in path.split("/") if p]
    return have[: len(want)] == want


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_lint_passes_strict(helm: Helm, value_set: str) -> None:
    files, _ = VALUE_SETS[value_set]
    args = ["lint", str(REPO / "deploy/helm/billing"), "--strict", "--kube-version", KUBE_VERSION]
    for path in files:
        args += ["-f", str(path)]
    result = helm.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_manifest_matches_the_kubernetes_schema(helm: Helm, value_set: str) -> None:
    manifests = _render(helm, value_set)
    validated = set()
    for manifest in manifests:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in CRD_KINDS:
            continue
        # Strict: an unknown or misplaced field fails, not only a wrong type.
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        validated.add(manifest["kind"])
    assert {"Deployment", "Service", "Job", "NetworkPolicy", "Ingress"} <= validated


def test_schema_validation_rejects_a_misplaced_field(default_render: list[Manifest]) -> None:
    deployment = of_kind(default_render, "Deployment")[0]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_container_runs_locked_down(helm: Helm, value_set: str) -> None:
    pods = list(pod_specs(_render(helm, value_set)))
    assert len(pods) == 6  # five Deployments and the migration Job
    for where, pod in pods:
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == 10001, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in containers(pod):
            ctx = container["securityContext"]
            name = f"{where}/{container['name']}"
            assert ctx["runAsNonRoot"] is True, name
            assert ctx["runAsUser"] == 10001, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            scratch = mounts.get("/tmp")  # noqa: S108 - the pod's emptyDir, not a temp file
            assert scratch in tmp_volumes, f"{name}: no emptyDir at /tmp"


def test_one_deployment_and_service_per_service_with_probes(
    default_render: list[Manifest],
) -> None:
    values = chart_values()
    deployments = by_component(default_render, "Deployment")
    services = by_component(default_render, "Service")
    assert set(deployments) == set(services) == set(PACKAGES)
    for name, deployment in deployments.items():
        port = values["services"][name]["port"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"].endswith(f"billing-{name}:0.1.0")
        assert container["args"] == ["serve"]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert env_value(container, f"{PACKAGES[name].upper()}_PORT") == str(port)
        assert env_value(container, f"{PACKAGES[name].upper()}_HOST") == "0.0.0.0"
        assert container["resources"] == {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        }
        service = services[name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["port"] == port


def test_deployments_set_only_variables_the_services_read(
    production_render: list[Manifest],
) -> None:
    for name, deployment in by_component(production_render, "Deployment").items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        unknown = set(env_names(container)) - settings_env(name)
        assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"


def test_a_disabled_service_leaves_nothing_behind(helm: Helm) -> None:
    manifests = helm.template(sets=["services.reconciler.enabled=false"])
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert set(by_component(manifests, kind)) == set(PACKAGES) - {"reconciler"}, kind
    [job] = of_kind(manifests, "Job")
    steps = containers(job["spec"]["template"]["spec"])
    assert "migrate-reconciler" not in [c["name"] for c in steps]
    # Nothing grants to the role of a service that is not deployed.
    assert not any(n.endswith("_DB_RECONCILER_ROLE") for c in steps for n in env_names(c))


def test_hpa_and_pdb_follow_values(helm: Helm, default_render: list[Manifest]) -> None:
    hpas = by_component(default_render, "HorizontalPodAutoscaler")
    pdbs = by_component(default_render, "PodDisruptionBudget")
    deployments = by_component(default_render, "Deployment")
    assert set(hpas) == set(pdbs) == set(PACKAGES)
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployments[name]["metadata"]["name"],
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
        [metric] = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
        # The HPA owns the replica count; a Deployment that names one would reset it.
        assert "replicas" not in deployments[name]["spec"]
        pdb = pdbs[name]
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["minAvailable"] == 1
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    changed = helm.template(
        sets=[
            "services.ledger.hpa.minReplicas=3",
            "services.ledger.hpa.maxReplicas=7",
            "services.ledger.hpa.targetCPUUtilizationPercentage=75",
            "services.metering.hpa.enabled=false",
            "services.metering.replicas=4",
        ]
    )
    ledger = by_component(changed, "HorizontalPodAutoscaler")["ledger"]["spec"]
    assert (ledger["minReplicas"], ledger["maxReplicas"]) == (3, 7)
    assert ledger["metrics"][0]["resource"]["target"]["averageUtilization"] == 75
    assert "metering" not in by_component(changed, "HorizontalPodAutoscaler")
    assert by_component(changed, "Deployment")["metering"]["spec"]["replicas"] == 4


def _egress_ports(policy: Manifest) -> set[tuple[int | str, str]]:
    return {
        (port["port"], port["protocol"])
        for rule in policy["spec"]["egress"]
        for port in rule.get("ports", [])
    }


def _internet_rules(policy: Manifest) -> list[Manifest]:
    return [
        rule
        for rule in policy["spec"]["egress"]
        if any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in rule["to"])
    ]


def test_network_policy_opens_only_what_each_service_uses(
    default_render: list[Manifest],
) -> None:
    policies = by_component(default_render, "NetworkPolicy")
    assert set(policies) == {*PACKAGES, "migrate"}
    external = _services_calling_external_apis()
    # The code's view, so a service that starts calling out gets a failing test here.
    assert external == {"checkout", "ledger", "metering", "reconciler"}
    for name in PACKAGES:
        policy = policies[name]
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        ports = _egress_ports(policy)
        assert {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (9092, "TCP")} <= ports, name
        internet = _internet_rules(policy)
        if name in external:
            [rule] = internet
            assert [p["port"] for p in rule["ports"]] == [443], name
            assert "10.0.0.0/8" in rule["to"][0]["ipBlock"]["except"]
        else:
            assert internet == [], f"{name} may not reach the internet"
            assert 443 not in {port for port, _ in ports}, name
        namespaces = {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in spec["ingress"]
            for peer in rule["from"]
            if "namespaceSelector" in peer
        }
        assert namespaces == {"ingress-nginx", "monitoring"}, name
        callers = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in spec["ingress"]
            for peer in rule["from"]
            if "podSelector" in peer
        }
        assert callers == ({"metering"} if name == "ledger" else set()), name

    # metering frees holds through the ledger's /internal API, and nothing else calls a peer.
    to_pods = {
        name: [
            (peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"], rule["ports"])
            for rule in policies[name]["spec"]["egress"]
            for peer in rule["to"]
            if "podSelector" in peer and "namespaceSelector" not in peer
        ]
        for name in PACKAGES
    }
    assert to_pods.pop("metering") == [("ledger", [{"port": 8103, "protocol": "TCP"}])]
    assert all(v == [] for v in to_pods.values())

    migrate = policies["migrate"]
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert _egress_ports(migrate) == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}
    assert migrate["spec"]["ingress"] == []


def test_migration_job_is_a_hook_that_runs_every_migrate_as_the_owner(
    default_render: list[Manifest],
) -> None:
    values = chart_values()
    [job] = of_kind(default_render, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")
    assert int(annotations["helm.sh/hook-weight"]) == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # Init containers run one after another: the launcher's order, the last one as the Job's.
    steps = containers(pod)
    assert [c["name"] for c in steps] == [f"migrate-{name}" for name in ORDER]
    assert [c["name"] for c in pod["containers"]] == ["migrate-reconciler"]
    for name, step in zip(ORDER, steps, strict=True):
        prefix = PACKAGES[name].upper()
        assert step["image"].endswith(f"billing-{name}:0.1.0")
        assert step["args"] == ["migrate"]
        names = env_names(step)
        assert env_value(step, f"{prefix}_MIGRATE_DATABASE_URL") == {
            "secretKeyRef": {"name": "billing-secrets", "key": f"{prefix}_MIGRATE_DATABASE_URL"}
        }
        assert not [n for n in names if n.endswith("_DATABASE_URL") and "MIGRATE" not in n]
        assert (
            env_value(step, f"{prefix}_DB_RUNTIME_ROLE")
            == (values["services"][name]["db"]["runtimeRole"])
        )
        # Every reader role the service's settings know is named, so its grants are complete.
        role_settings = {
            f"{prefix}_{field.upper()}"
            for field in SETTINGS[name].model_fields
            if field.startswith("db_") and field.endswith("_role") and field != "db_runtime_role"
        }
        assert role_settings <= set(names), name
        assert set(names) <= settings_env(name), name
    checkout = steps[0]
    assert env_value(checkout, "CHECKOUT_DB_LEDGER_ROLE") == "ledger_runtime"
    assert env_value(checkout, "CHECKOUT_DB_METERING_ROLE") == "metering_runtime"
    assert env_value(steps[2], "LEDGER_DB_METERING_ROLE") == "metering_runtime"

    for name, deployment in by_component(default_render, "Deployment").items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        prefix = PACKAGES[name].upper()
        assert env_value(container, f"{prefix}_DATABASE_URL") == {
            "secretKeyRef": {"name": "billing-secrets", "key": f"{prefix}_DATABASE_URL"}
        }
        assert not [n for n in env_names(container) if "MIGRATE" in n], name


def _ingresses(manifests: list[Manifest]) -> list[Manifest]:
    return of_kind(manifests, "Ingress")


def _routes(ingress: Manifest) -> dict[str, str]:
    [rule] = ingress["spec"]["rules"]
    return {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}


def test_ingress_routes_are_the_services_real_paths(production_render: list[Manifest]) -> None:
    ingresses = {i["metadata"]["name"]: i for i in _ingresses(production_render)}
    assert set(ingresses) == {"billing", "billing-admin"}
    public = _routes(ingresses["billing"])
    assert {
        "/api/purchases",
        "/webhooks/stripe",
        "/api/ai",
        "/api/balance",
        "/api/ledger",
        "/api/usage",
        "/api/rate-card",
        "/api/v1/meta",
    } <= set(public)
    declared = {name: _declared_paths(name) for name in PACKAGES}
    for ingress in ingresses.values():
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert "nginx.ingress.kubernetes.io/canary" not in ingress["metadata"]["annotations"]
        for path, backend in _routes(ingress).items():
            service = backend.removeprefix("billing-")
            assert any(_is_prefix(path, p) for p in declared[service]), (path, service)
            others = [n for n in PACKAGES if n != service]
            assert not any(_is_prefix(path, p) for n in others for p in declared[n]), path
    # Admin routes only on the admin host; the internal API nowhere.
    assert not [p for p in public if p.startswith("/api/admin")]
    all_paths = [p for i in ingresses.values() for p in _routes(i)]
    assert not [p for p in all_paths if p.startswith("/internal")]


def test_canary_ingress_only_when_enabled_with_the_weight_from_values(
    helm: Helm, default_render: list[Manifest]
) -> None:
    [stable] = _ingresses(default_render)
    assert "nginx.ingress.kubernetes.io/canary" not in stable["metadata"].get("annotations", {})

    canary_render = helm.template(
        sets=["canary.enabled=true", "canary.weight=20"], release="billing-canary"
    )
    [canary] = _ingresses(canary_render)
    annotations = canary["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "20"
    # Same host and paths as the stable release, to the canary release's own services.
    assert canary["spec"]["rules"][0]["host"] == stable["spec"]["rules"][0]["host"]
    stable_routes, canary_routes = _routes(stable), _routes(canary)
    assert set(canary_routes) == set(stable_routes)
    for path, backend in canary_routes.items():
        assert backend == stable_routes[path].replace("billing-", "billing-canary-", 1)

    result = helm.template_result(sets=["canary.enabled=true", "canary.weight=101"])
    assert result.returncode != 0
    assert "canary.weight must be between 0 and 100" in result.stderr


def test_canary_values_file(canary_render: list[Manifest]) -> None:
    ingresses = _ingresses(canary_render)
    assert len(ingresses) == 2  # public and admin, both canaries
    for ingress in ingresses:
        assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] == "true"
        weight = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"]
        assert weight == str(chart_values(PRODUCTION_VALUES, CANARY_VALUES)["canary"]["weight"])
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "KafkaTopic", "ExternalSecret"):
        assert of_kind(canary_render, kind) == [], kind
    for deployment in of_kind(canary_render, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
        assert deployment["metadata"]["name"].startswith("billing-canary-")


def _secret_refs(manifests: list[Manifest]) -> dict[str, set[str]]:
    """Secret name -> the keys pods read from it (variables and volume items)."""
    refs: dict[str, set[str]] = {}
    for _, pod in pod_specs(manifests):
        for container in containers(pod):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"]["items"]}
                refs.setdefault(volume["secret"]["secretName"], set()).update(keys)
    return refs


def test_existing_secret_or_external_secret(helm: Helm, default_render: list[Manifest]) -> None:
    assert of_kind(default_render, "ExternalSecret") == []
    refs = _secret_refs(default_render)
    assert set(refs) == {"billing-secrets"}
    expected_dsns = {
        f"{pkg.upper()}_{kind}DATABASE_URL"
        for pkg in PACKAGES.values()
        for kind in ("", "MIGRATE_")
    }
    assert expected_dsns | {"jwt-public.pem", "METERING_LEDGER_TOKEN"} <= refs["billing-secrets"]

    mine = helm.template(sets=["secrets.existingSecret=payments-creds"])
    assert set(_secret_refs(mine)) == {"payments-creds"}

    external = helm.template(sets=["secrets.externalSecret.enabled=true"])
    [es] = of_kind(external, "ExternalSecret")
    assert es["apiVersion"] == "external-secrets.io/v1beta1"
    assert es["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "billing"}
    target = es["spec"]["target"]
    [(secret_name, keys)] = _secret_refs(external).items()
    assert target["name"] == secret_name == "billing-secrets"
    # It exists before the migration Job (the first reader) and survives its own re-creation.
    [job] = of_kind(external, "Job")
    assert es["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(es["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert (target["creationPolicy"], target["deletionPolicy"]) == ("Orphan", "Retain")
    # The Secret it makes holds every key a pod reads; DSNs not in the store are assembled.
    templated: dict[str, str] = target["template"]["data"]
    assert keys <= set(templated)
    assert templated["LEDGER_DATABASE_URL"] == (
        'postgresql://ledger_runtime:{{ index . "password_ledger_runtime" | urlquery }}'
        "@postgres.example.internal:5432/billing?sslmode=require"
    )
    fetched = {d["secretKey"] for d in es["spec"]["data"]}
    assert "password_ledger_owner" in fetched
    for key, template in templated.items():
        assert set(re.findall(r'index \. "([^"]+)"', template)) <= fetched, key

    neither = helm.template_result(sets=["secrets.existingSecret="])
    assert neither.returncode != 0
    assert "secrets.existingSecret" in neither.stderr


def test_service_monitor_scrapes_every_service(helm: Helm, default_render: list[Manifest]) -> None:
    assert of_kind(default_render, "ServiceMonitor") == []
    manifests = helm.template(
        sets=["serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom"]
    )
    [monitor] = of_kind(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    selector = monitor["spec"]["selector"]
    [expression] = selector["matchExpressions"]
    assert set(expression["values"]) == set(PACKAGES)
    for service in of_kind(manifests, "Service"):
        labels = service["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] in expression["values"]


def test_strimzi_topics_are_the_contracts(helm: Helm, production_render: list[Manifest]) -> None:
    assert of_kind(helm.template(), "KafkaTopic") == []
    topics: dict[str, Any] = {
        t["spec"]["topicName"]: t["spec"] for t in of_kind(production_render, "KafkaTopic")
    }
    assert {name: spec["partitions"] for name, spec in topics.items()} == CONTRACT_TOPICS
    for topic in of_kind(production_render, "KafkaTopic"):
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "billing"
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    staged = helm.template([PRODUCTION_VALUES], sets=["config.topicNamespace=staging"])
    assert {t["spec"]["topicName"] for t in of_kind(staged, "KafkaTopic")} == {
        f"staging.{name}" for name in CONTRACT_TOPICS
    }


# --- the probe CronJob ---------------------------------------------------------------------

PROBE_CHECKOUT = ["probe.enabled=true", "probe.checkout=true", "probe.pushgateway=http://pgw:9091"]


def _probe(manifests: list[Manifest]) -> Manifest:
    [cronjob] = of_kind(manifests, "CronJob")
    assert cronjob["metadata"]["labels"]["app.kubernetes.io/component"] == "probe"
    return cronjob


def _probe_container(cronjob: Manifest) -> Manifest:
    containers: list[Manifest] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ]
    [container] = containers
    return container


def _cli_variables() -> set[str]:
    """Every variable `billing probe` reads, from the CLI's own constants."""
    return {
        *(target.service_url_env(name) for name in PACKAGES),
        target.TOKEN_ENV,
        target.TOKEN_FILE_ENV,
        target.TARGET_ENV,
        target.ADMIN_TARGET_ENV,
        target.WEBHOOK_SECRET_ENV,
        probe.USER_TOKEN_ENV,
    }


def test_probe_cronjob_only_when_enabled_and_never_in_a_canary(
    default_render: list[Manifest],
    production_render: list[Manifest],
    canary_render: list[Manifest],
) -> None:
    assert of_kind(default_render, "CronJob") == []
    assert of_kind(canary_render, "CronJob") == []
    # The canary's Services are not probed by the stable release's probe either.
    assert "probe" not in by_component(canary_render, "NetworkPolicy")
    assert _probe(production_render)["metadata"]["name"] == "billing-probe"


def test_probe_cronjob_runs_the_cli_every_5_minutes_without_overlap(
    production_render: list[Manifest],
) -> None:
    values = chart_values(PRODUCTION_VALUES)["probe"]
    cronjob = _probe(production_render)
    spec = cronjob["spec"]
    assert spec["schedule"] == values["schedule"] == "*/5 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    # A failed probe is a result: the next run is the retry, and a run ends before it.
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] < 300
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    container = _probe_container(cronjob)
    assert container["image"] == "registry.example.com/billing-cli:0.1.0"
    args = container["args"]
    assert args[0] == "probe"
    assert args[args.index("--pushgateway") + 1] == values["pushgateway"]
    # Production leaves the checkout probe off (it grants credits without a payment).
    assert "--no-checkout" in args
    assert {"--ai", "--reconciliation"} <= set(args)
    assert "command" not in container  # the image's entrypoint: python -m billing_cli


def test_probe_cronjob_is_locked_down_like_the_deployments(
    production_render: list[Manifest],
) -> None:
    pod = _probe(production_render)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [deployment, *_] = of_kind(production_render, "Deployment")
    deployment_pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == deployment_pod["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    ctx = _probe_container(_probe(production_render))["securityContext"]
    assert ctx == deployment_pod["containers"][0]["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    scratch = mounts["/tmp"]  # noqa: S108 - the pod's emptyDir, not a temp file
    assert scratch in {v["name"] for v in pod["volumes"] if "emptyDir" in v}


def test_probe_targets_the_in_cluster_services_with_tokens_from_the_secret(
    helm: Helm, production_render: list[Manifest]
) -> None:
    container = _probe_container(_probe(production_render))
    names = env_names(container)
    assert set(names) <= _cli_variables(), "variables the CLI does not read"
    services = {
        s["metadata"]["name"]: s["spec"]["ports"][0]["port"]
        for s in of_kind(production_render, "Service")
    }
    assert env_value(container, "BILLING_METERING_URL") == "http://billing-metering:8104"
    assert env_value(container, "BILLING_RECONCILER_URL") == "http://billing-reconciler:8105"
    for name in names:
        if name.endswith("_URL"):
            host, port = env_value(container, name).removeprefix("http://").split(":")
            assert services[host] == int(port), name
    # Checkout off: neither its services nor the webhook secret reach the pod.
    assert "BILLING_CHECKOUT_URL" not in names
    assert "BILLING_STRIPE_WEBHOOK_SECRET" not in names
    assert env_value(container, "BILLING_ADMIN_TOKEN") == {
        "secretKeyRef": {"name": "billing-secrets", "key": "BILLING_PROBE_ADMIN_TOKEN"}
    }
    assert env_value(container, "BILLING_PROBE_USER_TOKEN") == {
        "secretKeyRef": {"name": "billing-secrets", "key": "BILLING_PROBE_USER_TOKEN"}
    }
    # The ExternalSecret makes every key the probe reads.
    [es] = of_kind(production_render, "ExternalSecret")
    templated = set(es["spec"]["target"]["template"]["data"])
    assert {"BILLING_PROBE_ADMIN_TOKEN", "BILLING_PROBE_USER_TOKEN"} <= templated


def test_probe_with_checkout_signs_with_the_webhook_secret_and_opens_only_its_calls(
    helm: Helm,
) -> None:
    manifests = helm.template(sets=PROBE_CHECKOUT)
    cronjob = _probe(manifests)
    kubernetes_validate.validate(cronjob, KUBE_VERSION, strict=True)
    container = _probe_container(cronjob)
    assert "--checkout" in container["args"]
    assert env_value(container, "BILLING_STRIPE_WEBHOOK_SECRET") == {
        "secretKeyRef": {"name": "billing-secrets", "key": "BILLING_STRIPE_WEBHOOK_SECRETS"}
    }
    called = {"checkout", "webhook-ingest", "metering", "reconciler"}
    urls = {n for n in env_names(container) if n.endswith("_URL")}
    assert urls == {target.service_url_env(name) for name in called}

    policies = by_component(manifests, "NetworkPolicy")
    probe_policy = policies["probe"]["spec"]
    assert probe_policy["ingress"] == []
    reached = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: rule["ports"]
        for rule in probe_policy["egress"]
        for peer in rule["to"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    }
    values = chart_values()
    assert reached == {
        name: [{"port": values["services"][name]["port"], "protocol": "TCP"}] for name in called
    }
    assert (9091, "TCP") in _egress_ports(policies["probe"])
    for name in PACKAGES:
        callers = [
            peer["podSelector"]["matchLabels"]
            for rule in policies[name]["spec"]["ingress"]
            for peer in rule["from"]
            if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            == "probe"
        ]
        if name in called:
            assert callers == [
                {
                    "app.kubernetes.io/name": "billing",
                    "app.kubernetes.io/instance": "billing",
                    "app.kubernetes.io/component": "probe",
                }
            ], name
        else:
            assert callers == [], name


def test_probe_skips_what_a_disabled_service_would_answer(helm: Helm) -> None:
    manifests = helm.template(sets=["probe.enabled=true", "services.reconciler.enabled=false"])
    container = _probe_container(_probe(manifests))
    assert "--no-reconciliation" in container["args"]
    assert "BILLING_ADMIN_TOKEN" not in env_names(container)

    nothing = helm.template_result(
        sets=["probe.enabled=true", "probe.ai=false", "probe.reconciliation=false"]
    )
    assert nothing.returncode != 0
    assert "every probe is off" in nothing.stderr
