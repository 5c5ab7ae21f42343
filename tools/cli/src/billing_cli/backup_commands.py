"""``billing backup`` and ``billing restore``: the local stack's database, with pgBackRest."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from billing_cli.backups import BACKUP_TYPES, BackupSet, parse_target
from billing_cli.layout import Layout
from billing_cli.procs import LaunchError
from billing_cli.stack import Stack

console = Console(stderr=True)


def _report(label: str, seconds: float) -> None:
    console.print(f"[green]✓[/green] {label} [dim]({seconds:.1f}s)[/dim]")


def _fail(exc: Exception) -> None:
    console.print(Text.assemble(("✗ ", "red"), str(exc)))
    raise typer.Exit(1)


def _row(backup: BackupSet) -> dict[str, object]:
    return {
        "label": backup.label,
        "type": backup.kind,
        "started": backup.started.isoformat(),
        "stopped": backup.stopped.isoformat(),
        "sizeBytes": backup.size_bytes,
    }


def backup(
    kind: Annotated[
        str | None,
        typer.Option("--type", help=f"One of {', '.join(BACKUP_TYPES)} (default: full, then incr)"),
    ] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the backups, take none")] = False,
) -> None:
    """Back up the local stack's database (pgBackRest; WAL is archived continuously)."""
    try:
        backups = Stack(Layout.selected()).backups
        sets = backups.sets() if list_only else [backups.backup(kind)]
    except LaunchError as exc:
        _fail(exc)
    sys.stdout.writelines(json.dumps(_row(b)) + "\n" for b in sets)


def restore(
    to: Annotated[
        str, typer.Option("--to", help="ISO 8601 moment, e.g. 2026-11-26T07:40:00Z (UTC if bare)")
    ],
) -> None:
    """Restore the database to a moment and start the services on it again.

    Consumers resume from the positions the restored database holds; Kafka replays every
    record after that moment, and each still has exactly one effect."""
    try:
        target = parse_target(to)
        Stack(Layout.selected()).restore(target, _report)
    except LaunchError as exc:
        _fail(exc)
