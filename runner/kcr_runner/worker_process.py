"""The runner's handle on its worker process: start, serialize requests, route events, death.

The runner never restarts a dead worker: after a death every request fails at once with the
same "the kernel process died" message (the gateway replaces the whole pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .memory_cap import MemoryCap
from .worker_protocol import REPLY_TYPES, decode, encode, split_blob

log = logging.getLogger("kcr_runner.worker")

#: Called with (event, content, extra) for each event; ``extra`` holds optional frame fields
#: (``buffers``, ``parent``, ``metadata``) or None. It may return an awaitable: the runner then
#: reads nothing more from the worker until it is done (back-pressure: the worker blocks).
EventCallback = Callable[..., Awaitable[Any] | None]
#: Optional fields of a worker event that travel on to the runner's channel.
EXTRA_FIELDS = ("buffers", "parent", "metadata")

#: How much of the worker's output the runner reads ahead: asyncio stops reading the pipe once
#: twice this is buffered, so a worker whose output is not consumed blocks on its next write.
READ_AHEAD = 1024 * 1024

#: Seconds between two looks at the memory cgroup's OOM counter while the worker lives.
OOM_POLL_SECONDS = 0.25


class WorkerDied(Exception):
    """The worker process is gone; ``str(exc)`` says why (exit code or signal)."""


@dataclass
class _Pending:
    future: asyncio.Future
    on_event: EventCallback | None


class WorkerProcess:
    """Starts a worker (``argv``) with protocol pipes and talks the worker protocol to it.

    ``request()`` calls are processed one at a time in arrival order (an ``asyncio.Lock`` is
    FIFO); ``interrupt()``, ``send_input()`` and ``control()`` bypass the queue. Events whose
    id is null (output not caused by a request) go to ``on_unsolicited``.

    ``memory_cap``: the pod's memory cgroup. When its OOM killer acts (on the worker or on
    any process the worker started), the whole worker is stopped and every request -- the
    one that was running included, even if its reply already came -- fails with
    :class:`WorkerDied` whose text is :meth:`MemoryCap.message`. Without an OOM kill in the
    cgroup that message is never given.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        options: dict[str, Any],
        line_limit: int,
        cell_timeout: float | None = None,
        memory_cap: MemoryCap | None = None,
    ):
        self.argv = argv
        self.memory_cap = memory_cap or MemoryCap(None)
        self._oom_watch: asyncio.Task | None = None
        self.cwd = cwd
        self.env = env
        self.options = options
        self.line_limit = line_limit
        self.cell_timeout = cell_timeout
        self.on_unsolicited: EventCallback = lambda event, content, extra=None: None
        self.proc: asyncio.subprocess.Process | None = None
        self.detail = ""
        self.ready_info: dict[str, Any] = {}
        self._alive = False
        self._lock = asyncio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None
        self.current: str | None = None
        self.current_op: str | None = None
        self._executes_waiting = 0  # executes queued behind the running request
        self._deferred_interrupt: dict[str, Any] | None = None

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def new_id(self) -> str:
        return f"w{next(self._ids)}"

    async def start(self, ready_timeout: float = 60.0) -> None:
        """Start the worker and wait for its ``ready`` message (or its death)."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        await asyncio.to_thread(self.memory_cap.arm)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                limit=READ_AHEAD,
                start_new_session=True,
            )
        except OSError as exc:
            self.detail = f"the kernel process could not be started: {exc}"
            log.error("%s", self.detail)
            return
        self._alive = True
        self._reader = asyncio.create_task(self._read_loop())
        if self.memory_cap.cgroup is not None:
            self._oom_watch = asyncio.create_task(self._watch_memory())
        await self._write({"type": "configure", **self.options})
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), ready_timeout)
        except TimeoutError:
            self.detail = f"the kernel process did not become ready within {ready_timeout} s"
            log.error("%s", self.detail)
            await self.kill()

    async def request(
        self,
        request_id: str,
        op: str,
        content: dict[str, Any],
        on_event: EventCallback | None,
        header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Queue one request; returns ``(msg_type, content)`` of its reply. ``header`` (the
        client's Jupyter header) and ``metadata`` (its message metadata) are passed on to
        workers that speak Jupyter to a kernel.

        Raises ``WorkerDied`` when the worker is dead or dies while the request runs.
        """
        if op == "execute":
            self._executes_waiting += 1
        try:
            await self._lock.acquire()
        finally:
            if op == "execute":
                self._executes_waiting -= 1
        try:
            if not self._alive:
                raise WorkerDied(self.detail or "the kernel process is not running")
            future = asyncio.get_running_loop().create_future()
            self._pending[request_id] = _Pending(future, on_event)
            self.current = request_id
            self.current_op = op
            timer = None
            if op == "execute" and self.cell_timeout:
                timer = asyncio.get_running_loop().call_later(
                    self.cell_timeout, lambda: asyncio.ensure_future(self._timeout())
                )
            try:
                message = {"type": "request", "id": request_id, "op": op, "content": content}
                if header:
                    message["header"] = header
                if metadata:
                    message["metadata"] = metadata
                await self._write(message)
                if op == "execute" and self._deferred_interrupt is not None:
                    deferred, self._deferred_interrupt = self._deferred_interrupt, None
                    await self._write(deferred)
                result = await future
                if await self._stop_if_out_of_memory():
                    raise WorkerDied(self.detail)
                return result
            finally:
                if timer is not None:
                    timer.cancel()
                self.current = None
                self.current_op = None
                self._pending.pop(request_id, None)
        finally:
            self._lock.release()

    async def control(self, op: str, content: dict[str, Any]) -> dict[str, Any]:
        """A request the worker answers at once, even while a cell runs (``set_env``)."""
        if not self._alive:
            raise WorkerDied(self.detail or "the kernel process is not running")
        request_id = self.new_id()
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, None)
        try:
            await self._write({"type": "control", "id": request_id, "op": op, "content": content})
            _, reply = await future
            return reply
        finally:
            self._pending.pop(request_id, None)

    async def interrupt(self, reason: str = "user", message: str = "") -> None:
        """Interrupt the running execute. One that arrives while an execute waits behind
        another request (a snapshot, a completion) is kept and sent right behind that
        execute, so it is never lost."""
        if not self._alive:
            return
        frame = {"type": "interrupt", "reason": reason, "message": message}
        if self.current_op != "execute" and self._executes_waiting:
            self._deferred_interrupt = frame
            return
        await self._write(frame)

    async def send_input(self, request_id: str, value: str) -> None:
        if self._alive:
            await self._write({"type": "input_reply", "id": request_id, "value": value})

    async def _timeout(self) -> None:
        await self.interrupt(
            "timeout", f"the cell ran longer than the runner's limit of {self.cell_timeout} s"
        )

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            message, blob = split_blob(message)
            self.proc.stdin.write(encode(message))
            if blob is not None:
                self.proc.stdin.write(blob)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader sees EOF and records the death

    async def _read_loop(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            while True:
                try:
                    line = await read_line(stdout, self.line_limit)
                except ValueError:  # one line over the limit: protocol violation
                    log.error("worker sent a message over %d bytes; stopping it", self.line_limit)
                    await self.kill()
                    break
                if not line:
                    break
                try:
                    message = decode(line)
                    if message.get("binary"):
                        message["content"]["blob"] = await stdout.readexactly(message.pop("binary"))
                    wait = self._dispatch(message)
                    if wait is not None:
                        await wait
                except Exception:
                    log.exception("bad message from the worker: %r", line[:200])
        finally:
            await self._record_death()

    def _dispatch(self, message: dict[str, Any]) -> Awaitable[Any] | None:
        kind = message.get("type")
        request_id = message.get("id")
        if kind == "event":
            pending = self._pending.get(request_id) if request_id is not None else None
            event, content = message.get("event", ""), message.get("content") or {}
            extra = {k: message[k] for k in EXTRA_FIELDS if message.get(k)} or None
            if pending is not None and pending.on_event is not None:
                return pending.on_event(event, content, extra)
            if request_id is None:
                return self.on_unsolicited(event, content, extra)
        elif kind == "reply":
            pending = self._pending.get(request_id)
            if pending is not None and not pending.future.done():
                pending.future.set_result((message.get("msg_type"), message.get("content") or {}))
        elif kind == "ready":
            self.ready_info = message
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)

    async def _stop_if_out_of_memory(self) -> bool:
        """Stop the worker and its children if the memory cgroup OOM-killed anything."""
        cap = self.memory_cap
        # Two small reads of cgroupfs (kernel memory, never disk): cheaper inline than a
        # thread hop on every reply.
        if cap.cgroup is None or not cap.tripped():
            return False
        if not self.detail:
            self.detail = cap.message()
            log.error("memory cgroup %s: OOM kill; stopping the worker", cap.cgroup)
        await self.kill()
        await asyncio.to_thread(cap.kill_all)
        return True

    async def _watch_memory(self) -> None:
        # A cell may outlive an OOM kill of one of its subprocesses: stop the kernel then,
        # not only when the cell ends.
        while self._alive:
            if await self._stop_if_out_of_memory():
                return
            await asyncio.sleep(OOM_POLL_SECONDS)

    async def _record_death(self) -> None:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            await self.kill()
            code = await self.proc.wait()
        self._alive = False
        if self._oom_watch is not None:
            self._oom_watch.cancel()
        if not self.detail and await asyncio.to_thread(self.memory_cap.tripped):
            self.detail = self.memory_cap.message()
            await asyncio.to_thread(self.memory_cap.kill_all)
        if not self.detail:
            self.detail = describe_exit(code)
        log.error("worker stopped: %s", self.detail)
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(WorkerDied(self.detail))
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def kill(self) -> None:
        """Kill the worker's whole process group (it runs in its own session)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        if self._alive and not self.detail:
            self.detail = "the runner is shutting down and stopped the kernel process"
        await self.kill()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


async def read_line(stream: asyncio.StreamReader, limit: int) -> bytes:
    """One line (with its newline; at EOF what is left, maybe ``b""``) of up to ``limit``
    bytes, read in pieces so that the stream's own, small limit only bounds read-ahead.
    Raises ``ValueError`` for a longer line."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            part = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # EOF
            part = exc.partial
        except asyncio.LimitOverrunError as exc:  # no newline within the read-ahead yet
            part = await stream.readexactly(exc.consumed)
            size += len(part)
            if size > limit:
                raise ValueError(f"a line over {limit} bytes") from None
            parts.append(part)
            continue
        if size + len(part) > limit:
            raise ValueError(f"a line over {limit} bytes")
        parts.append(part)
        return b"".join(parts)


def describe_exit(code: int) -> str:
    """A user-facing sentence for a worker exit status.

    It never blames memory: when the pod's memory cap stopped the kernel, the caller
    says so with :meth:`MemoryCap.message` instead. A SIGKILL without that is the kernel
    being stopped from outside (the pod stopped, ``kill -9``).
    """
    if code < 0 or code > 128:
        number = -code if code < 0 else code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        text = f"the kernel process died (killed by signal {name}"
        if number == signal.SIGKILL:
            text += ": it was stopped from outside the kernel"
        if code > 128:
            text += f"; exit status {code}"
        return text + ")"
    return f"the kernel process died (exit code {code})"


def reply_type(op: str) -> str:
    return REPLY_TYPES.get(op, f"{op}_reply")
