"""The per-request middleware: streaming, the access line's context and pass-through."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from billing_platform import metrics
from billing_platform.app import _RequestScope, create_app
from billing_platform.context import (
    annotate_request,
    correlation_id_var,
    request_id_var,
    user_id_var,
)
from billing_platform.logging import mask_user_id
from billing_platform.settings import InfraSettings, ServiceSettings
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

Chunks = Callable[[], AsyncIterator[bytes]]


def _access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["msg"] == "request"]


def _authed_app(key: Any, folder: Path) -> FastAPI:
    infra = InfraSettings(
        jwt_public_keys=[key.write_public(folder)],
        jwt_issuer=key.issuer,
        jwt_audience=key.audience,
    )
    return create_app(ServiceSettings(service_name="scope-test", infra=infra))


def _streaming_app(path: str, chunks: Chunks) -> FastAPI:
    router = APIRouter()

    @router.get(path)
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    settings = ServiceSettings(service_name="scope-test", infra=InfraSettings())
    return create_app(settings, routers=[router])


def _http_scope(path: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


def _receiver() -> Receive:
    """A client with no request body that then neither sends more nor disconnects.

    A response that waited on the client would hang here rather than pass by accident.
    """
    pending: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


class _Recorder:
    def __init__(self, on_message: Callable[[Message], None] = lambda _: None) -> None:
        self.messages: list[Message] = []
        self._on_message = on_message

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self._on_message(message)

    def head(self) -> dict[bytes, bytes]:
        [start] = [m for m in self.messages if m["type"] == "http.response.start"]
        return {**dict(start["headers"]), b":status": str(start["status"]).encode()}

    def body(self) -> list[tuple[bytes, bool]]:
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return [(m.get("body", b""), m.get("more_body", False)) for m in bodies]


async def test_streaming_response_streams_through_with_the_id_headers() -> None:
    first_out = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first "
        # Reached only if the first chunk left before the body was complete.
        await asyncio.wait_for(first_out.wait(), 2)
        yield b"second"

    def on_message(message: Message) -> None:
        if message.get("body") == b"first ":
            first_out.set()

    send = _Recorder(on_message)
    scope = _http_scope("/stream", ((b"x-correlation-id", b"corr-stream"),))

    await _streaming_app("/stream", chunks)(scope, _receiver(), send)

    head = send.head()
    assert head[b":status"] == b"200"
    assert head[b"x-correlation-id"] == b"corr-stream"
    assert len(head[b"x-request-id"]) == 32
    assert send.body() == [(b"first ", True), (b"second", True), (b"", False)]


def test_streaming_response_over_http_carries_ids_and_whole_body() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield part

    with TestClient(_streaming_app("/stream", chunks)) as client:
        response = client.get("/stream", headers={"x-request-id": "req-s"})

    assert response.text == "abc"
    assert response.headers["x-request-id"] == "req-s"
    assert response.headers["x-correlation-id"] == "req-s"


async def test_failure_after_the_head_is_sent_is_reraised_and_still_counted() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("stream broke")

    send = _Recorder()
    app = _streaming_app("/broken-stream", chunks)

    with pytest.raises(RuntimeError, match="stream broke"):
        await app(_http_scope("/broken-stream"), _receiver(), send)

    assert send.head()[b":status"] == b"200"
    exposition = metrics.exposition()[0].decode()
    assert re.search(
        r'http_requests_total\{[^}]*route="/broken-stream"[^}]*status="200"', exposition
    )


def test_access_line_carries_the_user_set_by_auth(
    key_a: Any, tmp_path: Path, app_log: list[dict[str, Any]]
) -> None:
    token = key_a.token(sub="u-access")
    with TestClient(_authed_app(key_a, tmp_path)) as client:
        client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})

    [line] = _access_lines(app_log)
    assert line["route"] == "/api/whoami"
    assert line["status"] == 200
    assert line["user"] == mask_user_id("u-access")


def test_fields_a_handler_annotates_go_on_its_access_line_only(
    app_log: list[dict[str, Any]],
) -> None:
    router = APIRouter()

    @router.get("/annotated")
    async def annotated() -> dict[str, str]:
        annotate_request(event_id="evt_1", contact="someone@example.com")
        return {}

    @router.get("/plain")
    async def plain() -> dict[str, str]:
        return {}

    settings = ServiceSettings(service_name="scope-test", infra=InfraSettings())
    with TestClient(create_app(settings, routers=[router])) as client:
        client.get("/annotated")
        client.get("/plain")

    first, second = _access_lines(app_log)
    assert (first["route"], first["event_id"], first["contact"]) == (
        "/annotated",
        "evt_1",
        "***@***",
    )
    assert "event_id" not in second


async def test_request_context_does_not_outlive_the_request(
    key_a: Any, tmp_path: Path, app_log: list[dict[str, Any]]
) -> None:
    # An in-process client runs the app in this very task: the one case where vars set
    # by a request could be seen by the caller and by the next request.
    transport = httpx.ASGITransport(app=_authed_app(key_a, tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        token = key_a.token(sub="u-first")
        await client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})
        anonymous = await client.get("/api/whoami")

    first, second = _access_lines(app_log)
    assert first["user"] == mask_user_id("u-first")
    assert anonymous.status_code == 401
    assert "user" not in second
    assert second["request_id"] != first["request_id"]
    assert (user_id_var.get(), request_id_var.get(), correlation_id_var.get()) == (None,) * 3


async def test_lifespan_scope_passes_through_untouched() -> None:
    seen: list[tuple[Scope, Receive, Send, str | None]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send, request_id_var.get()))

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    receive, send = _receiver(), _Recorder()

    await _RequestScope(inner, service="scope-test")(scope, receive, send)

    [(got_scope, got_receive, got_send, request_id)] = seen
    assert got_scope is scope
    assert got_receive is receive
    assert got_send is send
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    assert request_id is None
    assert send.messages == []
