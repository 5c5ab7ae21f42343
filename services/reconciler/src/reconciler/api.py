"""HTTP routes of the reconciler: start a run, read the latest one (admin only).

``POST /api/admin/reconcile`` ``{"date"?: "YYYY-MM-DD"}`` reconciles that UTC day
(yesterday when left out; the integrity checks always cover the whole journal) and answers
the run. With an ``Idempotency-Key`` the first answer is stored with the run: the same key
again answers it (``Idempotent-Replayed: true``) without a new run, with another body 409.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from billing_platform.auth import AdminUser
from billing_platform.errors import ApiError
from fastapi import APIRouter, Body, Header
from fastapi.responses import JSONResponse

from reconciler import runs
from reconciler.period import InvalidPeriod, parse_period
from reconciler.runs import RunRequest
from reconciler.schemas import ReconcileRequest, RunOut
from reconciler.service import Answer

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
OptionalBody = Annotated[ReconcileRequest | None, Body()]


class Runs(Protocol):
    async def run(self, request: RunRequest) -> Answer: ...

    async def latest(self) -> dict[str, Any] | None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Deps:
    runs: Runs
    clock: Callable[[], datetime] = field(default=_utc_now)


def run_request(
    body: ReconcileRequest | None, admin_id: str, key: str | None, now: datetime
) -> RunRequest:
    """The run an admin asked for; 422 for a bad date or key."""
    date_text = body.date if body else None
    if key is not None and not runs.valid_key(key):
        raise ApiError(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {runs.MAX_KEY_LENGTH} characters",
        )
    try:
        period = parse_period(date_text, now)
    except InvalidPeriod as exc:
        raise ApiError(422, "invalid_date", str(exc)) from exc
    return RunRequest(period, date_text, "api", admin_id, key)


def router(deps: Deps) -> APIRouter:
    routes = APIRouter(tags=["reconciliation"])

    @routes.post("/api/admin/reconcile", response_model=RunOut)
    async def reconcile(
        admin: AdminUser, body: OptionalBody = None, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        """Run every check now; the answer is the stored run with its findings."""
        request = run_request(body, admin.user_id, idempotency_key, deps.clock())
        answer = await deps.runs.run(request)
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
        return JSONResponse(answer.body, headers=headers)

    @routes.get("/api/admin/reconciliation/latest", response_model=RunOut)
    async def latest(_admin: AdminUser) -> JSONResponse:
        """The latest finished run (failed runs are not answers) with its findings."""
        body = await deps.runs.latest()
        if body is None:
            raise ApiError(404, "no_runs", "no reconciliation run has finished yet")
        return JSONResponse(body)

    return routes
