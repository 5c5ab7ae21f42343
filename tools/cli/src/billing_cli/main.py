"""``billing``: the one CLI for running and operating the platform."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.text import Text

from billing_cli import backup_commands, golive, keys, probe
from billing_cli import stripe_sim as sim
from billing_cli.layout import Layout
from billing_cli.procs import LaunchError
from billing_cli.stack import Stack
from billing_cli.target import (
    WEBHOOK_SECRET_ENV,
    AdminTargetOption,
    KafkaTarget,
    OpsTarget,
    TargetError,
    TargetOption,
    TokenFileOption,
)

if TYPE_CHECKING:
    from billing_cli.dlq import Letter, ReplayedBy

app = typer.Typer(
    help="Credits billing platform: local stack and operations.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _report(label: str, seconds: float) -> None:
    console.print(f"[green]✓[/green] {label} [dim]({seconds:.1f}s)[/dim]")


def _fail(exc: Exception) -> None:
    console.print(f"[red]✗[/red] {exc}")
    raise typer.Exit(1)


@app.command()
def up(
    infra_only: Annotated[bool, typer.Option(help="Start Kafka, Postgres, mocks only")] = False,
    with_monitoring: Annotated[
        bool, typer.Option(help="Also a Prometheus scraping every service, alert rules loaded")
    ] = False,
) -> None:
    """Install what is missing and start Kafka, PostgreSQL, stripe-mock, devllm, services."""
    started = time.monotonic()
    try:
        with console.status("starting the local stack..."):
            Stack(Layout.selected()).up(
                _report, services=not infra_only, monitoring=with_monitoring
            )
    except LaunchError as exc:
        _fail(exc)
    console.print(
        f"[bold green]stack up[/bold green] in {time.monotonic() - started:.1f}s; "
        "`billing status` lists the URLs, `billing down` stops it."
    )


@app.command()
def down() -> None:
    """Stop every component (safe to run twice, or after a crash)."""
    try:
        Stack(Layout.selected()).down(_report)
    except LaunchError as exc:
        _fail(exc)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable")] = False,
) -> None:
    """Each component's base URL and whether it is ready."""
    report = Stack(Layout.selected()).status()
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    for name, info in report.items():
        state = (
            "[green]ready[/green]"
            if info["ready"]
            else ("[yellow]running[/yellow]" if info["running"] else "[red]stopped[/red]")
        )
        console.print(f"{name:16} {state:28} {info['url']}")


@app.command()
def env() -> None:
    """The dev settings as KEY=VALUE lines (``eval $(billing env)``-friendly)."""
    stack = Stack(Layout.selected())
    for key, value in {**stack.env(), **stack.role_env()}.items():
        sys.stdout.write(f"{key}={value}\n")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="User id (the token's sub)")],
    admin: Annotated[bool, typer.Option(help="Add the admin role")] = False,
    role: Annotated[list[str] | None, typer.Option(help="Extra role (repeatable)")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds")] = 3600,
    mfa: Annotated[
        bool, typer.Option(help="Signed in with a second factor just now (step-up MFA)")
    ] = False,
) -> None:
    """Print a JWT the local services accept."""
    roles = [*(role or []), *(["admin"] if admin else [])]
    sys.stdout.write(keys.mint_token(Layout.selected(), user, roles, ttl, mfa=mfa) + "\n")


@app.command()
def migrate() -> None:
    """Apply every service's pending migrations to the dev database, as each schema's owner."""
    stack = Stack(Layout.selected())
    try:
        stack.ensure_db_roles()
        for svc in stack.services.values():
            console.print(f"{svc.name}: {svc.migrate()}")
    except LaunchError as exc:
        _fail(exc)


app.command("go-live")(golive.command)
app.command("backup")(backup_commands.backup)
app.command("restore")(backup_commands.restore)


@app.command()
def setup() -> None:
    """Install the stack's components without starting them (CI warms up with this)."""
    try:
        Stack(Layout.selected()).install(_report)
    except LaunchError as exc:
        _fail(exc)


# --- operations: simulated Stripe deliveries, dead letters, stored webhooks -------------------

