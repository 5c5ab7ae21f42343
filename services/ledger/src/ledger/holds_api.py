"""Internal, service-authenticated hold API (metering calls it around every AI call).

Each route is one short transaction; nothing here waits on anything but the database.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from billing_events.topics import Topics
from billing_platform.auth import ADMIN_ROLE, SERVICE_ROLE, Principal, require_role
from billing_platform.db import Database
from billing_platform.errors import ApiError
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ledger import holds
from ledger.schemas import CaptureIn, HoldIn

ServiceCaller = Annotated[Principal, require_role(SERVICE_ROLE, ADMIN_ROLE)]


def _hold_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ApiError(404, "hold_not_found", "no such hold") from exc


def router(db: Database, topics: Topics) -> APIRouter:
    api = APIRouter(prefix="/internal/holds", tags=["internal"])

    @api.post("")
    async def create(body: HoldIn, _: ServiceCaller) -> JSONResponse:
        async with db.pool.acquire() as conn, conn.transaction():
            created, answer = await holds.create_hold(
                conn,
                body.user_id,
                body.amount_millicredits,
                body.idempotency_key,
                body.ttl_seconds,
            )
        return JSONResponse(answer, status_code=201 if created else 200)

    @api.post("/{hold_id}/capture")
    async def capture(hold_id: str, body: CaptureIn, _: ServiceCaller) -> dict[str, Any]:
        usage = holds.Usage(
            body.usage_id,
            body.amount_millicredits,
            body.model,
            body.input_tokens,
            body.output_tokens,
            body.rate_card_version,
        )
        async with db.pool.acquire() as conn, conn.transaction():
            return await holds.capture(conn, topics, _hold_id(hold_id), usage)

    @api.post("/{hold_id}/release")
    async def release(hold_id: str, _: ServiceCaller) -> dict[str, Any]:
        async with db.pool.acquire() as conn, conn.transaction():
            return await holds.release(conn, _hold_id(hold_id))

    return api
