"""docker-compose.yml: valid for docker-compose (which checks it without a Docker engine),
and wired the way the platform starts: roles, migrations and topics before the services,
each service healthy only when its /readyz is."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from billing_cli.layout import KAFKA_VERSION, STRIPE_MOCK_VERSION

from .conftest import PACKAGES, REPO, settings_env

COMPOSE = REPO / "docker-compose.yml"
INFRA = ("postgres", "kafka", "stripe-mock", "devllm")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose not installed: `apt-get install -y docker-compose` "
            "(scripts/test installs it)"
        )
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_infrastructure_is_the_launchers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["stripe-mock"]["image"] == f"stripe/stripe-mock:{STRIPE_MOCK_VERSION}"
    assert services["postgres"]["image"].split(":")[1].split(".")[0] == "15"
    assert services["devllm"]["build"]["args"] == {"SERVICE": "devllm"}
    for name in INFRA:
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image, f"{name}: {image!r} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image!r}"


def _dsn_user(dsn: str) -> str:
    match = re.match(r"postgresql://([^:@]+)[:@]", dsn)
    assert match, dsn
    return match.group(1)


def test_every_service_waits_for_migrations_topics_and_infrastructure(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    migrations = {f"migrate-{name}" for name in PACKAGES}
    for name, package in PACKAGES.items():
        service = services[name]
        depends = {dep: cond["condition"] for dep, cond in service["depends_on"].items()}
        for migration in migrations:
            assert depends[migration] == "service_completed_successfully", (name, migration)
        assert depends["kafka-topics"] == "service_completed_successfully"
        for infra in INFRA:
            assert depends[infra] == "service_healthy", (name, infra)
        assert service["build"]["args"] == {"SERVICE": package}
        # Healthy means ready: its database and broker answer.
        probe = " ".join(service["healthcheck"]["test"])
        port = f"81{list(PACKAGES).index(name) + 1:02d}"
        assert f"127.0.0.1:{port}/readyz" in probe, name
        assert service["read_only"] is True
        env = service["environment"]
        prefix = package.upper()
        assert _dsn_user(env[f"{prefix}_DATABASE_URL"]) == f"{package}_runtime"
        assert not [k for k in env if "MIGRATE" in k]
        assert set(env) <= settings_env(name), sorted(set(env) - settings_env(name))

        migrate = services[f"migrate-{name}"]
        assert migrate["command"] == ["migrate"]
        assert migrate["build"]["args"] == {"SERVICE": package}
        assert migrate["depends_on"] == {
            "db-roles": {"condition": "service_completed_successfully"}
        }
        menv = migrate["environment"]
        assert _dsn_user(menv[f"{prefix}_MIGRATE_DATABASE_URL"]) == f"{package}_owner"
        assert menv[f"{prefix}_DB_RUNTIME_ROLE"] == f"{package}_runtime"
        assert not [k for k in menv if k.endswith("_DATABASE_URL") and "MIGRATE" not in k]
        assert set(menv) <= settings_env(name), sorted(set(menv) - settings_env(name))
    assert services["db-roles"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["kafka-topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}


def test_credentials_are_dev_values_only(compose: dict[str, Any]) -> None:
    secretish = re.compile(r"(API_KEY|SECRETS?|PASSWORD)$")
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if secretish.search(key):
                assert "dev" in str(value), f"{name}: {key} does not look like a dev value"
        for key, value in env.items():
            if key.endswith("DATABASE_URL"):
                password = str(value).split(":")[2].split("@")[0]
                assert password.startswith("dev_"), f"{name}: {key}"
    stripe_key = compose["services"]["checkout"]["environment"]["BILLING_STRIPE_API_KEY"]
    assert stripe_key.startswith("sk_test_")
