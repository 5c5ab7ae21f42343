"""uvicorn's HTTP/1.1 protocol, sending a response's head and first body part in one write.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and its body as a second write. On uvloop each write is a send
system call at once, and each reaches the client as a segment of its own: two sends, and
up to two wake-ups of the client, per answer. Here the head waits for the next write of the
same connection, which goes out with it; if none comes within the loop's current pass (a
stream whose first chunk is still to come, an answer without a body), the head goes on its
own then. Bytes leave in the order they were written either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class HeldHeadTransport:
    """A transport that holds a response head until the next write or the loop's next pass."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + bytes(data))
        elif data[: len(_HEAD_START)] == _HEAD_START and data[-len(_HEAD_END) :] == _HEAD_END:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Flow control, addresses, closing state: the real transport's.
        return getattr(self._transport, name)


class OneWriteHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` over a ``HeldHeadTransport``; pass it as uvicorn's ``http``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = HeldHeadTransport(transport, self.loop)
        super().connection_made(held)  # type: ignore[arg-type]
