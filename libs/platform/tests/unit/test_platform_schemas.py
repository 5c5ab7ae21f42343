"""The shared input types: text PostgreSQL can store, documented as such."""

from __future__ import annotations

import pytest
from billing_platform.app import create_app
from billing_platform.schemas import NO_NUL_PATTERN, CamelModel, Text
from billing_platform.settings import InfraSettings, ServiceSettings
from pydantic import Field, ValidationError


class Note(CamelModel):
    reason_text: Text = Field(min_length=1, max_length=10)


def test_text_refuses_a_nul_anywhere() -> None:
    for value in ["\x00", "a\x00", "\x00b", "a\x00b"]:
        with pytest.raises(ValidationError):
            Note(reason_text=value)


def test_text_keeps_any_other_character_and_the_lengths_of_its_use() -> None:
    assert Note(reason_text="Ö\n\t😀").reason_text == "Ö\n\t😀"
    with pytest.raises(ValidationError):
        Note(reason_text="x" * 11)


def test_text_is_documented_with_its_pattern() -> None:
    schema = Note.model_json_schema()["properties"]["reasonText"]

    assert schema["pattern"] == NO_NUL_PATTERN
    assert (schema["minLength"], schema["maxLength"]) == (1, 10)


def test_metrics_are_documented_as_text() -> None:
    app = create_app(ServiceSettings(service_name="schemas-test", infra=InfraSettings()))

    content = app.openapi()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]

    assert list(content) == ["text/plain"]
