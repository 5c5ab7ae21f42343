"""``GET /api/admin/audit``: the platform's one audit trail, for admins.

Newest record first (in the order the ledger kept them), filtered by exact ``action``,
``actor``, ``target`` (``<kind>:<id>``), ``userId`` or ``correlationId``, paged with the
opaque ``cursor`` of the previous page's ``nextCursor``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from billing_platform import cursors
from billing_platform.auth import AdminUser
from billing_platform.db import Database
from billing_platform.schemas import Text
from fastapi import APIRouter, Query

from ledger import repository
from ledger.schemas import AuditPage, AuditRecordOut

CURSOR_PREFIX = "a"
Filter = Annotated[Text | None, Query(min_length=1, max_length=300)]


def router(db: Database) -> APIRouter:
    api = APIRouter(tags=["admin"])

    @api.get("/api/admin/audit", response_model=AuditPage, response_model_by_alias=True)
    async def audit_trail(
        _: AdminUser,
        action: Filter = None,
        actor: Filter = None,
        target: Filter = None,
        user_id: Annotated[Text | None, Query(alias="userId", min_length=1, max_length=300)] = None,
        correlation_id: Annotated[
            Text | None, Query(alias="correlationId", min_length=1, max_length=300)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[Text | None, Query(max_length=100)] = None,
    ) -> AuditPage:
        where = repository.AuditFilter(action, actor, target, user_id, correlation_id)
        before = cursors.decode(CURSOR_PREFIX, cursor)
        async with db.pool.acquire() as conn:
            rows = await repository.audit_newest_first(conn, where, before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = cursors.encode(CURSOR_PREFIX, rows[-1]["id"]) if more else None
        return AuditPage(records=[record_body(r) for r in rows], next_cursor=next_cursor)

    return api


def record_body(row: Any) -> AuditRecordOut:
    return AuditRecordOut(
        id=str(row["id"]),
        event_id=row["event_id"],
        occurred_at=row["occurred_at"],
        recorded_at=row["created_at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"] or "",
        target_user_id=row["target_user_id"],
        reference_id=row["reference_id"],
        reason=row["reason"],
        correlation_id=row["correlation_id"],
        source=row["source"],
        details=json.loads(row["details"]),
    )
