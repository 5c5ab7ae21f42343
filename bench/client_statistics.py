"""What a consumer's statistics cost: librdkafka writing them, the runner reading the group
state out of them.

Every consumer runner asks its client for statistics (every 10 s by default) to tell a
membership that has not settled (``billing_events.membership``). This runs one idle consumer
of a topic with the reconciler's partition count (18, the most any runner owns) on the dev
stack's broker, alternately without statistics and with a document every 100 ms, and
prints the process CPU per document, what reading the group state from one costs, and so
what the default interval costs each consumer per second. Rounds alternate so the machine's
drift hits both ways alike.

Run: ``./scripts/run python bench/client_statistics.py [--rounds 4] [--seconds 15]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import confluent_kafka
from billing_cli.layout import Layout
from billing_cli.stack import Stack
from billing_events.kafka import ensure_topics
from billing_events.membership import group_state

PARTITIONS = 18
FAST_INTERVAL_MS = 100
DEFAULT_INTERVAL_S = 10.0


@contextmanager
def settled_consumer(
    bootstrap: str, topic: str, documents: list[str] | None
) -> Iterator[confluent_kafka.Consumer]:
    """A consumer of the topic in a group of its own, once it has its partitions; with
    ``documents``, its statistics are appended there every ``FAST_INTERVAL_MS``."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"{topic}.{uuid.uuid4().hex[:6]}",
        "log_level": 0,
    }
    if documents is not None:
        config |= {"statistics.interval.ms": FAST_INTERVAL_MS, "stats_cb": documents.append}
    consumer = confluent_kafka.Consumer(config)
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.5)
        yield consumer
    finally:
        consumer.close()


def consume_idle(bootstrap: str, topic: str, seconds: float, stats: bool) -> tuple[float, int]:
    """Process CPU seconds and statistics documents over ``seconds`` of polling an idle
    topic, as a runner does (poll 0.5 s), once the group has settled."""
    documents: list[str] = []
    with settled_consumer(bootstrap, topic, documents if stats else None) as consumer:
        documents.clear()
        read = 0
        started, cpu = time.monotonic(), time.process_time()
        while time.monotonic() - started < seconds:
            consumer.poll(0.5)
            for document in documents[read:]:  # what the runner's callback does with each
                group_state(document)
            read = len(documents)
        return time.process_time() - cpu, len(documents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    stack = Stack(Layout.dev())
    started_here = not stack.kafka.running()
    if started_here:
        stack.kafka.install()
        stack.kafka.start()
    stack.kafka.wait_ready(60)
    topic = f"bench-stats-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(stack.kafka.bootstrap, {topic: PARTITIONS}))
    try:
        report(stack.kafka.bootstrap, topic, args.rounds, args.seconds)
    finally:
        if started_here:
            stack.kafka.stop()


def report(bootstrap: str, topic: str, rounds: int, seconds: float) -> None:
    sample = capture_one(bootstrap, topic)
    per_document = []
    for n in range(rounds):
        without, _ = consume_idle(bootstrap, topic, seconds, stats=False)
        with_stats, count = consume_idle(bootstrap, topic, seconds, stats=True)
        per_document.append((with_stats - without) / max(count, 1) * 1e6)
        print(
            f"round {n + 1}: {without * 1e3 / seconds:.2f} ms/s without statistics, "
            f"{with_stats * 1e3 / seconds:.2f} ms/s with {count} documents "
            f"-> {per_document[-1]:.0f} us per document"
        )
    read_us = min(timeit.repeat(lambda: group_state(sample), number=1000, repeat=5)) * 1e3
    cost = statistics.median(per_document)
    print(f"a document here: {len(sample):,} characters; reading its group state {read_us:.1f} us")
    print(f"median per document, written and read: {cost:.0f} us")
    print(
        f"every {DEFAULT_INTERVAL_S:.0f} s (the default): {cost / DEFAULT_INTERVAL_S / 1e3:.4f} "
        "ms of CPU per second per consumer"
    )


def capture_one(bootstrap: str, topic: str) -> str:
    """One statistics document of a settled consumer of the topic."""
    documents: list[str] = []
    with settled_consumer(bootstrap, topic, documents) as consumer:
        documents.clear()
        while not documents:
            consumer.poll(0.2)
        return documents[-1]


if __name__ == "__main__":
    main()
