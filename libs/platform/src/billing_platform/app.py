"""The FastAPI application every service is built from.

A service hands over its routers, the things that must start and stop with it (DB pool,
Kafka producer, consumers) and its readiness checks; this module supplies the rest:
``/health``, ``/readyz``, ``/metrics``, one error shape, request and correlation ids,
server spans and request metrics.

Server spans: with traces exported (an OTLP endpoint set), the FastAPI instrumentation opens
them; otherwise the request scope below does, exported nowhere, so that every request still
has a trace id for its log lines and for what it publishes. One server span either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_platform import context, metrics, tracing
from billing_platform.auth import CurrentUser, JwtVerifier
from billing_platform.errors import ApiError
from billing_platform.logging import configure_logging
from billing_platform.outages import is_outage
from billing_platform.settings import ServiceSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def create_app(
    settings: ServiceSettings,
    *,
    routers: Sequence[APIRouter] = (),
    lifecycle: Sequence[Lifecycle] = (),
    checks: dict[str, ReadinessCheck] | None = None,
    browser_facing: bool = False,
    tracer_provider: trace.TracerProvider | None = None,
    hot_routes: Sequence[Middleware] = (),
) -> FastAPI:
    """``browser_facing`` services answer CORS for the configured origins (and no others).
    Spans come from ``tracer_provider``, by default the process's, configured from settings.
    ``hot_routes`` sit in front of FastAPI's router, inside every other layer (ids, access
    line, metrics, spans, CORS): plain ASGI for a route whose every call counts."""
    configure_logging(settings.service_name, settings.infra.log_level)
    infra = settings.infra
    provider = tracer_provider or tracing.configure_tracing(
        settings.service_name, infra.otel_exporter_otlp_endpoint, infra.otel_traces_sampler_arg
    )
    # API-only: no HTML docs pages (they would need scripts the CSP below forbids).
    app = FastAPI(
        title=settings.service_name,
        lifespan=_lifespan(lifecycle),
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.jwt_verifier = JwtVerifier.from_files(
        settings.infra.jwt_public_keys,
        settings.infra.jwt_issuer,
        settings.infra.jwt_audience,
        settings.infra.mfa_max_age_s,
    )
    app.include_router(_ops_router(settings, checks or {}))
    for router in routers:
        app.include_router(router)
    _install_error_handlers(app)
    for route in hot_routes:  # added first, so innermost
        app.add_middleware(route.cls, *route.args, **route.kwargs)
    if browser_facing:
        _allow_origins(app, settings.infra.cors_allowed_origins)
    instrumented = tracing.instrument(app, infra.otel_exporter_otlp_endpoint, provider)
    server_spans = None if instrumented else provider.get_tracer("billing.http")
    # Added last, so outermost: CORS preflight answers get the ids and security headers too.
    app.add_middleware(_RequestScope, service=settings.service_name, server_spans=server_spans)
    return app


def _allow_origins(app: FastAPI, origins: Sequence[str]) -> None:
    # Bearer tokens, not cookies: no credentials mode, so no origin can ride a session.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "X-Request-Id",
            "X-Correlation-Id",
        ],
        expose_headers=[
            "X-Request-Id",
            "X-Correlation-Id",
            "Retry-After",
            "Idempotent-Replayed",
            "X-Billing-Overhead-Ms",
        ],
        max_age=600,
    )


# On every answer: nothing here is a page to frame, sniff, cache or reach over plain HTTP.
SECURITY_HEADERS = (
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)


def _lifespan(parts: Sequence[Lifecycle]) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        started: list[Lifecycle] = []
        try:
            for part in parts:
                await part.start()
                started.append(part)
            yield
        finally:
            for part in reversed(started):
                try:
                    await part.stop()
                except Exception:
                    log.exception("error while stopping %s", type(part).__name__)

    return lifespan


def _ops_router(settings: ServiceSettings, checks: dict[str, ReadinessCheck]) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results = await run_checks(checks, settings.readiness_timeout_s)
        ok = all(r == "ok" for r in results.values())
        body = {"status": "ready" if ok else "not_ready", "checks": results}
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/api/whoami")
    async def whoami(principal: CurrentUser) -> dict[str, object]:
        """Who the bearer token says the caller is: the quickest check of a token."""
        return {"userId": principal.user_id, "roles": sorted(principal.roles)}

    # Documented as the text exposition it is, not as the JSON FastAPI assumes.
    text: dict[int | str, dict[str, Any]] = {200: {"content": {"text/plain": {}}}}

    @router.get("/metrics", response_class=Response, responses=text)
    async def prometheus() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    return router


async def run_checks(checks: dict[str, ReadinessCheck], timeout_s: float) -> dict[str, str]:
    """Run all checks concurrently; each reports "ok" or why not, never hangs past timeout."""

    async def one(check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return f"error: {type(exc).__name__}"
        return "ok"

    names = list(checks)
    outcomes = await asyncio.gather(*(one(checks[n]) for n in names))
    return dict(zip(names, outcomes, strict=True))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
        body = {"error": "validation_error", "message": "invalid request", "details": details}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _internal_error(exc)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The answer to an ``ApiError``, wherever it is caught."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _internal_error(exc: Exception) -> JSONResponse:
    """The one 500 answer: logged with the stack, nothing of the error leaked to the caller.

    A dependency that is down (the database refusing, restarting or dropping connections)
    is not a fault of the request: 503, which tells the client to retry.
    """
    if is_outage(exc):
        log.warning("dependency unavailable", exc_info=exc)
        body = {"error": "service_unavailable", "message": "a dependency is down; retry"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    log.error("unhandled error", exc_info=exc)
    return JSONResponse({"error": "internal_error", "message": "internal error"}, status_code=500)


class _RequestScope:
    """Ids, metrics and one access log line per request; the server span when given a
    tracer for them (``server_spans``), that is when no instrumentation opens one around it.

    Plain ASGI rather than ``BaseHTTPMiddleware``: the app runs in this task, so the
    access line sees context set by the endpoint (the user id) and no per-request task
    or memory streams are paid for.
    """

    def __init__(
        self, app: ASGIApp, service: str, server_spans: trace.Tracer | None = None
    ) -> None:
        self._app = app
        self._service = service
        self._tracer = server_spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id") or context.new_id()
        correlation_id = request.headers.get("x-correlation-id") or request_id
        bound = _bind_ids(request_id, correlation_id)
        try:
            ids = {"x-request-id": request_id, "x-correlation-id": correlation_id}
            reply = _Reply(send, ids)
            if self._tracer is None:
                await self._served(request, receive, reply)
            else:
                await self._traced(self._tracer, request, receive, reply)
        finally:
            _unbind(bound)

    async def _traced(
        self, tracer: trace.Tracer, request: Request, receive: Receive, reply: _Reply
    ) -> None:
        parent = tracing.extract_context((k, v.encode()) for k, v in request.headers.items())
        name = f"{request.method} {request.url.path}"
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
            try:
                await self._served(request, receive, reply)
            finally:
                if reply.started:
                    span.set_attribute("http.status_code", reply.status)

    async def _served(self, request: Request, receive: Receive, reply: _Reply) -> None:
        # Inside the server span, whoever opened it: the access line carries its trace id.
        started = time.perf_counter()
        try:
            await self._call(request.scope, receive, reply)
        finally:
            # A failure after the head went out still answered the client: count it.
            if reply.started:
                self._record(request, reply.status, time.perf_counter() - started)

    async def _call(self, scope: Scope, receive: Receive, reply: _Reply) -> None:
        # Starlette re-raises unhandled errors past this middleware; answering here keeps
        # the 500 inside the request scope, so it carries ids and is counted. Once the
        # head is sent no other answer is possible, so the error goes on up.
        try:
            await self._app(scope, receive, reply.send)
            if not reply.started:
                raise RuntimeError("no response returned")
        except Exception as exc:
            if reply.started:
                raise
            # Answered here, the error never reaches the instrumentation's own handler.
            trace.get_current_span().record_exception(exc)
            await _internal_error(exc)(scope, receive, reply.send)

    def _record(self, request: Request, status: int, elapsed: float) -> None:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        labels = (self._service, request.method, route)
        metrics.HTTP_REQUESTS.labels(*labels, str(status)).inc()
        metrics.HTTP_LATENCY.labels(*labels).observe(elapsed)
        if route not in ("/health", "/readyz", "/metrics"):
            log.info(
                "request",
                extra={
                    **(context.log_fields_var.get() or {}),
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


class _Reply:
    """The app's ``send``, noting the status and stamping the ids on the response head."""

    def __init__(self, send: Send, ids: dict[str, str]) -> None:
        self._send = send
        self._ids = ids
        self.started = False
        self.status = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            # Noted before sending: if sending fails, the head may be half out already.
            self.started = True
            self.status = message["status"]
            headers = MutableHeaders(scope=message)
            for name, value in self._ids.items():
                headers[name] = value
            for name, value in SECURITY_HEADERS:
                headers.setdefault(name, value)
        await self._send(message)


_Bound = list[tuple[ContextVar[Any], Token[Any]]]


def _bind_ids(request_id: str, correlation_id: str) -> _Bound:
    # The user var is cleared too: auth sets it inside the app, and without a token of
    # our own it would outlive the request whenever the caller reuses one task/context
    # (in-process ASGI clients do; uvicorn gives each request its own task).
    bound: _Bound = [
        (context.request_id_var, context.request_id_var.set(request_id)),
        (context.correlation_id_var, context.correlation_id_var.set(correlation_id)),
        (context.user_id_var, context.user_id_var.set(None)),
    ]
    return [*bound, (context.log_fields_var, context.log_fields_var.set({}))]


def _unbind(bound: _Bound) -> None:
    for var, token in reversed(bound):
        var.reset(token)
