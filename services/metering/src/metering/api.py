"""HTTP routes of metering: the rate card, the AI gateway, usage reconcile, usage totals and
the guardrails' admin routes (caps, pauses, review flags).

Each route hands a validated request to the gateway (``service``), which owns the order of
checks, holds and charges; a route only turns the outcome into a response. A replayed
answer (same idempotency key) carries ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated

from billing_platform.auth import (
    ADMIN_ROLE,
    SERVICE_ROLE,
    AdminUser,
    CurrentUser,
    Principal,
    current_principal,
    require_role,
)
from billing_platform.errors import ApiError
from billing_platform.hot_routes import HotRoute
from billing_platform.schemas import Text
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.types import Receive, Scope, Send

from metering import service
from metering.guard_store import GuardStore
from metering.model_client import ChatMessage
from metering.rate_card import RateCardBook
from metering.schemas import (
    MAX_KEY_LENGTH,
    MAX_USER_ID_LENGTH,
    CapsOut,
    CapsRequest,
    ChatRequest,
    PausedUsersOut,
    PauseOut,
    RateCardOut,
    ReasonRequest,
    ReconcileRequest,
    ReviewFlagsOut,
    UsageSummaryOut,
)
from metering.usage_store import UsageStore

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
ServiceOrAdmin = Annotated[Principal, require_role(SERVICE_ROLE, ADMIN_ROLE)]
UserIdPath = Annotated[Text, Path(min_length=1, max_length=MAX_USER_ID_LENGTH)]
UserIdQuery = Annotated[Text | None, Query(alias="userId", max_length=MAX_USER_ID_LENGTH)]


def _today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class ApiDeps:
    gateway: service.Gateway
    store: UsageStore
    cards: RateCardBook
    guard: GuardStore
    today: Callable[[], date] = _today
    clock: Callable[[], datetime] = service.utc_now


def router(deps: ApiDeps) -> APIRouter:
    api = APIRouter(tags=["metering"])
    _rate_card_routes(api, deps)
    _gateway_routes(api, deps)
    _usage_routes(api, deps)
    _cap_routes(api, deps)
    _pause_routes(api, deps)
    return api


def _rate_card_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/rate-card", response_model=RateCardOut)
    async def rate_card(_: CurrentUser) -> RateCardOut:
        return RateCardOut.of(deps.cards.current())


CHAT_PATH = "/api/ai/chat"


def _gateway_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.post(CHAT_PATH, response_model=None)
    async def chat(
        body: ChatRequest, user: CurrentUser, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Call a model, paid in credits: the completion plus its usage and balance.

        With ``"stream": true`` the answer is Server-Sent Events: the model's chunks as
        ``data:`` lines, then ``event: billing`` with usage and balance, then ``[DONE]``.
        """
        return respond(await deps.gateway.chat(_chat_call(body, user, idempotency_key)))

    @api.post("/api/usage/reconcile", response_model=None)
    async def reconcile(body: ReconcileRequest, _: ServiceOrAdmin) -> Response:
        """Charge usage made outside the gateway; one key is charged once."""
        call = service.ReconcileCall(
            body.userId, body.model, body.inputTokens, body.outputTokens, body.idempotencyKey
        )
        return respond(await deps.gateway.reconcile(call))


def _usage_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/usage", response_model=UsageSummaryOut)
    async def usage(
        user: CurrentUser,
        start: Annotated[date | None, Query(alias="from")] = None,
        end: Annotated[date | None, Query(alias="to")] = None,
        user_id: UserIdQuery = None,
    ) -> JSONResponse:
        """Calls, tokens and credits per model over whole UTC days (default: the last 30)."""
        target = user_id or user.user_id
        user.ensure_can_access(target)
        first, last = service.usage_window(start, end, deps.today())
        return JSONResponse(await service.usage_report(deps.store, target, first, last))


