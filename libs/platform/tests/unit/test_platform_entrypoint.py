"""``serve`` builds the app, freezes the start-up heap, then hands the app to the server."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Any

import pytest
import uvicorn
from billing_platform import entrypoint
from billing_platform.settings import InfraSettings, ServiceSettings
from fastapi import FastAPI

BUILT: list[FastAPI] = []


def factory() -> FastAPI:
    BUILT.append(FastAPI())
    return BUILT[-1]


def test_serve_freezes_what_start_up_built_before_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: dict[str, Any] = {}

    def serve(server: entrypoint.QuietServer) -> None:
        config = server.config
        served.update(app=config.app, frozen=gc.get_freeze_count())
        served.update(host=config.host, port=config.port)
        server.started = True

    monkeypatch.setattr(entrypoint.QuietServer, "run", serve)
    settings = ServiceSettings(service_name="entry-test", infra=InfraSettings(), port=8199)
    assert gc.get_freeze_count() == 0
    try:
        entrypoint.run(settings, app_factory=f"{__name__}:factory", package="entry", argv=["serve"])
    finally:
        gc.unfreeze()

    assert served["app"] is BUILT[-1]
    assert served["frozen"] > 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8199)


async def test_the_server_wakes_once_a_second_and_at_once_on_a_stop_signal() -> None:
    config = uvicorn.Config(FastAPI(), log_config=None, ws="none")
    config.load()
    server = entrypoint.QuietServer(config)
    ticks: list[int] = []
    tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(counter)
        return await tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    serving = asyncio.create_task(server.main_loop())
    await asyncio.sleep(1.5)
    # uvicorn's own loop would have looked 15 times by now.
    assert 2 <= len(ticks) <= 3
    assert any(name == b"date" for name, _ in server.server_state.default_headers)
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.wait_for(serving, 0.5)
    assert server.should_exit
