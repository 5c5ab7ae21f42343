"""An outbox row's headers: correlation, trace context and, when given, the record's kind."""

from __future__ import annotations

import json

from billing_events.kafka import CORRELATION_HEADER, KIND_HEADER
from billing_events.outbox import OutboxRecord


def test_a_row_carries_its_kind_for_consumers_that_filter_undecoded() -> None:
    topic, key, value, headers = OutboxRecord("t", "user-1", b"v", "corr-1", "usage").columns()

    assert (topic, key, value) == ("t", b"user-1", b"v")
    assert json.loads(headers) == {CORRELATION_HEADER: "corr-1", KIND_HEADER: "usage"}


def test_a_row_without_a_kind_has_no_kind_header() -> None:
    *_, headers = OutboxRecord("t", None, b"v", "corr-2").columns()

    assert json.loads(headers) == {CORRELATION_HEADER: "corr-2"}