def _cap_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/admin/caps/{userId}", response_model=CapsOut)
    async def get_caps(userId: UserIdPath, _: AdminUser) -> CapsOut:
        """The caps in force for a user, the defaults, and which ones are overridden."""
        return CapsOut.of(userId, await service.caps_of(deps.guard, userId))

    @api.put("/api/admin/caps/{userId}", response_model=CapsOut)
    async def put_caps(userId: UserIdPath, body: CapsRequest, admin: AdminUser) -> CapsOut:
        """Replace a user's cap overrides; an absent or null cap means the default."""
        view = await service.set_caps(deps.guard, userId, body.caps(), admin.user_id, body.reason)
        return CapsOut.of(userId, view)


def _pause_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/admin/users/{userId}/pause", response_model=PauseOut)
    async def get_pause(userId: UserIdPath, _: AdminUser) -> PauseOut:
        """Whether the session cap paused the user, since when, and any resume."""
        return PauseOut.of(userId, await service.pause_of(deps.guard, userId))

    @api.get("/api/admin/paused-users", response_model=PausedUsersOut)
    async def paused_users(
        _: AdminUser, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> PausedUsersOut:
        """Users the session cap paused and no admin resumed yet, most recent first."""
        pauses = await service.paused_users(deps.guard, limit)
        return PausedUsersOut(users=[PauseOut.of(p.user_id, p) for p in pauses])

    @api.post("/api/admin/users/{userId}/resume", response_model=PauseOut)
    async def resume(userId: UserIdPath, body: ReasonRequest, admin: AdminUser) -> PauseOut:
        """Lift a pause (409 ``not_paused`` if there is none)."""
        pause = await service.resume(deps.guard, userId, admin.user_id, body.reason, deps.clock())
        return PauseOut.of(userId, pause)

    @api.get("/api/admin/review-flags", response_model=ReviewFlagsOut)
    async def review_flags(
        _: AdminUser,
        user_id: UserIdQuery = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> ReviewFlagsOut:
        """Charged calls flagged by the anomaly breaker, newest first."""
        return ReviewFlagsOut.of(await service.review_flags(deps.guard, user_id, limit))


def _chat_call(body: ChatRequest, user: Principal, header_key: str | None) -> service.ChatCall:
    return service.ChatCall(
        user_id=user.user_id,
        model=body.model,
        messages=[ChatMessage(m.role, m.content) for m in body.messages],
        max_tokens=body.max_tokens,
        stream=body.stream,
        return_to=body.returnTo,
        idempotency_key=_one_key(body.idempotencyKey, header_key),
    )


def chat_route(deps: ApiDeps) -> Middleware:
    """The chat call in front of FastAPI's router (``HotRoute``): a call valid as it comes (a
    JSON body that is a ``ChatRequest``, a valid token, a well-formed key) goes straight to
    the gateway, read and validated by the same code as the route's; any other request is
    left to the route, so every refusal is the route's own answer."""

    async def answer(request: Request) -> Response | None:
        call = await _valid_call(request)
        return None if call is None else respond(await deps.gateway.chat(call))

    return Middleware(HotRoute, method="POST", path=CHAT_PATH, handler=answer)


async def _valid_call(request: Request) -> service.ChatCall | None:
    """The call, if the request is valid as the route would find it; otherwise ``None``."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    body = await request.body()
    if not body:
        return None
    try:
        user = await current_principal(request)
        chat = ChatRequest.model_validate(json.loads(body))
        return _chat_call(chat, user, request.headers.get("idempotency-key"))
    except (ApiError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def _one_key(in_body: str | None, in_header: str | None) -> str | None:
    if in_header is not None and not 0 < len(in_header) <= MAX_KEY_LENGTH:
        raise ApiError(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
        )
    if in_body is not None and in_header is not None and in_body != in_header:
        raise ApiError(
            422,
            "idempotency_key_mismatch",
            "the Idempotency-Key header and the body's idempotencyKey differ",
        )
    return in_body or in_header


def respond(answer: service.Answer | service.StreamAnswer) -> Response:
    if isinstance(answer, service.StreamAnswer):
        return SettledStream(answer)
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


class SettledStream(StreamingResponse):
    """An event stream whose call is settled once the response is over, however it ended."""

    def __init__(self, answer: service.StreamAnswer) -> None:
        super().__init__(
            answer.events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._answer.close()
