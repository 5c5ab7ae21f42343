"""Prometheus metrics: HTTP request metrics for every service plus a text exposition."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests handled", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
KAFKA_CONSUMED = Counter(
    "kafka_messages_consumed_total", "Messages handled by consumers", ["topic", "group", "outcome"]
)
KAFKA_PUBLISHED = Counter("kafka_messages_published_total", "Messages published", ["topic"])
KAFKA_HANDLER_RETRIES = Counter(
    "kafka_handler_retries_total",
    "Handler attempts that failed and were retried",
    ["topic", "group"],
)
KAFKA_ASSIGNED = Gauge(
    "kafka_assigned_partitions", "Partitions this consumer owns now", ["group", "client"]
)
KAFKA_CONSUMER_REBUILDS = Counter(
    "kafka_consumer_rebuilds_total",
    "Consumer clients replaced because their group membership did not settle",
    ["group", "client"],
)
KAFKA_LAG = Gauge(
    "kafka_consumer_lag",
    "Records between where this consumer's handled records reached and the high watermark",
    ["group", "topic", "partition"],
)
KAFKA_OUTAGE_RETRIES = Counter(
    "kafka_handler_outage_retries_total",
    "Handler attempts that failed because a dependency was down; retried without limit",
    ["topic", "group"],
)
KAFKA_DEAD_LETTERED = Counter(
    "kafka_dead_lettered_total", "Messages sent to a dead-letter topic", ["topic", "group"]
)


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
