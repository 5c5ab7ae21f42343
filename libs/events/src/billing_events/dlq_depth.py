"""Dead-letter depth: letters on a DLQ topic that ops have not replayed yet.

``billing dlq replay`` commits the position it replayed up to in the ``dlq-replay`` consumer
group, so depth = end offset - that group's committed offset, summed over partitions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from billing_platform.tasks import Periodic
from prometheus_client import Gauge

from billing_events.kafka import topic_partitions

log = logging.getLogger(__name__)

DLQ_DEPTH = Gauge("billing_dlq_depth", "Dead letters not replayed yet", ["topic"])


def replay_group(namespace: str) -> str:
    return f"{namespace}.dlq-replay" if namespace else "dlq-replay"


async def dlq_depth(bootstrap: str, topic: str, group: str) -> int:
    parts = await topic_partitions(bootstrap, topic)
    if not parts:
        return 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(parts)
        committed = await admin.list_consumer_group_offsets(group, partitions=parts)
        # A group that never committed reports -1 for a partition: nothing replayed yet.
        done = {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in parts}
        return sum(max(0, ends[tp] - done[tp]) for tp in parts)
    finally:
        await admin.close()
        await consumer.stop()


class DlqDepthMonitor(Periodic):
    """Refreshes ``billing_dlq_depth`` for some DLQ topics on a period (a lifecycle part).

    While the broker is away the refresh fails and the gauge just goes stale.
    """

    def __init__(
        self, bootstrap: str, topics: Sequence[str], group: str, interval_s: float
    ) -> None:
        super().__init__("dlq-depth", self.refresh, interval_s)
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self._group = group

    async def refresh(self) -> None:
        for topic in self._topics:
            DLQ_DEPTH.labels(topic).set(await dlq_depth(self._bootstrap, topic, self._group))
