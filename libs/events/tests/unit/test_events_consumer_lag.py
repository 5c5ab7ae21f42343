"""Consumer lag: records behind the high watermark per partition, and the gauge that carries
it (set only for owned partitions, dropped on revocation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from billing_events.kafka import ConsumerRunner, InboundMessage, consumer_lags
from prometheus_client import REGISTRY

TOPIC = "ns.usage.v1"
GROUP = "lag-test-group"


def test_lag_is_the_high_watermark_minus_the_position() -> None:
    positions = {(TOPIC, 0): 10, (TOPIC, 1): 7}

    assert consumer_lags(positions, {(TOPIC, 0): 25, (TOPIC, 1): 7}) == {
        (TOPIC, 0): 15,
        (TOPIC, 1): 0,
    }


def test_a_partition_whose_high_watermark_is_unknown_is_left_out() -> None:
    positions = {(TOPIC, 0): 10, (TOPIC, 1): 3, (TOPIC, 2): 4}
    # librdkafka answers -1001 (OFFSET_INVALID) until a fetch response gave it one.
    highs = {(TOPIC, 0): 12, (TOPIC, 1): confluent_kafka.OFFSET_INVALID}

    assert consumer_lags(positions, highs) == {(TOPIC, 0): 2}


def test_a_position_past_a_stale_high_watermark_is_no_lag_not_a_negative_one() -> None:
    assert consumer_lags({(TOPIC, 0): 30}, {(TOPIC, 0): 28}) == {(TOPIC, 0): 0}


def test_an_empty_partition_read_from_its_start_has_no_lag() -> None:
    assert consumer_lags({(TOPIC, 0): 0}, {(TOPIC, 0): 0}) == {(TOPIC, 0): 0}


# --- the gauge ----------------------------------------------------------------------------


@dataclass
class FakeConsumer:
    """The client as the runner's thread sees it: its assignment and cached watermarks."""

    highs: dict[int, int]
    owned: list[int]
    committed: list[confluent_kafka.TopicPartition] = field(default_factory=list)

    def assignment(self) -> list[confluent_kafka.TopicPartition]:
        return [confluent_kafka.TopicPartition(TOPIC, p) for p in self.owned]

    def get_watermark_offsets(
        self, tp: confluent_kafka.TopicPartition, cached: bool = False
    ) -> tuple[int, int]:
        assert cached, "the lag must not cost a broker round trip"
        return 0, self.highs[tp.partition]

    def commit(self, offsets: list[confluent_kafka.TopicPartition], asynchronous: bool) -> None:
        self.committed.extend(offsets)

    def unassign(self) -> None:
        self.owned = []


def lag(partition: int) -> float | None:
    labels = {"group": GROUP, "topic": TOPIC, "partition": str(partition)}
    return REGISTRY.get_sample_value("kafka_consumer_lag", labels)


async def handled(message: InboundMessage) -> None:
    return None


def fetched(partition: int, offset: int) -> confluent_kafka.Message:
    return confluent_kafka.Message(
        topic=TOPIC, partition=partition, offset=offset, value=b"x", timestamp=(0, 0)
    )


async def test_the_gauge_follows_handled_records_and_leaves_revoked_partitions() -> None:
    fake = FakeConsumer(highs={0: 50, 1: 9, 2: 4}, owned=[0, 1])
    consumer: Any = fake
    runner = ConsumerRunner(
        bootstrap="unused:9092",
        group_id=GROUP,
        handlers={TOPIC: handled},
        publisher=None,  # type: ignore[arg-type]
    )
    # Partition 2 is not owned (revoked after its records were fetched): never reported.
    await runner._handle_fetched(consumer, [fetched(0, 19), fetched(1, 8), fetched(2, 1)])
    runner._measure_lag(consumer)

    assert (lag(0), lag(1), lag(2)) == (30.0, 0.0, None)

    fake.highs[0] = 60  # more records arrived; none handled
    runner._measure_lag(consumer)

    assert lag(0) == 40.0

    revoked = [confluent_kafka.TopicPartition(TOPIC, p) for p in (0, 1)]
    runner._on_revoke(consumer, revoked)
    # A batch fetched before the revocation, handled after it, must not bring it back.
    await runner._handle_fetched(consumer, [fetched(0, 20)])
    runner._measure_lag(consumer)

    assert (lag(0), lag(1)) == (None, None)
