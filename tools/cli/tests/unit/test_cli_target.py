"""Where the ops commands send their calls: options, then environment, then the local stack;
routing through a gateway as the chart's Ingress does; admin tokens never minted for a remote."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from billing_cli import keys, main
from billing_cli.layout import Layout, repo_root
from billing_cli.target import (
    ADMIN_ROUTES,
    PUBLIC_ROUTES,
    KafkaTarget,
    OpsTarget,
    TargetError,
    gateway_route,
)
from typer.testing import CliRunner

runner = CliRunner(mix_stderr=False)

TARGET_VARIABLES = [
    "BILLING_TARGET_URL",
    "BILLING_ADMIN_TARGET_URL",
    "BILLING_ADMIN_TOKEN_FILE",
    "BILLING_ADMIN_TOKEN",
    "BILLING_STRIPE_WEBHOOK_SECRET",
    "BILLING_KAFKA_BOOTSTRAP",
    "BILLING_TOPIC_NAMESPACE",
    "BILLING_CHECKOUT_URL",
    "BILLING_WEBHOOK_INGEST_URL",
    "BILLING_LEDGER_URL",
    "BILLING_METERING_URL",
    "BILLING_RECONCILER_URL",
]


def _no_local_stack() -> Layout:
    raise AssertionError("a remote target must not touch the local stack")


@pytest.fixture
def layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Layout:
    chosen = Layout("t", tmp_path, 300)
    monkeypatch.setattr(Layout, "selected", classmethod(lambda cls: chosen))
    for name in TARGET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return chosen


# --- resolution order ------------------------------------------------------------------------


def test_the_target_option_beats_every_variable() -> None:
    env = {
        "BILLING_TARGET_URL": "https://elsewhere.example",
        "BILLING_LEDGER_URL": "http://ledger.internal:8103",
    }
    target = OpsTarget.resolve(
        "https://billing.example.com/", env=env, local_layout=_no_local_stack
    )

    assert not target.is_local
    assert (
        target.url("ledger", "/api/statements/2026-11.csv")
        == "https://billing.example.com/api/statements/2026-11.csv"
    )


def test_a_service_variable_beats_the_gateway_variable_for_its_service() -> None:
    env = {
        "BILLING_TARGET_URL": "https://billing.example.com",
        "BILLING_RECONCILER_URL": "http://127.0.0.1:18105/",
    }
    target = OpsTarget.resolve(env=env, local_layout=_no_local_stack)

    assert target.url("reconciler", "/api/admin/reconcile") == (
        "http://127.0.0.1:18105/api/admin/reconcile"
    )
    assert target.url("metering", "/api/ai/chat") == "https://billing.example.com/api/ai/chat"


def test_per_service_variables_alone_name_only_their_services() -> None:
    env = {"BILLING_WEBHOOK_INGEST_URL": "http://webhooks:8102"}
    target = OpsTarget.resolve(env=env, local_layout=_no_local_stack)

    assert (
        target.url("webhook-ingest", "/webhooks/stripe") == "http://webhooks:8102/webhooks/stripe"
    )
    # The rest is not quietly sent to a local stack.
    with pytest.raises(TargetError, match="no URL for checkout: set BILLING_CHECKOUT_URL"):
        target.url("checkout", "/api/purchases")


def test_without_options_or_variables_the_local_stack(layout: Layout) -> None:
    target = OpsTarget.resolve(env={})

    assert target.is_local
    assert target.local == layout
    port = layout.service_port("reconciler")
    assert target.url("reconciler", "/api/admin/reconcile") == (
        f"http://127.0.0.1:{port}/api/admin/reconcile"
    )
    assert target.webhook_secret() == keys.ensure_secrets(layout)["stripe_webhook_secret"]
    # Today's behaviour: an admin token (MFA stepped up) signed by the stack's dev key.
    public = (layout.keys / "jwt-public.pem").read_bytes()
    claims = jwt.decode(target.admin_token(), public, algorithms=["RS256"], audience=keys.AUDIENCE)
    assert claims["roles"] == ["admin"]
    assert claims["iss"] == keys.ISSUER
    assert "otp" in claims["amr"]


def test_a_given_token_wins_over_minting_on_the_local_stack(layout: Layout) -> None:
    target = OpsTarget.resolve(env={"BILLING_ADMIN_TOKEN": "from-the-environment\n"})

    assert target.is_local
    assert target.admin_token() == "from-the-environment"


# --- admin tokens ----------------------------------------------------------------------------


def test_a_remote_target_without_a_token_is_an_error_not_a_dev_token() -> None:
    target = OpsTarget.resolve("https://billing.example.com", env={}, local_layout=_no_local_stack)

    with pytest.raises(TargetError) as raised:
        target.admin_token()
    message = str(raised.value)
    assert message.startswith("no admin token for https://billing.example.com:")
    assert "--token-file" in message
    assert "BILLING_ADMIN_TOKEN_FILE" in message
    assert "\n" not in message


def test_token_file_option_then_file_variable_then_token_variable(tmp_path: Path) -> None:
    option, variable = tmp_path / "option.jwt", tmp_path / "variable.jwt"
    option.write_text("token-from-option\n")
    variable.write_text("token-from-variable-file")
    env = {"BILLING_ADMIN_TOKEN_FILE": str(variable), "BILLING_ADMIN_TOKEN": "token-from-env"}
    remote = "https://billing.example.com"

    def token(token_file: Path | None, env: dict[str, str]) -> str:
        return OpsTarget.resolve(remote, None, token_file, env, _no_local_stack).admin_token()

    assert token(option, env) == "token-from-option"
    assert token(None, env) == "token-from-variable-file"
    assert token(None, {"BILLING_ADMIN_TOKEN": "token-from-env"}) == "token-from-env"


def test_an_unreadable_or_empty_token_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jwt"
    empty.write_text("\n")
    remote = "https://billing.example.com"

    with pytest.raises(TargetError, match="is empty"):
        OpsTarget.resolve(remote, None, empty, {}, _no_local_stack).admin_token()
    with pytest.raises(TargetError, match="cannot read the admin token file"):
        OpsTarget.resolve(remote, None, tmp_path / "missing", {}, _no_local_stack).admin_token()


def test_the_webhook_secret_of_a_rotation_list_is_its_first() -> None:
    env = {"BILLING_STRIPE_WEBHOOK_SECRET": " whsec_new , whsec_old"}
    target = OpsTarget.resolve("https://billing.example.com", env=env)

    assert target.webhook_secret() == "whsec_new"
    assert OpsTarget.resolve("https://billing.example.com", env={}).webhook_secret() is None


# --- gateway routing -------------------------------------------------------------------------


def test_the_route_tables_are_the_charts_ingress_routes() -> None:
    values = yaml.safe_load((repo_root() / "deploy/helm/billing/values.yaml").read_text())
    ingress = values["ingress"]
    assert {r["path"]: r["service"] for r in ingress["routes"]} == PUBLIC_ROUTES
    assert {r["path"]: r["service"] for r in ingress["admin"]["routes"]} == ADMIN_ROUTES


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("/api/purchases/3f1c", ("checkout", False)),
        ("/webhooks/stripe", ("webhook-ingest", False)),
        ("/api/statements/2026-11.pdf?userId=alice", ("ledger", False)),
        ("/api/ai/chat", ("metering", False)),
        ("/api/rate-card", ("metering", False)),
        ("/api/admin/webhooks/replay", ("webhook-ingest", True)),
        ("/api/admin/reconcile", ("reconciler", True)),
        ("/api/admin/reconciliation/latest", ("reconciler", True)),
        # Whole path elements, as pathType Prefix matches.
        ("/api/aix", None),
        ("/api/admin/reconciler", None),
        ("/internal/holds", None),
        ("/metrics", None),
    ],
)
def test_gateway_routes_by_whole_path_elements(path: str, routed: tuple[str, bool] | None) -> None:
    assert gateway_route(path) == routed


def test_admin_paths_go_to_the_admin_host_when_there_is_one() -> None:
    env = {"BILLING_ADMIN_TARGET_URL": "https://billing-admin.example.com"}
    split = OpsTarget.resolve("https://billing.example.com", env=env)
    one = OpsTarget.resolve("https://gateway.example.com", env={})

    assert split.url("reconciler", "/api/admin/reconcile") == (
        "https://billing-admin.example.com/api/admin/reconcile"
    )
    assert split.url("checkout", "/api/purchases") == "https://billing.example.com/api/purchases"
    assert one.url("webhook-ingest", "/api/admin/webhooks/replay") == (
        "https://gateway.example.com/api/admin/webhooks/replay"
    )
    explicit = OpsTarget.resolve("https://billing.example.com", "https://ops.example.com", env=env)
    assert explicit.url("reconciler", "/api/admin/reconcile").startswith("https://ops.example.com/")


def test_a_path_the_ingress_does_not_route_is_refused_with_the_way_out() -> None:
    target = OpsTarget.resolve("https://billing.example.com", env={})

    with pytest.raises(
        TargetError, match="routes no /internal/holds to ledger: set BILLING_LEDGER"
    ):
        target.url("ledger", "/internal/holds")
    # Routed, but to another service than the command means.
    with pytest.raises(TargetError, match="routes no /api/ai/chat to ledger"):
        target.url("ledger", "/api/ai/chat")


# --- Kafka -----------------------------------------------------------------------------------


def test_kafka_from_the_environment_else_the_local_stack(layout: Layout) -> None:
    env = {"BILLING_KAFKA_BOOTSTRAP": "kafka.example:9092", "BILLING_TOPIC_NAMESPACE": "prod"}
    assert KafkaTarget.resolve(env, _no_local_stack) == KafkaTarget("kafka.example:9092", "prod")
    assert KafkaTarget.resolve({}) == KafkaTarget(f"127.0.0.1:{layout.kafka_port}", "")


# --- the commands ------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """Answers every POST with the class's canned body; keeps what it was sent."""

    seen: list[dict[str, Any]]
    answer: dict[str, Any]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.seen.append(
            {
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "idempotency_key": self.headers.get("Idempotency-Key"),
                "body": self.rfile.read(length),
            }
        )
        payload = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (Recorder,), {"seen": seen, "answer": {"status": "clean"}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_reconcile_calls_the_target_with_the_token_from_the_file(
    layout: Layout, recorder: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, seen = recorder
    token_file = tmp_path / "admin.jwt"
    token_file.write_text("ops-token\n")

    args = ["reconcile", "--target", url, "--token-file", str(token_file), "--key", "k1"]
    result = runner.invoke(main.app, args)

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "clean"}
    [call] = seen
    assert call["path"] == "/api/admin/reconcile"
    assert call["authorization"] == "Bearer ops-token"
    assert call["idempotency_key"] == "k1"
    # Nothing of the local stack was made for a remote call (no dev keys minted).
    assert not layout.keys.exists()


def test_webhook_replay_to_a_service_url_from_the_environment(
    layout: Layout, recorder: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = recorder
    env = {"BILLING_WEBHOOK_INGEST_URL": url, "BILLING_ADMIN_TOKEN": "env-token"}

    result = runner.invoke(main.app, ["webhook", "replay", "--event-id", "evt_1"], env=env)

    assert result.exit_code == 0, result.stderr
    [call] = seen
    assert call["path"] == "/api/admin/webhooks/replay"
    assert call["authorization"] == "Bearer env-token"
    assert json.loads(call["body"]) == {"eventId": "evt_1"}


@pytest.mark.parametrize(
    "args",
    [
        ["reconcile"],
        ["statement", "--user", "alice", "--month", "2026-11"],
        ["webhook", "replay", "--event-id", "evt_1"],
        ["stripe", "simulate-payment", "pur_1"],
    ],
)
def test_a_remote_target_without_a_token_exits_1_with_one_line(
    layout: Layout, recorder: tuple[str, list[dict[str, Any]]], args: list[str]
) -> None:
    url, seen = recorder

    result = runner.invoke(main.app, args, env={"BILLING_TARGET_URL": url})

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert f"no admin token for {url}" in line
    assert seen == []
    assert not layout.keys.exists()
