"""``serve`` builds the app, freezes the start-up heap, then hands the app to the server."""

from __future__ import annotations

import gc
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

    def serve(app: FastAPI, **options: Any) -> None:
        served.update(app=app, frozen=gc.get_freeze_count(), **options)

    monkeypatch.setattr(uvicorn, "run", serve)
    settings = ServiceSettings(service_name="entry-test", infra=InfraSettings(), port=8199)
    assert gc.get_freeze_count() == 0
    try:
        entrypoint.run(settings, app_factory=f"{__name__}:factory", package="entry", argv=["serve"])
    finally:
        gc.unfreeze()

    assert served["app"] is BUILT[-1]
    assert served["frozen"] > 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8199)
