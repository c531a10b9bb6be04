"""SwitchableTCPProxyDouble: a TCP forwarder on 127.0.0.1 that a test turns off and on.

Stands between a real client (e.g. a gateway's S3 client) and a real server (moto): while
``up`` it forwards bytes both ways; :meth:`refuse` closes the listening socket and every
open connection, so new connections are refused as by a server that is down; :meth:`restore`
listens again on the same port. Runs its own event loop in a daemon thread, so it works for
clients in other processes and for blocking tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class SwitchableTCPProxyDouble:
    """Forward ``127.0.0.1:port`` → ``target_host:target_port`` until told otherwise."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> SwitchableTCPProxyDouble:
        self.restore()
        return self

    def restore(self) -> None:
        """Listen (again) and forward."""
        self._call(self._listen())

    def refuse(self) -> None:
        """Stop listening and cut every connection: clients get 'connection refused'."""
        self._call(self._close())

    def close(self) -> None:
        self.refuse()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
