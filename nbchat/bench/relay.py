"""A loopback TCP relay that delays each direction by half a round trip: a WAN without netem.

Where the kernel lacks ``sch_netem`` (see :mod:`.wan`), a client connects to
the relay instead of the server; every byte the relay reads, in either
direction, is written on ``rtt / 2`` seconds later, in order, while reading
goes on (the delay costs latency, not bandwidth). A TCP handshake with the
relay is local, so the first round trip a connection costs shows up when the
relay's own connection to the server is made: the relay connects upstream
only after holding the client's first bytes for half the RTT, and the
server's first answer comes back half an RTT later. That is a round trip per
new connection, as on a real link, minus the SYN/SYN-ACK the kernel answers
(which the relay cannot delay): counts of round trips made here are a floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each piece written ``delay`` seconds after it was read."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # holding the bytes is the point: this is the emulated link
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()


@dataclass
class DelayRelay:
    """Listens on a loopback port and forwards to ``target_port``, ``rtt`` seconds per round trip."""

    target_port: int
    rtt: float
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        half = self.rtt / 2
        # The first bytes travel half the RTT before the server can see them.
        first = await reader.read(65536)
        await asyncio.sleep(half)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        await asyncio.gather(_pump(reader, up_writer, half), _pump(up_reader, writer, half),
                             return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    def start(self) -> DelayRelay:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve() -> None:
                server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                async with server:
                    await server.serve_forever()

            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(serve())
            pending = asyncio.all_tasks(loop)  # connections still open: end them before the loop goes
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="nbchat-relay", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None:
            for task in asyncio.all_tasks(loop):
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
