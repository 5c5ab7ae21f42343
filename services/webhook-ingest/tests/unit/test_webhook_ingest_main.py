"""The wiring builds the whole app without touching the network (nothing starts here)."""

from __future__ import annotations

from typing import Any

import pytest
from billing_events import wiring
from billing_platform.settings import InfraSettings
from webhook_ingest.main import create_app
from webhook_ingest.settings import Settings


def test_the_app_serves_the_webhook_and_replay_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real producer needs a running loop and warns when collected unclosed.
    monkeypatch.setattr(wiring, "publisher_for", lambda _settings: object())
    app = create_app(Settings(infra=InfraSettings()))

    paths = {getattr(route, "path", "") for route in app.routes}
    assert {"/webhooks/stripe", "/api/admin/webhooks/replay", "/readyz"} <= paths


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("signature_tolerance_s", 300),
        ("rate_limit_per_minute", 6000),
        ("max_body_bytes", 1 << 20),
        ("group_commit_max_batch", 256),
        ("group_commit_queue_bound", 1024),
        ("group_commit_max_wait_s", 0.0),
    ],
)
def test_settings_defaults(name: str, default: Any) -> None:
    assert Settings.model_fields[name].default == default
