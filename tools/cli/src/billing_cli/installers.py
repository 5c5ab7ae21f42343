"""Fetching what the local stack runs, from package registries only, pinned and cached.

- PostgreSQL server, pgBackRest, Prometheus: Debian's packages (``apt-get``), when missing.
- Apache Kafka: the broker's jars from Maven Central via ``mvn dependency:copy-dependencies``.
- stripe-mock: ``go install`` of a pinned version into ``.local/bin``.
- vegeta (the benchmarks' HTTP load generator): the same, on demand only.
- helm (the chart's lint and render checks in ``tests/deploy``): the same, on demand only.
- the Credits page: ``npm ci`` and ``npm run build`` in ``web/`` (npm registry).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from billing_cli.layout import KAFKA_VERSION, STRIPE_MOCK_VERSION, Layout
from billing_cli.procs import LaunchError

VEGETA_VERSION = "v12.12.0"
HELM_VERSION = "v3.22.0"


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise LaunchError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{tail}")


def postgres_bindir() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0),
    )
    return candidates[-1].parent if candidates else None


def ensure_postgres() -> Path:
    """Debian's PostgreSQL server binaries; installed with apt when missing."""
    if (found := postgres_bindir()) is not None:
        return found
    if os.geteuid() != 0:
        raise LaunchError("PostgreSQL server not installed: run `sudo apt-get install postgresql`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], "apt-get update", env)
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        "apt-get install postgresql",
        env,
    )
    found = postgres_bindir()
    if found is None:
        raise LaunchError("postgresql installed but no server binaries under /usr/lib/postgresql")
    return found


def ensure_prometheus() -> Path:
    """Debian's Prometheus server (``billing up --with-monitoring``); apt when missing."""
    return _apt_binary("prometheus", "prometheus")


def ensure_pgbackrest() -> Path:
    """Debian's pgBackRest, which archives the dev stack's WAL and takes its backups."""
    return _apt_binary("pgbackrest", "pgbackrest")


def _apt_binary(binary: str, package: str) -> Path:
    if (found := shutil.which(binary)) is not None:
        return Path(found)
    if os.geteuid() != 0:
        raise LaunchError(f"{binary} not installed: run `sudo apt-get install {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], "apt-get update", env)
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        f"apt-get install {package}",
        env,
    )
    found = shutil.which(binary)
    if found is None:
        raise LaunchError(f"{package} installed but `{binary}` is not on PATH")
    return Path(found)


def ensure_web_build(web: Path) -> Path:
    """``web/dist``, built with npm when missing or older than its sources (a content hash)."""
    stamp = web / "dist" / ".source-hash"
    digest = _web_sources_hash(web)
    if stamp.exists() and stamp.read_text() == digest:
        return web / "dist"
    if shutil.which("npm") is None:
        raise LaunchError("`npm` not found: the Credits page is built with Node.js 20 and npm")
    _run(["npm", "ci", "--prefix", str(web), "--no-audit", "--no-fund"], "npm ci")
    _run(["npm", "run", "--prefix", str(web), "build"], "building the Credits page")
    stamp.write_text(digest)
    return web / "dist"


def _web_sources_hash(web: Path) -> str:
    digest = hashlib.sha256()
    files = [
        web / n for n in ("package-lock.json", "index.html", "vite.config.ts", "tsconfig.json")
    ]
    files += sorted(p for p in (web / "src").rglob("*") if p.is_file())
    for path in files:
        if path.exists():
            digest.update(path.relative_to(web).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def kafka_libs(layout: Layout) -> Path:
    return layout.cache / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_kafka(layout: Layout) -> Path:
    """The broker's jars, resolved once from Maven Central; a marker proves a full copy."""
    libs = kafka_libs(layout)
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise LaunchError(f"`{tool}` not found: the Kafka broker needs a JDK 17 and Maven")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    pom = resources.files("billing_cli").joinpath("kafka-pom.xml")
    with resources.as_file(pom) as pom_path:
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            "fetching Kafka jars",
        )
    if not any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise LaunchError(f"Kafka {KAFKA_VERSION} jars missing after download")
    marker.write_text(KAFKA_VERSION)
    return libs


def stripe_mock_binary(layout: Layout) -> Path:
    return layout.bin / "stripe-mock"


def ensure_stripe_mock(layout: Layout) -> Path:
    return _go_install(layout, "github.com/stripe/stripe-mock", STRIPE_MOCK_VERSION, "stripe-mock")


def ensure_vegeta(layout: Layout) -> Path:
    """vegeta, the open-loop HTTP load generator of ``bench/pipeline.py``."""
    return _go_install(layout, "github.com/tsenart/vegeta/v12", VEGETA_VERSION, "vegeta")


def ensure_helm(layout: Layout) -> Path:
    """helm, which the deployment tests lint and render the chart with."""
    return _go_install(layout, "helm.sh/helm/v3/cmd/helm", HELM_VERSION, "helm")


def _go_install(layout: Layout, module: str, version: str, name: str) -> Path:
    """``go install module@version`` into ``.local/bin``, skipped when that version is there."""
    binary = layout.bin / name
    stamp = layout.bin / f".{name}.version"
    if binary.exists() and stamp.exists() and stamp.read_text() == version:
        return binary
    if shutil.which("go") is None:
        raise LaunchError(f"`go` not found: {name} is installed with `go install`")
    layout.bin.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(layout.bin), "GOFLAGS": "-mod=mod"}
    _run(["go", "install", f"{module}@{version}"], f"go install {name}", env)
    stamp.write_text(version)
    return binary