stripe_app = typer.Typer(
    help="Send the webhooks Stripe would send, signed, to the local webhook-ingest.",
    no_args_is_help=True,
)
dlq_app = typer.Typer(help="List and replay dead-lettered Kafka records.", no_args_is_help=True)
webhook_app = typer.Typer(help="Stored Stripe webhook events.", no_args_is_help=True)
app.add_typer(stripe_app, name="stripe")
app.add_typer(dlq_app, name="dlq")
app.add_typer(webhook_app, name="webhook")
app.command("probe")(probe.command)


class OpsError(Exception):
    """A failed operation, reported on stderr with exit code 1."""


@contextmanager
def _ops_errors(*also: type[Exception]) -> Iterator[None]:
    """Expected failures (plus ``also``) -> a one-line message on stderr and exit code 1."""
    caught: tuple[type[Exception], ...] = (
        OpsError,
        TargetError,
        httpx.HTTPError,
        OSError,
        *also,
    )
    try:
        yield
    except caught as exc:
        # Text, not markup: response bodies and broker errors may contain brackets. Not
        # wrapped: one line per error, also in a job's log.
        message = Text.assemble(("✗ ", "red"), str(exc) or type(exc).__name__)
        console.print(message, soft_wrap=True)
        raise typer.Exit(1) from None


def _kafka_errors() -> tuple[type[Exception], ...]:
    # Imported on demand: the Kafka stack is slow to import and only the dlq commands need it.
    from aiokafka.errors import KafkaError

    from billing_cli.dlq import DlqError

    return KafkaError, DlqError


def _http() -> httpx.Client:
    return httpx.Client(timeout=10.0)


def _admin_headers(target: OpsTarget) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.admin_token()}"}


def _fetch_purchase(target: OpsTarget, client: httpx.Client, purchase_id: str) -> sim.SimPurchase:
    url = target.url("checkout", f"/api/purchases/{purchase_id}")
    response = client.get(url, headers=_admin_headers(target))
    if not response.is_success:
        raise OpsError(f"GET {url} -> {response.status_code} {response.text}")
    try:
        return sim.SimPurchase.from_api(response.json())
    except (KeyError, TypeError, ValueError) as exc:
        raise OpsError(f"GET {url}: unexpected purchase body ({exc!r}): {response.text}") from exc


def _deliver(
    target: OpsTarget, client: httpx.Client, events: list[dict[str, Any]], times: int
) -> None:
    url = target.url("webhook-ingest", "/webhooks/stripe")
    secret = target.webhook_secret()
    if secret is None:
        where = target.describe()
        raise OpsError(f"no webhook signing secret for {where}: set {WEBHOOK_SECRET_ENV}")
    for evt in events:
        for _ in range(times):
            response = sim.send_sync(client, url, evt, secret)
            sys.stdout.write(f"{evt['type']} {evt['id']} {response.status_code} {response.text}\n")
            if not response.is_success:
                raise OpsError(f"webhook-ingest answered {response.status_code} for {evt['id']}")


