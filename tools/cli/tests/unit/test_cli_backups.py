"""pgBackRest wiring of the local stacks: which archive, what configuration, which moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from billing_cli.backups import Backups, BackupSet, parse_target
from billing_cli.components import Postgres
from billing_cli.layout import Layout
from billing_cli.procs import LaunchError, ProcessManager
from billing_cli.stack import Stack


def _backups(layout: Layout) -> Backups:
    procs = ProcessManager(layout.run, layout.logs)
    return Backups(layout, Postgres(layout, procs, "pw"))


def test_only_the_dev_and_drill_stacks_archive_wal(tmp_path: Path) -> None:
    assert Layout("stack", tmp_path).archives_wal
    assert Layout.drill().archives_wal
    assert not Layout.test().archives_wal
    assert not Layout.chaos().archives_wal


def test_the_configuration_names_this_clusters_data_port_and_socket(tmp_path: Path) -> None:
    layout = Layout("drill", tmp_path, 7000)
    text = _backups(layout)._config_text()
    data = tmp_path / ".local" / "drill" / "postgres" / "data"
    assert f"pg1-path={data}" in text.splitlines()
    assert "pg1-port=22432" in text.splitlines()
    assert f"pg1-socket-path={data.parent}" in text.splitlines()
    assert f"repo1-path={data.parent / 'pgbackrest' / 'repo'}" in text.splitlines()


def test_archiving_pushes_with_this_configuration(tmp_path: Path) -> None:
    backups = _backups(Layout("stack", tmp_path))
    options = backups.archive_options()
    assert "-c archive_mode=on" in options
    assert f"--config={backups.config} --stanza=billing archive-push %p" in options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T07:40:00Z", datetime(2026, 11, 26, 7, 40, tzinfo=UTC)),
        ("2026-11-26T07:40:00", datetime(2026, 11, 26, 7, 40, tzinfo=UTC)),
        (
            "2026-11-26T08:40:00+01:00",
            datetime(2026, 11, 26, 8, 40, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_a_target_without_an_offset_is_utc(text: str, expected: datetime) -> None:
    assert parse_target(text) == expected
    assert parse_target(text).astimezone(UTC) == expected.astimezone(UTC)


def test_a_target_that_is_no_time_is_refused() -> None:
    with pytest.raises(LaunchError, match="not an ISO 8601 time"):
        parse_target("yesterday")


def test_a_backup_set_reads_pgbackrest_info() -> None:
    raw = {
        "label": "20261126-073000F",
        "type": "full",
        "timestamp": {"start": 1795678200, "stop": 1795678205},
        "info": {"size": 4096},
    }
    got = BackupSet.of(raw)
    assert got.kind == "full"
    assert got.size_bytes == 4096
    assert got.stopped - got.started == timedelta(seconds=5)
    assert got.started.tzinfo is UTC


def test_a_backup_of_a_stack_that_does_not_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="does not archive WAL"):
        _backups(Layout("test-stack", tmp_path, 10000)).backup("full")


def test_an_unknown_backup_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="backup type"):
        _backups(Layout("stack", tmp_path)).backup("weekly")


def test_a_stack_that_does_not_archive_cannot_be_restored(tmp_path: Path) -> None:
    stack = Stack(Layout("test-stack", tmp_path, 10000))
    with pytest.raises(LaunchError, match="does not archive WAL"):
        stack.restore(datetime.now(UTC) - timedelta(minutes=1))


def test_a_moment_still_to_come_cannot_be_restored_to(tmp_path: Path) -> None:
    stack = Stack(Layout("stack", tmp_path))
    with pytest.raises(LaunchError, match="in the future"):
        stack.restore(datetime.now(UTC) + timedelta(minutes=1))
