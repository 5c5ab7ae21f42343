"""A route whose every call counts, answered as plain ASGI in front of FastAPI's router.

FastAPI's routing, request-response wrapping, dependency solving and exception middleware
are a sixth of a small JSON route's CPU in the services' own app (``bench/hot_route.py``:
430-450 against 370-380 us a request at 500/s), and the gateway's chat call and Stripe's
deliveries pay them on every request. A ``HotRoute`` sits inside every other layer (ids,
access line, metrics, spans, CORS: see ``create_app``'s ``hot_routes``) and hands the
request to the service's handler directly.

The handler answers, or returns ``None`` to leave the request to the router: the route
declared as usual, which stays the documented one and then answers as it would without the
shortcut, from the same body (what the handler read is given again). An ``ApiError`` the
handler raises is answered as the app's own handler answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_platform.app import api_error_response
from billing_platform.errors import ApiError

HotHandler = Callable[[Request], Awaitable[Response | None]]


class HotRoute:
    def __init__(self, app: ASGIApp, *, method: str, path: str, handler: HotHandler) -> None:
        self._app = app
        self._method = method
        self._path = path
        self._handler = handler
        self._route: APIRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self._path
            or scope["method"] != self._method
        ):
            await self._app(scope, receive, send)
            return
        read = _Recorded(receive)
        try:
            response = await self._handler(Request(scope, read))
        except ApiError as exc:
            response = api_error_response(exc)
        if response is None:
            await self._app(scope, read.again(), send)
            return
        # The access line and the request metrics name the route by it.
        scope["route"] = self._route or self._find_route(scope["app"])
        await response(scope, receive, send)

    def _find_route(self, app: FastAPI) -> APIRoute:
        self._route = next(
            r
            for r in app.router.routes
            if isinstance(r, APIRoute) and r.path == self._path and self._method in r.methods
        )
        return self._route


class _Recorded:
    """``receive``, keeping what it gave, to give it again to the router."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._given: list[Message] = []

    async def __call__(self) -> Message:
        message = await self._receive()
        self._given.append(message)
        return message

    def again(self) -> Receive:
        pending = list(reversed(self._given))

        async def receive() -> Message:
            return pending.pop() if pending else await self._receive()

        return receive
