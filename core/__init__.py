"""polybus: transport-agnostic microservice messaging, wire-compatible with NestJS.

::

    from polybus import Microservice, create_client

    app = Microservice("tcp://127.0.0.1:3000")

    @app.message_pattern({"cmd": "sum"})
    async def total(numbers: list[int]) -> int:
        return sum(numbers)

    async with create_client("tcp://127.0.0.1:3000") as client:
        assert await client.send({"cmd": "sum"}, [1, 2, 3]) == 6
"""

from .abc import (
    ClientTransport,
    ConnectionStatus,
    Context,
    Features,
    ServerStatus,
    ServerTransport,
)
from .client import DEFAULT_TIMEOUT, Call, ClientProxy
from .config import redact_url
from .errors import (
    ConfigError,
    NoRespondersError,
    PolybusError,
    ProtocolError,
    RequestTimeout,
    RpcError,
    RpcException,
    TransportError,
)
from .handlers import event_pattern, message_pattern
from .logcontext import LogContextFilter, log_fields
from .middleware import ClientMiddleware, Inbound, Outgoing, ServerMiddleware
from .packets import Record
from .plugins import TransportSpec, register_transport
from .policy import FailurePolicy
from .registry import ClientRegistry, client_property, create_client
from .serializers import JsonSerializer, MsgpackSerializer, Serializer
from .server import Microservice

__all__ = [
    "DEFAULT_TIMEOUT",
    "Call",
    "ClientMiddleware",
    "ClientProxy",
    "ClientRegistry",
    "ClientTransport",
    "ConfigError",
    "ConnectionStatus",
    "Context",
    "FailurePolicy",
    "Features",
    "Inbound",
    "JsonSerializer",
    "LogContextFilter",
    "Microservice",
    "MsgpackSerializer",
    "NoRespondersError",
    "Outgoing",
    "PolybusError",
    "ProtocolError",
    "Record",
    "RequestTimeout",
    "RpcError",
    "RpcException",
    "Serializer",
    "ServerMiddleware",
    "ServerStatus",
    "ServerTransport",
    "TransportError",
    "TransportSpec",
    "client_property",
    "create_client",
    "event_pattern",
    "log_fields",
    "message_pattern",
    "redact_url",
    "register_transport",
]

__version__ = "0.1.0"
