"""A TCP relay that holds every chunk for ``lag`` seconds each way, run as its own process:
``python lagging_relay.py LISTEN_PORT UPSTREAM_PORT LAG`` (all on 127.0.0.1).

Through it a broker's connect handshake takes a round trip of ``2 * lag`` per step, so a test
can cancel a connect at each of its stages by time. Being another process, its tasks and
sockets are not counted among the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lag: float) -> None:
    try:
        while chunk := await reader.read(65536):
            await asyncio.sleep(lag)
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main(listen_port: int, upstream_port: int, lag: float) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer, lag), pump(up_reader, writer, lag))

    server = await asyncio.start_server(relay, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
