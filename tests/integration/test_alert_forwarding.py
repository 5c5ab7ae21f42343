"""Alerts reach people: the reconciler posts each alert of billing.alerts.v1 to a webhook.

A real HTTP receiver plays PagerDuty's Events v2 endpoint; it refuses the first post, as an
endpoint having a bad second would. The reconciler runs as its own process on the run's
topics and a schema of its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from billing_cli.procs import wait_until
from billing_events.kafka import KafkaPublisher
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2, common_pb2


class Receiver:
    """Records every post; answers 500 to the first ``refuse`` of them, 202 to the rest."""

    def __init__(self, refuse: int) -> None:
        self.posts: list[tuple[int, dict[str, Any]]] = []
        self._refuse = refuse
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(outer.posts) < outer._refuse else 202
                outer.posts.append((status, body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2/enqueue"

    def delivered(self) -> list[str]:
        return [body["dedup_key"] for status, body in self.posts if status == 202]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(refuse=1)
    yield made
    made.server.shutdown()


def billing_alert(alert_id: str, kind: str) -> alert_pb2.BillingAlert:
    return alert_pb2.BillingAlert(
        meta=common_pb2.EventMeta(event_id=f"evt-{alert_id}", correlation_id="corr-alerts"),
        alert_id=alert_id,
        kind=kind,
        severity=alert_pb2.SEVERITY_CRITICAL,
        user_id="someone@example.com",
        message=f"{kind} found by a run",
        source="reconciler",
    )


async def test_each_alert_is_posted_once_retried_when_refused_and_never_twice(
    namespace: Topics,
    schema: str,
    publisher: KafkaPublisher,
    migrated_db: Any,
    run_service: Any,
    receiver: Receiver,
) -> None:
    db = await migrated_db(schema, "reconciler")
    env = {
        "BILLING_TOPIC_NAMESPACE": namespace.namespace,
        "RECONCILER_DB_SCHEMA": schema,
        "RECONCILER_SCHEDULE_INTERVAL_S": "0",
        "RECONCILER_CONSUMER_LINGER_MS": "0",
        "RECONCILER_ALERTS_WEBHOOK_URL": receiver.url,
        "RECONCILER_ALERTS_WEBHOOK_FORMAT": "pagerduty",
        "RECONCILER_ALERTS_PAGERDUTY_ROUTING_KEY": "test-routing-key",
    }
    first, second = billing_alert("a-1", "balance_mismatch"), billing_alert("a-2", "refund_drift")
    with run_service("reconciler", env) as reconciler:
        for record in (first, first, second):  # the first delivered twice, as after a retry
            await publisher.publish(namespace.alerts, "alerts", record)
        assert wait_until(lambda: len(receiver.delivered()) >= 2, 30), receiver.posts
        time.sleep(1)  # room for a wrongly repeated post to show up
        forwarded = reconciler.metric(
            "billing_alerts_forwarded_total", kind="balance_mismatch", outcome="duplicate"
        )

    assert receiver.delivered() == ["a-1", "a-2"]
    assert [status for status, _ in receiver.posts] == [500, 202, 202]
    body = receiver.posts[1][1]
    assert (body["routing_key"], body["event_action"]) == ("test-routing-key", "trigger")
    assert body["payload"]["summary"] == "balance_mismatch: balance_mismatch found by a run"
    assert "someone@example.com" not in json.dumps(receiver.posts)
    assert forwarded == 1
    rows = await db.pool.fetch("SELECT alert_id FROM forwarded_alerts ORDER BY alert_id")
    assert [r["alert_id"] for r in rows] == ["a-1", "a-2"]
