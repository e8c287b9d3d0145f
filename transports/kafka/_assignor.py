"""The partition assignors a server's consumer offers its group.

A consumer group runs one assignment protocol, named by its members: kafkajs (and so every
NestJS server) offers only ``RoundRobinAssigner``, aiokafka's round robin is
``roundrobin``, and a broker refuses a member whose protocols share no name with the group's
(INCONSISTENT_GROUP_PROTOCOL). Both encode the subscription and the assignment in the
standard consumer protocol (version, topics, user data; topic → partitions), and both lay
the partitions out round robin over the members sorted by id, so aiokafka's assignor under
kafkajs's name lets NestJS and polybus servers share a ``groupId``. ``roundrobin`` stays
offered second, for groups with polybus servers that offer only it.
"""

from __future__ import annotations

from aiokafka.coordinator.assignors.roundrobin import (  # type: ignore[import-untyped]
    RoundRobinPartitionAssignor,
)

__all__ = ["SERVER_ASSIGNORS", "KafkajsRoundRobinAssignor"]


class KafkajsRoundRobinAssignor(RoundRobinPartitionAssignor):  # type: ignore[misc]
    """aiokafka's round robin under the protocol name of kafkajs's ``RoundRobinAssigner``.

    kafkajs gives every member a share of every subscribed topic; aiokafka skips members
    not subscribed to a topic. With identical subscriptions (instances of one service) the
    two lay partitions out alike."""

    name = "RoundRobinAssigner"


SERVER_ASSIGNORS = (KafkajsRoundRobinAssignor, RoundRobinPartitionAssignor)
"""In order of preference: kafkajs's protocol name first, so a group may mix both kinds."""
