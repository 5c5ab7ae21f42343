"""Whether a consumer's group membership has settled, as its own client reports it.

librdkafka puts the group's state in the statistics it emits every few seconds: ``up`` once
it has a coordinator, and the join state ``steady`` once the assignment of the last
rebalance is in place (an empty one included: a member with no partitions is settled too).
A rebalance settles in seconds. A membership that stays unsettled long after the broker is
back will not settle by itself: once, after a broker restart outlasted the session timeout,
two clients never rejoined their groups and no partition of theirs moved again. The consumer
runner rebuilds such a client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_DECODER = json.JSONDecoder()
_GROUP_KEY = '"cgrp":'


@dataclass
class GroupState:
    state: str
    join_state: str

    @property
    def settled(self) -> bool:
        return self.state == "up" and self.join_state == "steady"

    def __str__(self) -> str:
        return f"{self.state}/{self.join_state}"


def group_state(statistics: str) -> GroupState | None:
    """The ``cgrp`` object of a statistics document, decoded alone (the document also
    describes every partition; this runs on the client's thread every few seconds)."""
    at = statistics.rfind(_GROUP_KEY)
    if at < 0:
        return None
    start = at + len(_GROUP_KEY)
    while statistics[start].isspace():
        start += 1
    group, _ = _DECODER.raw_decode(statistics, start)
    return GroupState(str(group.get("state", "")), str(group.get("join_state", "")))


class Membership:
    """Since when a client's membership has been unsettled; written on the client's
    thread (statistics callback), read on the event loop."""

    def __init__(self, now: float) -> None:
        self.last: GroupState
        self._unsettled_since: float | None
        self.restart(now)

    def restart(self, now: float) -> None:
        """A new client, or a look that found the broker down: the clock starts again."""
        self.last = GroupState("init", "init")
        self._unsettled_since = now

    def seen(self, group: GroupState, now: float) -> None:
        self.last = group
        if group.settled:
            self._unsettled_since = None
        elif self._unsettled_since is None:
            self._unsettled_since = now

    def unsettled_for(self, now: float) -> float:
        return 0.0 if self._unsettled_since is None else now - self._unsettled_since
