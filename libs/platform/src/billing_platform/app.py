"""The FastAPI application every service is built from.

A service hands over its routers, the things that must start and stop with it (DB pool,
Kafka producer, consumers) and its readiness checks; this module supplies the rest:
``/health``, ``/readyz``, ``/metrics``, one error shape, request and correlation ids,
server spans and request metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing_platform import context, metrics, tracing
from billing_platform.auth import CurrentUser, JwtVerifier
from billing_platform.errors import ApiError
from billing_platform.logging import configure_logging
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
) -> FastAPI:
    configure_logging(settings.service_name, settings.infra.log_level)
    tracing.configure_tracing(settings.service_name, settings.infra.otel_exporter_otlp_endpoint)
    app = FastAPI(title=settings.service_name, lifespan=_lifespan(lifecycle))
    app.state.settings = settings
    app.state.jwt_verifier = JwtVerifier.from_files(
        settings.infra.jwt_public_keys, settings.infra.jwt_issuer, settings.infra.jwt_audience
    )
    app.include_router(_ops_router(settings, checks or {}))
    for router in routers:
        app.include_router(router)
    _install_error_handlers(app)
    app.middleware("http")(_RequestScope(settings.service_name))
    return app


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

    @router.get("/metrics")
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
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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


def _internal_error(exc: Exception) -> JSONResponse:
    """The one 500 answer: logged with the stack, nothing of the error leaked to the caller."""
    log.error("unhandled error", exc_info=exc)
    return JSONResponse({"error": "internal_error", "message": "internal error"}, status_code=500)


class _RequestScope:
    """Ids, a server span, metrics and one access log line per request."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._tracer = tracing.tracer("billing.http")

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.headers.get("x-request-id") or context.new_id()
        correlation_id = request.headers.get("x-correlation-id") or request_id
        context.request_id_var.set(request_id)
        context.correlation_id_var.set(correlation_id)
        parent = tracing.extract_context((k, v.encode()) for k, v in request.headers.items())
        started = time.perf_counter()
        name = f"{request.method} {request.url.path}"
        with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER):
            response = await self._call(request, call_next)
            trace.get_current_span().set_attribute("http.status_code", response.status_code)
        self._record(request, response, time.perf_counter() - started)
        response.headers["x-request-id"] = request_id
        response.headers["x-correlation-id"] = correlation_id
        return response

    @staticmethod
    async def _call(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Starlette re-raises unhandled errors past this middleware; answering here keeps
        # the 500 inside the request scope, so it carries ids and is counted.
        try:
            return await call_next(request)
        except Exception as exc:
            return _internal_error(exc)

    def _record(self, request: Request, response: Response, elapsed: float) -> None:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        labels = (self._service, request.method, route)
        metrics.HTTP_REQUESTS.labels(*labels, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(*labels).observe(elapsed)
        if route not in ("/health", "/readyz", "/metrics"):
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
