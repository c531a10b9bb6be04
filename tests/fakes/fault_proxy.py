"""FaultProxyDouble: a TCP proxy on 127.0.0.1 that passes, refuses or hangs, switchable at runtime.

Put it between a client and a real server (moto's S3 server, redis-server) to inject
network faults without touching the server::

    proxy = FaultProxyDouble("127.0.0.1", s3_port).start()
    store_url = f"http://127.0.0.1:{proxy.port}"    # the client talks to the proxy
    proxy.mode = "refuse"    # new connections are closed at once (RST); open ones are cut
    proxy.mode = "hang"      # connections are accepted and nothing is ever answered
    proxy.mode = "pass"      # bytes flow both ways again

* ``pass``: every accepted connection is relayed to the upstream server.
* ``refuse``: the proxy stops listening, so connecting fails with ECONNREFUSED as with
  a stopped server; switching to ``refuse`` also resets (RST) the connections that are
  open (a pooled keep-alive connection must not keep working through an outage). The
  port is listened on again when the mode leaves ``refuse``.
* ``hang``: connections are accepted and their bytes read and dropped, nothing is sent
  back, as a stalled server or a black-holing network. Switching to ``hang`` resets the
  connections that are open, so a client's next request (or its retry) lands on a hung
  connection; a hung connection stays hung after the mode changes, until its client
  gives up (its read timeout), while new connections follow the new mode.

It runs its own thread with an asyncio loop, so a test's event loop (or a gateway in the
test process) and the proxy never wait on each other. ``stop()`` closes everything.
``connections`` counts the connections accepted so far (any mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

MODES = ("pass", "refuse", "hang")


class FaultProxyDouble:
    """A switchable TCP proxy to ``upstream_host:upstream_port`` (see the module docstring)."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self._port = port
        self._mode = "pass"
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._flowing = threading.Event()
        self._flowing.set()

    # -- control ------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._mode = mode
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._apply(mode), self._loop)
        future.result(10)

    def start(self) -> FaultProxyDouble:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="fault-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._shutdown_event.set)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    # -- the proxy's own loop -----------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._shutdown_event = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        ready.set()
        await self._shutdown_event.wait()
        if self._server is not None:
            self._server.close()
        self._reset_all()

    async def _apply(self, mode: str) -> None:
        if mode != "pass":
            self._reset_all(hung_too=mode == "refuse")
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
        elif self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self._port, reuse_address=True
            )

    def _reset_all(self, hung_too: bool = True) -> None:
        for pair in list(self._open):
            client, upstream = pair
            if upstream is None and not hung_too:
                continue
            _reset(client)
            if upstream is not None:
                _reset(upstream)
            self._open.discard(pair)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._mode != "pass":
            pair = (writer, None)
            self._open.add(pair)
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass
            self._open.discard(pair)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._open.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                with contextlib.suppress(Exception):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a refused or killed peer looks to the client."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(Exception):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


__all__ = ["MODES", "FaultProxyDouble"]