@stripe_app.command("simulate-payment")
def simulate_payment(
    purchase_id: Annotated[str, typer.Argument(help="The checkout purchase id")],
    async_payment: Annotated[
        bool, typer.Option("--async-payment", help="A delayed method: unpaid, then succeeded")
    ] = False,
    times: Annotated[int, typer.Option(min=1, help="Deliveries of each event")] = 1,
    target: TargetOption = None,
    admin_target: AdminTargetOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Pay a purchase: the Checkout Session webhooks Stripe sends, each delivered N times."""
    with _ops_errors(), _http() as client:
        where = OpsTarget.resolve(target, admin_target, token_file)
        purchase = _fetch_purchase(where, client, purchase_id)
        if async_payment:
            events = [
                sim.session_completed(purchase, paid=False),
                sim.async_payment_succeeded(purchase),
                sim.charge_succeeded(purchase),
            ]
        else:
            events = [sim.session_completed(purchase), sim.charge_succeeded(purchase)]
        _deliver(where, client, events, times)


@stripe_app.command("simulate-refund")
def simulate_refund(
    purchase_id: Annotated[str, typer.Argument(help="The checkout purchase id")],
    refunded_total: Annotated[
        int | None,
        typer.Option(
            "--refunded-total",
            min=1,
            help="Cents refunded on the charge so far, this refund included (cumulative, as "
            "Stripe's charge.amount_refunded); default: the full price",
        ),
    ] = None,
    target: TargetOption = None,
    admin_target: AdminTargetOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Refund a purchase: the charge.refunded webhook for its charge, as Stripe sends it."""
    with _ops_errors(), _http() as client:
        where = OpsTarget.resolve(target, admin_target, token_file)
        purchase = _fetch_purchase(where, client, purchase_id)
        total = purchase.price_cents if refunded_total is None else refunded_total
        if total > purchase.price_cents:
            raise OpsError(f"--refunded-total {total} exceeds the price {purchase.price_cents}")
        # The amount of earlier refunds is unknown here, so this refund is the whole total.
        evt = sim.charge_refunded(purchase, refunded_total_cents=total, refund_cents=total)
        _deliver(where, client, [evt], 1)


def _dlq_names(topic: str) -> tuple[str, str, str]:
    from billing_events.topics import Topics

    from billing_cli.dlq import replay_group_for

    kafka = KafkaTarget.resolve()
    namespace = kafka.topic_namespace
    return kafka.bootstrap, Topics(namespace).name(topic), replay_group_for(namespace)


TopicOption = Annotated[
    str, typer.Option(help="DLQ topic, before the BILLING_TOPIC_NAMESPACE prefix")
]


@dlq_app.command("list")
def dlq_list(
    topic: TopicOption = "stripe.events.dlq.v1",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Every dead letter of the topic, pending or already replayed."""
    from billing_cli.dlq import read_letters

    with _ops_errors(*_kafka_errors()):
        bootstrap, dlq_topic, group = _dlq_names(topic)
        letters = asyncio.run(read_letters(bootstrap, dlq_topic, group))
    if as_json:
        sys.stdout.writelines(json.dumps(x.as_dict()) + "\n" for x in letters)
    elif letters:
        sys.stdout.writelines(_letter_rows(letters))
    else:
        console.print(f"no dead letters in {dlq_topic}")


def _letter_rows(letters: list[Letter]) -> list[str]:
    header = ("WHERE", "STATE", "ORIGINAL TOPIC", "KEY", "GROUP", "TRIES", "LAST FAILED", "ERROR")
    rows = [header] + [
        (
            f"{x.partition}:{x.offset}",
            "replayed" if x.replayed else "pending",
            x.original_topic,
            x.key,
            x.consumer_group,
            str(x.attempts),
            x.last_failed_at[:19],
            " ".join(f"{x.error_type}: {x.error_message}".split())[:100],
        )
        for x in letters
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]) + "\n"
        for r in rows
    ]


@dlq_app.command("replay")
def dlq_replay(
    topic: TopicOption = "stripe.events.dlq.v1",
    offset: Annotated[
        list[int] | None, typer.Option(help="Only the letter at this DLQ offset (repeatable)")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "dead letters replayed",
    actor: Annotated[
        str | None, typer.Option(help="Who replays, for the audit trail (default: $USER)")
    ] = None,
    correlation_id: Annotated[
        str | None, typer.Option(help="Correlation id of the audit record (default: a new one)")
    ] = None,
) -> None:
    """Re-publish pending letters to their original topics (all of them without --offset).

    The replay is then recorded in the audit trail (``billing.audit.v1``)."""
    from billing_cli.dlq import replay

    with _ops_errors(*_kafka_errors()):
        bootstrap, dlq_topic, group = _dlq_names(topic)
        done = asyncio.run(replay(bootstrap, dlq_topic, group, offset))
        for x in done:
            sys.stdout.write(
                f"replayed {dlq_topic}:{x.partition}:{x.offset} -> {x.original_topic} key={x.key}\n"
            )
        console.print(f"{len(done)} letter(s) replayed")
        if done:
            by = _replayed_by(actor, reason, correlation_id)
            _audit_dlq_replay(bootstrap, dlq_topic, done, by)
        missed = sorted(set(offset or ()) - {x.offset for x in done})
        if missed:
            raise OpsError(f"not replayed (no pending letter at): {', '.join(map(str, missed))}")


def _replayed_by(actor: str | None, reason: str, correlation_id: str | None) -> ReplayedBy:
    from billing_platform.context import new_id

    from billing_cli.dlq import ReplayedBy

    return ReplayedBy(actor or getpass.getuser(), reason, correlation_id or new_id())


def _audit_dlq_replay(bootstrap: str, dlq_topic: str, done: list[Letter], by: ReplayedBy) -> None:
    from billing_events.topics import Topics

    from billing_cli.dlq import record_replay

    topics = Topics(KafkaTarget.resolve().topic_namespace)
    record = asyncio.run(record_replay(bootstrap, topics, dlq_topic, done, by))
    console.print(
        f"audit record {record.meta.event_id} (correlation id {record.meta.correlation_id})"
    )


@webhook_app.command("replay")
def webhook_replay(
    event_id: Annotated[str, typer.Option("--event-id", help="Stripe event id (evt_...)")],
    target: TargetOption = None,
    admin_target: AdminTargetOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Publish a stored Stripe event again (webhook-ingest's admin replay)."""
    with _ops_errors(), _http() as client:
        where = OpsTarget.resolve(target, admin_target, token_file)
        url = where.url("webhook-ingest", "/api/admin/webhooks/replay")
        response = client.post(url, json={"eventId": event_id}, headers=_admin_headers(where))
        sys.stdout.write(f"{response.status_code} {response.text}\n")
        if not response.is_success:
            raise OpsError(f"POST {url} -> {response.status_code}")


@app.command()
def reconcile(
    date: Annotated[
        str | None, typer.Option("--date", help="UTC day YYYY-MM-DD (default: yesterday)")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency-Key: a repeat returns the stored run")
    ] = None,
    target: TargetOption = None,
    admin_target: AdminTargetOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Run a reconciliation now and print its result (JSON); exit 1 if it has findings."""
    with _ops_errors(), httpx.Client(timeout=600.0) as client:
        where = OpsTarget.resolve(target, admin_target, token_file)
        url = where.url("reconciler", "/api/admin/reconcile")
        headers = {**_admin_headers(where), **({"Idempotency-Key": key} if key else {})}
        response = client.post(url, json={"date": date} if date else {}, headers=headers)
        sys.stdout.write(response.text + "\n")
        if not response.is_success:
            raise OpsError(f"POST {url} -> {response.status_code}")
        if response.json().get("status") != "clean":
            raise typer.Exit(1)


@app.command()
def chaos(
    seed: Annotated[int, typer.Option(help="Seed of the workload and the kill schedule")] = 1,
    seconds: Annotated[float, typer.Option(min=10, help="Seconds of load under kills")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as JSON on stdout")] = False,
) -> None:
    """A seeded chaos run on a stack of its own: load, kills, checks; exit 1 unless all pass."""
    from billing_cli.chaos import runner

    try:
        result = runner.run(seed, seconds, lambda line: console.print(Text(line, "dim")))
    except LaunchError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        sys.stdout.writelines(line + "\n" for line in runner.render(result))
    if not result["passed"]:
        raise typer.Exit(1)


@app.command()
def statement(
    user: Annotated[str, typer.Option("--user", help="whose statement")],
    month: Annotated[str, typer.Option("--month", help="YYYY-MM (UTC)")],
    pdf: Annotated[Path | None, typer.Option("--pdf", help="write the PDF here")] = None,
    target: TargetOption = None,
    admin_target: AdminTargetOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Print a user's monthly statement (CSV), or write it as a PDF with --pdf."""
    with _ops_errors(), _http() as client:
        where = OpsTarget.resolve(target, admin_target, token_file)
        kind = "pdf" if pdf else "csv"
        url = where.url("ledger", f"/api/statements/{month}.{kind}")
        response = client.get(url, params={"userId": user}, headers=_admin_headers(where))
        if not response.is_success:
            raise OpsError(f"GET {url} -> {response.status_code} {response.text}")
        if pdf:
            pdf.write_bytes(response.content)
            sys.stdout.write(f"wrote {pdf}\n")
        else:
            sys.stdout.write(response.text)
