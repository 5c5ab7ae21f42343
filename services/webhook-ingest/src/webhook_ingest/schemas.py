"""Request and response bodies of webhook-ingest (camelCase JSON)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class WebhookReceived(CamelModel):
    received: bool
    duplicate: bool


class ReplayRequest(CamelModel):
    event_id: str = Field(min_length=1, max_length=255, examples=["evt_1PzX"])


class ReplayAccepted(CamelModel):
    event_id: str
    replayed: bool
