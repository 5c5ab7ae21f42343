"""A reconciliation run as data: its record, its JSON body, and the Idempotency-Key rule."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from reconciler.findings import Finding
from reconciler.period import Period
from reconciler.schemas import CheckOut, FindingOut, JournalChainOut, PeriodOut, RunOut

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class RunRequest:
    period: Period
    date_text: str | None
    trigger: str
    requested_by: str | None = None
    idempotency_key: str | None = None

    @property
    def request_hash(self) -> str:
        return request_hash(self.date_text)


@dataclass(frozen=True)
class ChainHead:
    last_entry_id: int
    chain_hash: bytes


@dataclass(frozen=True)
class CheckCount:
    name: str
    findings: int


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    period: Period
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    checks: tuple[CheckCount, ...]
    findings: tuple[Finding, ...]
    stripe_api_sessions_seen: int | None = None
    journal_head: ChainHead | None = None

    @property
    def status(self) -> str:
        return "findings" if self.findings else "clean"


def build_record(
    run_id: str,
    period: Period,
    started_at: datetime,
    finished_at: datetime,
    results: Sequence[tuple[str, Sequence[Finding]]],
    stripe_api_sessions_seen: int | None,
    journal_head: ChainHead | None,
) -> RunRecord:
    """A finished run from each check's findings, in the order the checks ran."""
    return RunRecord(
        run_id=run_id,
        period=period,
        started_at=started_at,
        finished_at=finished_at,
        duration_ms=max(0, round((finished_at - started_at).total_seconds() * 1000)),
        checks=tuple(CheckCount(name, len(found)) for name, found in results),
        findings=tuple(f for _, found in results for f in found),
        stripe_api_sessions_seen=stripe_api_sessions_seen,
        journal_head=journal_head,
    )


def run_body(record: RunRecord) -> dict[str, Any]:
    """The JSON a run is answered with, first time and on every replay."""
    return RunOut(
        run_id=record.run_id,
        period=PeriodOut(start=record.period.start, end=record.period.end),
        status="findings" if record.findings else "clean",
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration_ms=record.duration_ms,
        checks=[CheckOut(name=c.name, findings=c.findings) for c in record.checks],
        findings=[_finding_out(f) for f in record.findings],
        stripe_api_sessions_seen=record.stripe_api_sessions_seen,
        journal_chain=_chain_out(record.journal_head),
    ).model_dump(mode="json", by_alias=True)


def _finding_out(finding: Finding) -> FindingOut:
    return FindingOut(
        check=finding.check,
        kind=finding.kind,
        user_id=finding.user_id,
        references=list(finding.references),
        expected_millicredits=finding.expected_millicredits,
        actual_millicredits=finding.actual_millicredits,
        detail=finding.detail,
    )


def _chain_out(head: ChainHead | None) -> JournalChainOut | None:
    if head is None:
        return None
    return JournalChainOut(last_entry_id=head.last_entry_id, chain_hash=head.chain_hash.hex())


def request_hash(date_text: str | None) -> str:
    """sha256 of the canonical request body: what "the same body" means for a key."""
    canonical = json.dumps({"date": date_text}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Decision(StrEnum):
    NEW = "new"
    REPLAY = "replay"
    CONFLICT = "conflict"


def decide(stored_hash: str | None, req_hash: str) -> Decision:
    """A key not used yet runs; used with the same body replays; with another body, 409."""
    if stored_hash is None:
        return Decision.NEW
    return Decision.REPLAY if stored_hash == req_hash else Decision.CONFLICT


def valid_key(key: str) -> bool:
    return bool(key.strip()) and len(key) <= MAX_KEY_LENGTH
