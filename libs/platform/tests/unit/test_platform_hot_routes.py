"""A route answered in front of FastAPI's router (``HotRoute``), on the real app factory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from billing_platform.app import create_app
from billing_platform.errors import ApiError
from billing_platform.hot_routes import HotRoute
from billing_platform.settings import InfraSettings, ServiceSettings
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send


class Echo(BaseModel):
    word: str


@dataclass
class Served:
    client: TestClient
    scopes: list[Scope] = field(default_factory=list)


class _Noting:
    """The app, noting the scope of each HTTP request after the app is done with it."""

    def __init__(self, app: ASGIApp, scopes: list[Scope]) -> None:
        self._app = app
        self._scopes = scopes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
        if scope["type"] == "http":
            self._scopes.append(scope)


def _router() -> APIRouter:
    router = APIRouter()

    @router.post("/echo")
    async def echo(body: Echo) -> dict[str, str]:
        return {"word": body.word, "by": "router"}

    return router


async def _hot(request: Request) -> Response | None:
    """Answers a body whose word is "hot", refuses "no", leaves everything else."""
    body = await request.body()
    if body == b'{"word": "no"}':
        raise ApiError(409, "refused", "no", word="no")
    if body != b'{"word": "hot"}':
        return None
    return JSONResponse({"word": "hot", "by": "hot route"})


@pytest.fixture
def served() -> Iterator[Served]:
    scopes: list[Scope] = []
    settings = ServiceSettings(service_name="hot-test", infra=InfraSettings())
    route = Middleware(HotRoute, method="POST", path="/echo", handler=_hot)
    app = create_app(settings, routers=[_router()], hot_routes=[route])
    with TestClient(_Noting(app, scopes), raise_server_exceptions=False) as client:
        yield Served(client, scopes)


def test_the_handler_answers_without_the_router_inside_the_request_scope(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = served.client.post("/echo", content=b'{"word": "hot"}')

    assert response.json() == {"word": "hot", "by": "hot route"}
    assert response.headers["x-request-id"]  # the ids, stamped by the request scope around it
    [scope] = served.scopes
    assert "endpoint" not in scope  # set by FastAPI's router on each request it routes
    [line] = [r for r in caplog.records if r.getMessage() == "request"]
    assert (line.__dict__["route"], line.__dict__["status"]) == ("/echo", 200)


def test_a_request_left_by_the_handler_reaches_the_route_with_its_body(served: Served) -> None:
    response = served.client.post("/echo", content=b'{"word": "cold"}')

    assert response.json() == {"word": "cold", "by": "router"}
    [scope] = served.scopes
    assert scope["endpoint"].__name__ == "echo"


def test_a_request_the_route_refuses_gets_the_routes_refusal(served: Served) -> None:
    response = served.client.post("/echo", content=b'{"words": 1}')

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


def test_an_api_error_of_the_handler_is_the_apps_error_shape(served: Served) -> None:
    response = served.client.post("/echo", content=b'{"word": "no"}')

    assert response.status_code == 409
    assert response.json() == {"error": "refused", "message": "no", "word": "no"}


def test_other_methods_and_paths_go_by_the_router(served: Served) -> None:
    assert served.client.get("/echo").status_code == 405
    assert served.client.get("/health").status_code == 200
    assert all("endpoint" in scope for scope in served.scopes)
