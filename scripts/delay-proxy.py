#!/usr/bin/env python3
"""A TCP proxy that holds every byte for a fixed time in each direction: a round trip of a
real network for loopback benchmarks (scripts/bench-transport.sh), where the kernel has no
netem. End-to-end flow control (HTTP/2's windows) still decides how much is in flight: the
proxy forwards what arrives, in order, once it is DELAY_MS old.

Usage: delay-proxy.py LISTEN_PORT UPSTREAM_HOST:PORT DELAY_MS
Prints "delay proxy listening on 127.0.0.1:PORT" once it accepts connections.
"""

import asyncio
import sys

CHUNK = 256 * 1024


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk written `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, None))
    try:
        await sender
    except ConnectionError:
        pass


async def main():
    listen_port, upstream, delay_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    host, port = upstream.rsplit(":", 1)
    delay = delay_ms / 1000.0

    async def accepted(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, server_writer, delay),
            pump(server_reader, client_writer, delay),
        )
        client_writer.close()
        server_writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", listen_port)
    address = server.sockets[0].getsockname()
    print(f"delay proxy listening on {address[0]}:{address[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
