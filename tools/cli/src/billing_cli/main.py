"""``billing``: the one CLI for running and operating the platform."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from billing_cli import keys
from billing_cli.layout import Layout
from billing_cli.procs import LaunchError
from billing_cli.stack import Stack

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
) -> None:
    """Install what is missing and start Kafka, PostgreSQL, stripe-mock, devllm, services."""
    started = time.monotonic()
    try:
        with console.status("starting the local stack..."):
            Stack(Layout.selected()).up(_report, services=not infra_only)
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
    for key, value in Stack(Layout.selected()).env().items():
        sys.stdout.write(f"{key}={value}\n")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="User id (the token's sub)")],
    admin: Annotated[bool, typer.Option(help="Add the admin role")] = False,
    role: Annotated[list[str] | None, typer.Option(help="Extra role (repeatable)")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds")] = 3600,
) -> None:
    """Print a JWT the local services accept."""
    roles = [*(role or []), *(["admin"] if admin else [])]
    sys.stdout.write(keys.mint_token(Layout.selected(), user, roles, ttl) + "\n")


@app.command()
def migrate() -> None:
    """Apply every service's pending migrations to the dev database."""
    stack = Stack(Layout.selected())
    try:
        for svc in stack.services.values():
            console.print(f"{svc.name}: {svc.migrate()}")
    except LaunchError as exc:
        _fail(exc)


@app.command()
def setup() -> None:
    """Install the stack's components without starting them (CI warms up with this)."""
    try:
        Stack(Layout.selected()).install(_report)
    except LaunchError as exc:
        _fail(exc)
