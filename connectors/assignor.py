"""A co-partitioning consumer-group assignor: partition p of every input topic on one member.

State, snapshots and policy are kept per partition *number* (an entity's metrics and logs are
keyed by entity, so they land on the same partition number of each topic when the topics have
the same partition count). aiokafka's default round-robin assignor spreads the topics'
partitions independently, so partition 1 of the metrics topic and partition 1 of the logs topic
could go to two processes, which would then both write that partition's snapshot. This
assignor (like Kafka Streams' co-partitioning) hands out partition *numbers*: member i of the
sorted member list gets every subscribed topic's partition p for each p with p % n == i.

Each member records what it was given in ``CoPartitionAssignor.last`` (Tansu's DescribeGroups
reports no members, so the assignment is observed from inside the process).

>>> from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata as Meta
>>> class Cluster:
...     def partitions_for_topic(self, topic):
...         return {0, 1, 2}
>>> meta = Meta(0, ["logs", "metrics"], b"")
>>> out = CoPartitionAssignor.assign(Cluster(), {"b": meta, "a": meta})
>>> sorted(out["a"].assignment), sorted(out["b"].assignment)
([('logs', [0, 2]), ('metrics', [0, 2])], [('logs', [1]), ('metrics', [1])])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from selfheal.connectors.errors import ConnectorError


class PartitionCountMismatch(ConnectorError):
    """Input topics with different partition counts cannot be co-partitioned."""

    retriable = False

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(counts)
        listed = ", ".join(f"{t}={n}" for t, n in sorted(self.counts.items()))
        super().__init__(
            f"input topics must have the same number of partitions to keep an entity's "
            f"metrics and logs on one process; found {listed}"
        )


def check_copartitioned(counts: Mapping[str, int | None]) -> None:
    """Raise ``PartitionCountMismatch`` unless every (existing) topic has the same count."""
    known = {t: n for t, n in counts.items() if n}
    if len(set(known.values())) > 1:
        raise PartitionCountMismatch(known)


class CoPartitionAssignor(AbstractPartitionAssignor):
    """Partition numbers, not topic partitions, are the unit of assignment."""

    name = "selfheal-copartition"
    version = 0
    #: the latest assignment this process received: {topic: [partitions]}
    last: dict[str, list[int]] = {}  # noqa: RUF012 - class-level by aiokafka's design

    @classmethod
    def assign(
        cls, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        ids = sorted(members)
        numbers: set[int] = set()
        topics: set[str] = set()
        for meta in members.values():
            topics.update(meta.subscription)
        available: dict[str, set[int]] = {}
        for topic in topics:
            parts = cluster.partitions_for_topic(topic) or set()
            available[topic] = set(parts)
            numbers.update(parts)
        plan: dict[str, dict[str, list[int]]] = {m: {} for m in ids}
        for p in sorted(numbers):
            member = ids[p % len(ids)]
            for topic in sorted(members[member].subscription):
                if p in available.get(topic, ()):
                    plan[member].setdefault(topic, []).append(p)
        return {
            m: ConsumerProtocolMemberAssignment(cls.version, sorted(plan[m].items()), b"")
            for m in ids
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        cls.last = {topic: sorted(parts) for topic, parts in assignment.assignment}
