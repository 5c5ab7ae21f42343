"""Request and response bodies of webhook-ingest (camelCase JSON)."""

from __future__ import annotations

from billing_platform.schemas import CamelModel
from pydantic import Field


class WebhookReceived(CamelModel):
    received: bool
    duplicate: bool


class ReplayRequest(CamelModel):
    event_id: str = Field(min_length=1, max_length=255, examples=["evt_1PzX"])


class ReplayAccepted(CamelModel):
    event_id: str
    replayed: bool
