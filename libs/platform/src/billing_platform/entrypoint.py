"""``python -m <service> serve|migrate``: the one way every service is run.

``migrate`` is what the Helm migration Job and ``billing up`` both run, so the schema a
service serves from is always the one its migrations built. It connects with the migration
DSN (the schema's owner) and ends by granting the runtime role (``serve``'s DSN) its rights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
from types import FrameType

import uvicorn
from uvicorn.importer import import_from_string
from uvicorn.main import STARTUP_FAILURE

from billing_platform.db import SchemaAccess, migrate_package
from billing_platform.http_protocol import OneWriteHttpProtocol
from billing_platform.logging import configure_logging
from billing_platform.settings import ServiceSettings


def run(
    settings: ServiceSettings,
    *,
    app_factory: str,
    package: str,
    access: SchemaAccess | None = None,
    argv: list[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    if args.command == "migrate":
        configure_logging(settings.service_name, settings.infra.log_level)
        applied = asyncio.run(
            migrate_package(settings.migrate_dsn, settings.db_schema, package, access)
        )
        print(json.dumps({"service": settings.service_name, "applied": applied}))
        return
    app = import_from_string(app_factory)()
    freeze_startup_heap()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
        http=OneWriteHttpProtocol,
    )
    server = QuietServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run does


class QuietServer(uvicorn.Server):
    """uvicorn's server, woken once a second while it serves instead of ten times.

    uvicorn looks for a stop signal every 0.1 s. Each look wakes the event loop, some ten
    wake-ups a second in each service doing nothing. Here the loop sleeps a second at a time
    (the resolution of the Date header it refreshes) and a signal wakes it at once."""

    _stop_now: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_now = asyncio.Event()
        while not await self.on_tick(0):  # tick 0 refreshes the Date header
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stop_now.wait()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._stop_now is not None:
            self._loop.call_soon_threadsafe(self._stop_now.set)


def freeze_startup_heap() -> None:
    """Leave what start-up built (modules, the app) out of every later garbage collection.

    A full collection walks every tracked object. With the start-up heap in it, one took 45
    to 230 ms of a CPU in the middle of a load test (``bench/gateway_overhead.py`` at 300
    calls/s), with the event loop stopped and every request in flight waiting. Frozen objects
    are never freed, which suits a heap built once for the life of the process."""
    gc.collect()
    gc.freeze()
