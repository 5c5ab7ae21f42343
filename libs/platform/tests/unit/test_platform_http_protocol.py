"""A response's head leaves with its first body part, and HTTP/1.1 still works on a real
uvicorn server with the protocol (keep-alive, streaming, bodiless answers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from billing_platform.http_protocol import HeldHeadTransport, OneWriteHttpProtocol
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorded:
    """The writes a transport was given, and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def held(recorded: Recorded) -> HeldHeadTransport:
    return HeldHeadTransport(recorded, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_a_head_and_its_body_go_out_in_one_write() -> None:
    recorded = Recorded()
    transport = held(recorded)

    transport.write(HEAD)
    transport.write(b"ok")
    transport.write(b"more")

    assert recorded.writes == [HEAD + b"ok", b"more"]


async def test_a_head_with_nothing_after_it_goes_on_the_loops_next_pass() -> None:
    recorded = Recorded()
    transport = held(recorded)

    transport.write(HEAD)
    assert recorded.writes == []
    await asyncio.sleep(0)

    assert recorded.writes == [HEAD]


async def test_closing_sends_a_held_head_first() -> None:
    recorded = Recorded()
    transport = held(recorded)

    transport.write(HEAD)
    transport.close()
    await asyncio.sleep(0)

    assert (recorded.writes, recorded.closed) == ([HEAD], True)


async def test_other_bytes_are_not_held_and_the_rest_is_the_real_transports() -> None:
    recorded = Recorded()
    transport = held(recorded)

    transport.write(b"0\r\n\r\n")
    transport.write(b"HTTP/1.1 partial")

    assert recorded.writes == [b"0\r\n\r\n", b"HTTP/1.1 partial"]
    assert transport.get_extra_info("peername") == "extra:peername"


# --- on a real server -----------------------------------------------------------------


async def hello(_: Request) -> Response:
    return Response(b"hello", media_type="text/plain")


async def empty(_: Request) -> Response:
    return Response(status_code=204)


async def stream(_: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one,", b"two,", b"three"):
            await asyncio.sleep(0.01)
            yield part

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(
    routes=[
        Route("/hello", hello, methods=["GET", "HEAD"]),
        Route("/empty", empty),
        Route("/stream", stream),
    ]
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(protocol: type[asyncio.Protocol] = OneWriteHttpProtocol) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(APP, host="127.0.0.1", port=port, log_config=None, http=protocol)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_real_server_answers_on_one_connection_streams_and_bodiless() -> None:
    async with serving() as base, httpx.AsyncClient(base_url=base) as client:
        answers: list[Any] = [await client.get("/hello") for _ in range(3)]
        streamed = await client.get("/stream")
        empty_answer = await client.get("/empty")
        head = await client.head("/hello")

    assert [(a.status_code, a.content) for a in answers] == [(200, b"hello")] * 3
    assert (streamed.status_code, streamed.content) == (200, b"one,two,three")
    assert (empty_answer.status_code, empty_answer.content) == (204, b"")
    assert (head.status_code, head.headers["content-length"]) == (200, "5")


class RecordingTransport:
    """The server's real transport, noting each write that reaches it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


SENT: list[bytes] = []


class RecordedServer(OneWriteHttpProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(RecordingTransport(transport, SENT))  # type: ignore[arg-type]


async def test_a_real_server_sends_head_and_body_in_one_write() -> None:
    SENT.clear()
    async with serving(RecordedServer) as base, httpx.AsyncClient(base_url=base) as client:
        answer = await client.get("/hello")

    assert answer.content == b"hello"
    [sent] = SENT
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent.endswith(b"\r\n\r\nhello")
