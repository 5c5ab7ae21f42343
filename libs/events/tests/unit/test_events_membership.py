"""Reading a client's group state from its statistics, and timing an unsettled membership."""

from __future__ import annotations

import json
import time

import confluent_kafka
import pytest
from billing_events.membership import GroupState, Membership, group_state


def _statistics(group: dict[str, object]) -> str:
    """A document shaped as librdkafka writes it: the partitions first, the group last."""
    topics = {"cgrp": {"topic": "cgrp", "partitions": {"0": {"partition": 0}}}}
    return json.dumps({"name": "c#consumer-1", "topics": topics, "cgrp": group, "tx": 3})


def test_the_group_object_is_read_not_a_topic_of_the_same_name() -> None:
    raw = _statistics({"state": "up", "join_state": "wait-join", "assignment_size": 0})
    assert group_state(raw) == GroupState("up", "wait-join")


def test_librdkafkas_own_statistics_are_read() -> None:
    documents: list[str] = []
    client = confluent_kafka.Consumer(
        {
            "bootstrap.servers": "127.0.0.1:1",  # nothing listens: the group has no coordinator
            "group.id": "membership-unit",
            "statistics.interval.ms": 100,
            "stats_cb": documents.append,
            "log_level": 0,
        }
    )
    try:
        client.subscribe(["some.topic"])
        deadline = time.monotonic() + 10
        while not documents and time.monotonic() < deadline:
            client.poll(0.1)
    finally:
        client.close()
    group = group_state(documents[-1])
    assert group is not None
    assert group.state != "up"
    assert not group.settled


def test_a_document_without_a_group_says_nothing() -> None:
    assert group_state(json.dumps({"name": "producer-1", "topics": {}})) is None


def test_a_broken_document_raises_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        group_state('{"cgrp": {"state": "up", ')


@pytest.mark.parametrize(
    ("state", "join_state", "settled"),
    [("up", "steady", True), ("up", "wait-join", False), ("query-coord", "steady", False)],
)
def test_settled_only_up_and_steady(state: str, join_state: str, settled: bool) -> None:
    assert GroupState(state, join_state).settled is settled


def test_a_new_client_is_unsettled_from_its_start_until_steady() -> None:
    membership = Membership(now=100.0)
    assert membership.unsettled_for(130.0) == 30.0
    membership.seen(GroupState("up", "wait-sync"), 131.0)
    assert membership.unsettled_for(140.0) == 40.0  # still counted from the start
    membership.seen(GroupState("up", "steady"), 141.0)
    assert membership.unsettled_for(500.0) == 0.0


def test_unsettled_is_counted_from_the_first_unsettled_look() -> None:
    membership = Membership(now=0.0)
    membership.seen(GroupState("up", "steady"), 5.0)
    membership.seen(GroupState("wait-coord", "init"), 50.0)
    membership.seen(GroupState("wait-coord", "init"), 60.0)
    assert membership.unsettled_for(80.0) == 30.0
    assert str(membership.last) == "wait-coord/init"


def test_restart_starts_the_clock_again() -> None:
    membership = Membership(now=0.0)
    membership.seen(GroupState("wait-coord", "init"), 1.0)
    membership.restart(70.0)
    assert membership.unsettled_for(75.0) == 5.0
    assert str(membership.last) == "init/init"
