"""Request and response bodies of webhook-ingest (camelCase JSON)."""

from __future__ import annotations

from billing_platform.schemas import CamelModel, Text
from pydantic import Field


class WebhookReceived(CamelModel):
    received: bool
    duplicate: bool


class ReplayRequest(CamelModel):
    event_id: Text = Field(min_length=1, max_length=255, examples=["evt_1PzX"])
    reason: Text = Field(default="webhook replay", min_length=3, max_length=500)


class ReplayAccepted(CamelModel):
    event_id: str
    replayed: bool
