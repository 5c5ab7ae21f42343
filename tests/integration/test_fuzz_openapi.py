"""Schemathesis against every service's OpenAPI, with no token, a user token and an admin token.

Checks: no 5xx, and every answer conforms to the documented schema and content type where one
is documented. Generation is derandomized, so a run is the same run every time.

An admin token switches purchases off, pauses users and posts adjustments: the fuzzed services
run as their own processes on fresh schemas and a fresh topic namespace, never the shared
stack's services.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from billing_cli import keys
from billing_cli.stack import Stack
from billing_events.topics import Topics
from billing_platform.db import migrate_package
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

# Per operation and token: schema-conforming requests, then requests that break the schema.
CASES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 10}
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
PACKAGES = ["checkout", "webhook_ingest", "ledger", "metering", "reconciler"]


def tokens(stack: Stack) -> dict[str, dict[str, str]]:
    user = keys.mint_token(stack.layout, "fuzz-user", [])
    # Stepped up with MFA, so the fuzzing reaches past the check into every admin route.
    admin = keys.mint_token(stack.layout, "fuzz-admin", ["admin"], mfa=True)
    return {
        "none": {},
        "user": {"Authorization": f"Bearer {user}"},
        "admin": {"Authorization": f"Bearer {admin}"},
    }


def isolated_env(topics: Topics, base: str) -> dict[str, str]:
    """Every service on its own schema of this run, all of them on the run's topics."""
    schemas = {pkg: f"{base}_{pkg[:2]}" for pkg in PACKAGES}
    env = {f"{pkg.upper()}_DB_SCHEMA": schema for pkg, schema in schemas.items()}
    return {
        **env,
        "BILLING_TOPIC_NAMESPACE": topics.namespace,
        "CHECKOUT_PURCHASE_RATE_LIMIT_PER_MINUTE": "1000000",
        "WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "1000000",
        "LEDGER_CHECKOUT_SCHEMA": schemas["checkout"],
        "METERING_CHECKOUT_SCHEMA": schemas["checkout"],
        "METERING_LEDGER_SCHEMA": schemas["ledger"],
        "RECONCILER_SCHEDULE_INTERVAL_S": "0",
        "RECONCILER_LEDGER_SCHEMA": schemas["ledger"],
        "RECONCILER_METERING_SCHEMA": schemas["metering"],
        "RECONCILER_WEBHOOK_SCHEMA": schemas["webhook_ingest"],
        "RECONCILER_CHECKOUT_SCHEMA": schemas["checkout"],
    }


async def migrate_all(dsn: str, env: dict[str, str]) -> None:
    for pkg in PACKAGES:
        await migrate_package(dsn, env[f"{pkg.upper()}_DB_SCHEMA"], pkg)


Fuzzed = Callable[[str], AbstractContextManager[str]]


@pytest.fixture
def fuzzed(stack: Stack, namespace: Topics, schema: str, run_service: Any) -> Fuzzed:
    """Start a service (and what it needs) on fresh schemas; its base URL."""

    @contextmanager
    def start(package: str) -> Iterator[str]:
        env = isolated_env(namespace, schema)
        asyncio.run(migrate_all(stack.postgres.dsn, env))
        with ExitStack() as running:
            if package == "metering":  # it holds credits in a ledger: one of this run's
                env["METERING_LEDGER_URL"] = running.enter_context(run_service("ledger", env)).url
            yield running.enter_context(run_service(package, env)).url

    return start


@dataclass
class Outcome:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    base_url: str
    headers: dict[str, str]
    http: requests.Session


def fuzz_operation(operation: Any, target: Target, out: Outcome) -> None:
    for mode, examples in CASES.items():
        try:
            fuzz_mode(operation, mode, examples, target, out)
        except hypothesis.errors.Unsatisfiable:
            # An operation that takes no input has no request that breaks its schema.
            if mode is GenerationMode.POSITIVE:
                raise


def fuzz_mode(
    operation: Any, mode: GenerationMode, examples: int, target: Target, out: Outcome
) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        try:
            response = case.call(
                base_url=target.base_url, headers=target.headers, session=target.http, timeout=20
            )
        except requests.ConnectionError as exc:  # the server dropped the connection: a crash
            out.failures.append(f"{operation.label} [{mode.value}] {case.method}: {exc}")
            return
        out.cases += 1
        out.statuses[response.status_code] = out.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS, headers=target.headers)
        except FailureGroup as group:
            titles = sorted({f.title for f in group.exceptions})
            out.failures.append(
                f"{operation.label} [{mode.value}] {case.method} {response.request.url}"
                f" -> {response.status_code}: {'; '.join(titles)} {response.text[:300]!r}"
            )

    run()


def ok_operation(result: Ok[Any] | Err[Any]) -> Any:
    assert isinstance(result, Ok), f"the OpenAPI document has an invalid operation: {result}"
    return result.ok()


@pytest.mark.parametrize("package", PACKAGES)
def test_every_operation_survives_fuzzing(stack: Stack, fuzzed: Fuzzed, package: str) -> None:
    with fuzzed(package) as base_url:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        operations = [ok_operation(result) for result in schema.get_all_operations()]
        report: dict[str, Outcome] = {}
        with requests.Session() as http:
            for who, headers in tokens(stack).items():
                report[who] = Outcome()
                for operation in operations:
                    fuzz_operation(operation, Target(base_url, headers, http), report[who])
        for who, outcome in report.items():
            print(
                f"{package} token={who}: {len(operations)} operations, {outcome.cases} cases,"
                f" statuses {dict(sorted(outcome.statuses.items()))},"
                f" {len(outcome.failures)} failures"
            )
        failures = [f"{who}: {f}" for who, o in report.items() for f in o.failures]
        assert not failures, "\n".join(failures)
