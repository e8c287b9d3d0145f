"""The client libraries' private APIs polybus uses, each under an upper bound in
pyproject.toml: when a release moves one, this fails loudly instead of a transport
quietly taking its slow path or breaking at run time."""

from __future__ import annotations

import inspect

import pytest


def test_redis_connection_parser_reads_responses() -> None:
    """transports/redis/_link.py reads straight from ``Connection._parser``."""
    from redis.asyncio.connection import Connection

    parser = Connection()._parser
    assert callable(parser.read_response)


def test_aiormq_channel_has_a_write_queue() -> None:
    """transports/rabbitmq/_link.py puts corked frames on ``Channel.write_queue``."""
    from aiormq.abc import ChannelFrame
    from aiormq.channel import Channel

    assert "self.write_queue" in inspect.getsource(Channel.__init__)
    assert {"payload", "should_close", "drain_future"} <= set(
        inspect.signature(ChannelFrame).parameters
    )


async def test_aiokafka_subscription_state_is_where_the_reply_partitions_read_it() -> None:
    """transports/kafka/_replies.py reads
    ``consumer._subscription.subscription.assignment.state_value(tp)``."""
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.consumer.subscription_state import Assignment, SubscriptionState

    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert isinstance(consumer._subscription, SubscriptionState)
    assert isinstance(inspect.getattr_static(SubscriptionState, "subscription"), property)
    assert callable(Assignment.state_value)


def test_nats_client_keeps_the_server_info() -> None:
    """transports/nats/_client.py reads ``Client._server_info`` (whether headers work)."""
    from nats.aio.client import Client

    assert isinstance(vars(Client())["_server_info"], dict)
