"""TCP transport (``tcp://host:port``, ``tcps://`` for TLS), wire-compatible with NestJS.

Frames are ``<length>#<json>`` where ``length`` counts UTF-16 code units of the JSON text
(JavaScript ``string.length``), docs/PROTOCOL.md §2. One client connection multiplexes every
request; replies are matched by ``id``. A corrupted frame or undecodable JSON closes only
its connection, after the frames before it: the server answers those requests, then
closes; the client delivers those replies, then its other pending requests fail with
``TransportError`` and the next call reconnects. Writes made in one event-loop iteration
leave in one ``write()`` (corking). Headers and the caller's deadline travel in NestJS v12's
packet ``metadata`` (``send_metadata``), which Nest servers accept and expose as
``TcpContext.getMetadata()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybus.plugins import TransportSpec, lazy_attributes

if TYPE_CHECKING:
    from ._client import TcpClientTransport
    from ._common import FEATURES, FramedConnection
    from ._framing import FrameDecoder, frame
    from ._options import TcpOptions
    from ._plugin import PLUGIN
    from ._server import TcpContext, TcpServerTransport

__all__ = [
    "FEATURES",
    "PLUGIN",
    "SPEC",
    "FrameDecoder",
    "FramedConnection",
    "TcpClientTransport",
    "TcpContext",
    "TcpOptions",
    "TcpServerTransport",
    "frame",
]

SPEC = TransportSpec(
    name="tcp",
    schemes=("tcp", "tcps"),
    implementation="polybus.transports.tcp._plugin:PLUGIN",
    nest_names=("TCP",),
    nest_number=0,
    extra=None,
)

__getattr__ = lazy_attributes(__name__)
