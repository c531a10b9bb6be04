"""Jupyter messaging protocol (5.3) semantics for one kernel, on top of a runner.

This is the one place where Jupyter messages are understood, for every
language: the gateway's WebSocket connections and the bridge kernel both feed
client messages into a :class:`KernelSession` and receive Jupyter messages
back. Runners only execute; they never build Jupyter headers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from jupyter_client.session import Session

from .runner_client import NotDelivered, RunnerClient, RunnerError, RunnerGone
from .shell_queue import ShellQueue

log = logging.getLogger("kcr.session")

PROTOCOL_VERSION = "5.3"
#: How often a request that never reached its pod is sent to the kernel's next pod.
MAX_RESENDS = 2

#: Requests the runner answers (shell channel op name → reply type).
RUNNER_OPS = {
    "execute_request": "execute",
    "complete_request": "complete",
    "inspect_request": "inspect",
    "is_complete_request": "is_complete",
    "history_request": "history",
    "comm_info_request": "comm_info",
}
#: Shell messages forwarded to the runner that get no reply.
COMM_OPS = {"comm_open": "comm_open", "comm_msg": "comm_msg", "comm_close": "comm_close"}


class KernelListener(Protocol):
    """Something attached to a kernel that receives its messages (a WebSocket, a bridge)."""

    def send(self, channel: str, msg: dict) -> None:
        """Deliver one Jupyter message (dict with header, parent_header, ...)."""


@runtime_checkable
class PacedListener(KernelListener, Protocol):
    """A listener with a bounded send buffer (a WebSocket): it can slow the kernel down."""

    def drained(self) -> Awaitable[None] | None:
        """``None`` while it keeps up; else an awaitable that ends once it has room again
        (or has given up on its client)."""


class KernelSession:
    """The Jupyter side of one kernel.

    Contract:

    * :meth:`handle` takes a client message (a dict with ``header``,
      ``parent_header``, ``metadata``, ``content``, ``channel``) from one
      listener. Shell requests are executed one at a time in arrival order;
      control requests (``interrupt_request``, ``shutdown_request``,
      ``kernel_info_request``) are answered at once, even while a cell runs.
    * Every request gets ``status: busy`` before and ``status: idle`` after
      on iopub, with ``parent_header`` set to the request's header (a control
      request too while a cell runs, like ipykernel); every reply and output
      carries that ``parent_header`` too.
    * Replies and ``input_request`` go only to the listener that sent the
      request; iopub goes to every attached listener.
    * ``stop_on_error`` (default true): an execute that fails aborts the
      execute requests already queued (reply status ``aborted``).
    * ``kernel_info_reply`` is served from a cache filled when the runner is
      attached, never with a pod round trip.
    * A request whose pod goes away before the runner acknowledged it is sent
      again once ``before_request`` has put the kernel on a new pod (at most
      ``MAX_RESENDS`` times); only a request the pod had received ends with
      an error.
    * A cell whose pod goes away gets a ``KernelDied`` error; ``explain_loss``
      (from the kernel manager) may give the reason the backend knows, e.g.
      "the kernel used more than 2 GiB of memory and was stopped".
    * ``shutdown_request`` is answered and then handed to ``on_shutdown``
      (the kernel manager restarts or removes the kernel).
    * The runner behind the session can be replaced (:meth:`attach_runner`)
      while listeners stay attached: a restart or a move to a fresh pod is
      invisible to the WebSocket.
    * Back-pressure: the runner's output is read no faster than the slowest
      :class:`PacedListener` reads it (each listener bounds that wait itself).
    """

    def __init__(
        self,
        kernel_id: str,
        *,
        username: str = "kcr",
        on_shutdown: Callable[[bool], Awaitable[None]] | None = None,
        on_activity: Callable[[str], None] | None = None,
        before_request: Callable[[], Awaitable[None]] | None = None,
        after_execute: Callable[[dict, dict], Awaitable[None]] | None = None,
        explain_loss: Callable[[], Awaitable[str | None]] | None = None,
    ):
        self.kernel_id = kernel_id
        self.msg_factory = Session(username=username, key=b"")
        self.listeners: list[KernelListener] = []
        self.runner: RunnerClient | None = None
        self.kernel_info: dict = {}
        self.execution_state = "starting"
        self.execution_count = 0
        self.on_shutdown = on_shutdown
        self.on_activity = on_activity
        self.before_request = before_request
        self.after_execute = after_execute
        self.explain_loss = explain_loss
        self._queue = ShellQueue()
        self._worker: asyncio.Task | None = None
        self._current: tuple[KernelListener, dict, str] | None = None  # listener, msg, runner id
        self._active: dict | None = None  # the shell request being handled (busy was published)
        self._interrupt_pending = False  # an interrupt for an execute not yet sent to the runner
        self._last_parent: dict = {}
        self._closed = False
        # What lives only in the pod's kernel process and cannot move with the kernel:
        self.open_comms: dict[str, str] = {}  # comm_id -> target_name
        self.debugging = False  # a debugger client attached
        self.move_notes: list[str] = []  # sentences for the move notice (see attach_runner)

    # -- lifecycle ------------------------------------------------------------

    async def attach_runner(self, runner: RunnerClient, kernel_info: dict | None = None) -> None:
        """Put ``runner`` behind this session (start, restart, move to a new pod).

        Comms and a debug session live in the old pod's kernel process and cannot move:
        clients get ``comm_close`` for each open comm (the front end shows the widget as
        disconnected) and a DAP ``terminated`` event; ``move_notes`` says so for the notice.
        """
        self.move_notes = self._end_pod_bound_sessions()
        runner.on_unsolicited = self._on_unsolicited
        runner.backpressure = self._listeners_drained
        self.runner = runner
        if kernel_info is None:
            kernel_info = await runner.kernel_info()
        self.kernel_info = kernel_info
        self._ensure_shell_loop()
        self.set_state("idle")

    def _end_pod_bound_sessions(self) -> list[str]:
        notes = []
        comms, self.open_comms = self.open_comms, {}
        for comm_id in comms:
            self.publish("comm_close", {"comm_id": comm_id, "data": {}}, self._last_parent)
        if comms:
            notes.append(
                f"{len(comms)} widget comm(s) were closed (a comm cannot move between pods): "
                "run their cells again."
            )
        if self.debugging:
            self.debugging = False
            event = {"seq": 0, "type": "event", "event": "terminated", "body": {}}
            self.publish("debug_event", event, self._last_parent)
            notes.append("The debug session ended.")
        return notes

    def _track_comm(self, msg_type: str, content: dict) -> None:
        """Keep ``open_comms`` up to date from comm messages in either direction."""
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str):
            return
        if msg_type == "comm_open":
            self.open_comms[comm_id] = str(content.get("target_name", ""))
        elif msg_type == "comm_close":
            self.open_comms.pop(comm_id, None)

    @property
    def queued(self) -> tuple[int, int]:
        """Shell requests waiting (not yet started): how many, and their wire bytes."""
        return self._queue.qsize(), self._queue.bytes

    @property
    def idle(self) -> bool:
        """No shell request is running or queued."""
        return self._active is None and self._queue.empty()

    def detach_runner(self) -> RunnerClient | None:
        runner, self.runner = self.runner, None
        return runner

    def reset_queue(self, reason: str) -> None:
        """Drop queued shell requests (restart): each gets an ``aborted`` reply."""
        while not self._queue.empty():
            listener, msg = self._queue.get_nowait()
            try:
                self._abort(listener, msg, reason)
            except Exception:  # one bad request must not keep the others unanswered
                log.exception("kernel %s: could not abort a queued request", self.kernel_id)

    async def close(self) -> None:
        """Stop the session; never raises, whatever the queued requests look like.

        The kernel manager frees the pod after this, so a failure here (a queued
        request a listener cannot be told about) is logged, never passed on.
        """
        self._closed = True
        try:
            self.reset_queue("the kernel was shut down")
        except Exception:
            log.exception("kernel %s: aborting queued requests failed", self.kernel_id)
            self._queue = ShellQueue()
        finally:
            if self._worker is not None:
                self._worker.cancel()
            if self.runner is not None:
                self.runner.close()
        try:
            self.set_state("dead")
        except Exception:
            log.exception("kernel %s: publishing the dead status failed", self.kernel_id)

    # -- listeners ------------------------------------------------------------

    def add_listener(self, listener: KernelListener) -> None:
        self.listeners.append(listener)

    def welcome(self, listener: KernelListener) -> None:
        """What a kernel's iopub says to a client that just subscribed: ``iopub_welcome``
        (JEP 65, as ipykernel's XPUB socket sends it) and the current execution state,
        so a client that connects after the kernel started still sees a ``status``."""
        listener.send("iopub", self.make_msg("iopub_welcome", {"subscription": ""}, None, "iopub"))
        state = self.execution_state if self.execution_state != "dead" else "idle"
        status = {"execution_state": state}
        listener.send("iopub", self.make_msg("status", status, None, "iopub"))

    def remove_listener(self, listener: KernelListener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _listeners_drained(self) -> Awaitable[Any] | None:
        waits = [
            wait
            for listener in self.listeners
            if isinstance(listener, PacedListener) and (wait := listener.drained()) is not None
        ]
        return asyncio.gather(*waits) if waits else None

    # -- messages out ---------------------------------------------------------

    def make_msg(self, msg_type: str, content: dict, parent: dict | None, channel: str) -> dict:
        msg = self.msg_factory.msg(msg_type, content, parent=parent or {})
        msg["channel"] = channel
        msg["buffers"] = []
        if not parent:
            msg["parent_header"] = {}
        msg["header"]["version"] = PROTOCOL_VERSION
        return msg

    def publish(
        self,
        msg_type: str,
        content: dict,
        parent: dict | None,
        buffers: list | None = None,
        metadata: dict | None = None,
    ) -> None:
        msg = self.make_msg(msg_type, content, parent, "iopub")
        if buffers:
            msg["buffers"] = buffers
        if metadata:
            msg["metadata"] = metadata
        if msg_type in ("comm_open", "comm_close"):
            self._track_comm(msg_type, content)
        for listener in list(self.listeners):
            listener.send("iopub", msg)

    def reply(
        self,
        listener: KernelListener,
        channel: str,
        msg_type: str,
        content: dict,
        parent: dict,
        metadata: dict | None = None,
    ) -> None:
        msg = self.make_msg(msg_type, content, parent, channel)
        if metadata:
            msg["metadata"] = metadata
        listener.send(channel, msg)

    def tell_user(self, text: str) -> None:
        """A line on stderr for whoever is looking at the kernel (parent: the latest request)."""
        self.publish("stream", {"name": "stderr", "text": text}, self._last_parent)

    def set_state(self, state: str, parent: dict | None = None) -> None:
        self.execution_state = state
        if state in ("busy", "idle", "starting", "restarting", "dead"):
            self.publish("status", {"execution_state": state}, parent)

    # -- messages in ----------------------------------------------------------

    def handle(self, listener: KernelListener, msg: dict, size: int = 0) -> None:
        """Take one client message (``size``: its wire bytes, for :attr:`queued`); never raises.

        ``msg`` should have passed :func:`kcr_kernels.message_validation.validate`.
        """
        channel = msg.get("channel") or "shell"
        msg_type = (msg.get("header") or {}).get("msg_type") or msg.get("msg_type")
        if not msg_type:
            log.warning("kernel %s: dropped a message without msg_type", self.kernel_id)
            return
        msg.setdefault("header", {})["msg_type"] = msg_type
        if self.on_activity is not None:
            self.on_activity(msg_type)
        if channel == "control" or msg_type in ("kernel_info_request", "interrupt_request"):
            asyncio.ensure_future(self._handle_control(listener, msg))
        elif channel == "stdin":
            asyncio.ensure_future(self._handle_stdin(msg))
        else:
            self._queue.put_nowait((listener, msg, size))
            # A session that never had a runner (a kernel adopted from the registry after a
            # gateway restart) runs its queue too: before_request puts it on a pod.
            self._ensure_shell_loop()

    def _ensure_shell_loop(self) -> None:
        if self._worker is None and not self._closed:
            self._worker = asyncio.create_task(self._shell_loop())

    async def _handle_control(self, listener: KernelListener, msg: dict) -> None:
        msg_type = msg["header"]["msg_type"]
        parent = msg["header"]
        channel = msg.get("channel") or "shell"
        # A control request gets its own busy/idle pair even while a cell runs, as ipykernel
        # sends it: JupyterLab's debugger waits for that idle before it takes a DAP reply (a
        # stackTrace while a cell is paused at a breakpoint). The shell requests answered
        # here at once (kernel_info, interrupt) get a pair only while nothing runs.
        idle_now = self.idle or channel == "control"
        if idle_now:
            self.publish("status", {"execution_state": "busy"}, parent)
        try:
            if msg_type == "kernel_info_request":
                await self._ensure_kernel_info()
                self.reply(listener, channel, "kernel_info_reply", self.kernel_info_reply(), parent)
            elif msg_type == "interrupt_request":
                status = await self.interrupt()
                self.reply(listener, channel, "interrupt_reply", status, parent)
            elif msg_type == "debug_request":
                reply = await self.debug_request(msg.get("content") or {}, parent)
                self.reply(listener, channel, "debug_reply", reply, parent)
            elif msg_type == "shutdown_request":
                restart = bool(msg.get("content", {}).get("restart", False))
                self.reply(
                    listener,
                    channel,
                    "shutdown_reply",
                    {"status": "ok", "restart": restart},
                    parent,
                )
                if self.on_shutdown is not None:
                    await self.on_shutdown(restart)
                return
            else:
                self.reply(
                    listener,
                    channel,
                    msg_type.replace("_request", "_reply"),
                    _error_content(
                        "UnsupportedRequest", f"{msg_type} is not supported by kcr kernels"
                    ),
                    parent,
                )
        finally:
            if idle_now and not self._closed:
                self.publish("status", {"execution_state": "idle"}, parent)

    async def _handle_stdin(self, msg: dict) -> None:
        if msg["header"]["msg_type"] != "input_reply":
            return
        current = self._current
        if current is None or self.runner is None:
            log.info("kernel %s: input_reply with no pending input_request", self.kernel_id)
            return
        try:
            await self.runner.send("input_reply", msg.get("content") or {}, current[2])
        except RunnerError as e:
            log.warning("kernel %s: input_reply not delivered: %s", self.kernel_id, e)

    async def _ensure_kernel_info(self) -> None:
        """A session that never had a runner (nor a cached kernel_info) gets one to ask.

        Front ends take ``language_info`` from this reply (JupyterLab stores it in the
        notebook and picks the editor mode by it), so "unknown" is not an answer.
        """
        if self.kernel_info or self.before_request is None:
            return
        try:
            await self.before_request()
        except Exception as e:
            log.warning("kernel %s: kernel_info without a runner: %s", self.kernel_id, e)

    def kernel_info_reply(self) -> dict:
        info = {
            "status": "ok",
            "protocol_version": PROTOCOL_VERSION,
            "implementation": "kcr",
            "implementation_version": "",
            "language_info": {"name": "unknown"},
            "banner": "",
            "help_links": [],
            "debugger": False,
        }
        info.update(self.kernel_info)
        info["protocol_version"] = PROTOCOL_VERSION
        return info

    async def debug_request(self, content: dict, parent: dict) -> dict:
        """Pass a DAP request to the kernel's debugger (ipykernel's, on its control channel:
        answered even while a cell is stopped at a breakpoint). Without a pod, or when the
        debugger is not there, the answer is a failed DAP response that says why. A kernel
        whose pod went away is first put on a new one (as a cell would be), so a front end
        that turns the debugger on again after a move gets the new kernel's debugger."""
        try:
            if (self.runner is None or self.runner.lost) and self.before_request is not None:
                try:
                    await self.before_request()
                except Exception as e:
                    raise RunnerError(f"the kernel has no running pod ({e})") from e
            if self.runner is None or not self.kernel_info.get("debugger"):
                raise RunnerError("this kernel has no debugger (debugpy is not in its pod)")
            frame = await self._require_runner().request("debug_request", content, None, parent)
            reply = frame.get("content") or {}
            command = content.get("command") if isinstance(content, dict) else None
            if command == "attach" and reply.get("success"):
                self.debugging = True
            elif command == "disconnect":
                self.debugging = False
            return reply
        except RunnerError as e:
            return {
                "type": "response",
                "request_seq": content.get("seq", 0) if isinstance(content, dict) else 0,
                "success": False,
                "command": content.get("command", "") if isinstance(content, dict) else "",
                "message": str(e),
                "body": {},
            }

    async def interrupt(self) -> dict:
        """Interrupt the running cell. Sent on the runner channel, so it is ordered after the
        execute it is meant for (an HTTP call could overtake it)."""
        active = self._active
        if self._current is None and active and active["header"]["msg_type"] == "execute_request":
            # The client saw this cell busy, but it is not at the runner yet (its pod may be
            # resuming): interrupt it as soon as it is sent.
            self._interrupt_pending = True
            return {"status": "ok"}
        if self.runner is None:
            return {"status": "ok"}
        try:
            if self.runner.connected:
                await self.runner.send("interrupt", {}, "interrupt")
            else:
                await self.runner.interrupt()
        except RunnerError as e:
            return _error_content("InterruptFailed", str(e))
        return {"status": "ok"}

    # -- shell ----------------------------------------------------------------

    async def _shell_loop(self) -> None:
        while True:
            listener, msg = await self._queue.get()
            self._active = msg
            parent = msg["header"]
            self._last_parent = parent
            self.set_state("busy", parent)
            try:
                await self._handle_shell(listener, msg)
            except Exception as e:  # a bug must not stop the kernel's queue
                log.exception("kernel %s: %s failed", self.kernel_id, parent.get("msg_type"))
                try:
                    self.reply(
                        listener,
                        "shell",
                        _reply_type(parent.get("msg_type")),
                        _error_content(type(e).__name__, str(e)),
                        parent,
                    )
                except Exception:  # nor can a reply that cannot be built
                    log.exception("kernel %s: no error reply possible", self.kernel_id)
            finally:
                self._current = None
                self._active = None
                self._interrupt_pending = False
            if not self._closed:
                self.set_state("idle", parent)

    async def _handle_shell(self, listener: KernelListener, msg: dict) -> None:
        """Run one shell request and send its reply."""
        msg_type = msg["header"]["msg_type"]
        parent = msg["header"]
        content = msg.get("content") or {}
        if msg_type == "kernel_info_request":
            await self._ensure_kernel_info()
            self.reply(listener, "shell", "kernel_info_reply", self.kernel_info_reply(), parent)
            return
        if msg_type in COMM_OPS:
            await self._send_comm(msg)
            return
        if msg_type not in RUNNER_OPS:
            log.info("kernel %s: unknown shell message %s", self.kernel_id, msg_type)
            if msg_type.endswith("_request"):
                self.reply(
                    listener,
                    "shell",
                    msg_type[: -len("_request")] + "_reply",
                    _error_content("UnknownMessageType", f"kcr kernels do not handle {msg_type}"),
                    parent,
                )
            return
        if self.before_request is not None:
            await self.before_request()
        reply_type = msg_type.replace("_request", "_reply")
        if msg_type == "execute_request":
            await self._execute(listener, msg)
            return
        resends = 0
        while True:
            try:
                runner = self._require_runner()
                frame = await runner.request(RUNNER_OPS[msg_type], content)
                self.reply(
                    listener,
                    "shell",
                    frame.get("msg_type") or reply_type,
                    frame.get("content") or {},
                    parent,
                )
            except RunnerError as e:
                if isinstance(e, NotDelivered) and await self._may_resend(e, parent, resends):
                    resends += 1
                    continue
                error = _error_content("KernelDied", str(e))
                self.reply(listener, "shell", reply_type, error, parent)
            return

    async def _may_resend(self, error: NotDelivered, parent: dict, resends: int) -> bool:
        """A request that never reached its pod goes to the kernel's next pod (at most
        ``MAX_RESENDS`` times): ``before_request`` puts the kernel on one. True to resend."""
        if self.before_request is None or self._closed or resends >= MAX_RESENDS:
            return False
        log.info(
            "kernel %s: %s never reached its pod (%s); sending it to the next pod",
            self.kernel_id,
            parent.get("msg_type"),
            error,
        )
        self._current = None
        await self.before_request()
        return True

    async def _execute(self, listener: KernelListener, msg: dict) -> None:
        parent = msg["header"]
        content = dict(msg.get("content") or {})
        content.setdefault("silent", False)
        content.setdefault("store_history", not content["silent"])
        content.setdefault("user_expressions", {})
        content.setdefault("allow_stdin", True)
        stop_on_error = content.get("stop_on_error", True)
        silent = content["silent"]

        def on_event(event: str, data: dict, frame: dict | None = None) -> None:
            if event == "execute_input":
                self.execution_count = data.get("execution_count", self.execution_count)
                if not silent:
                    self.publish("execute_input", data, parent)
            elif event == "input_request":
                self.reply(listener, "stdin", "input_request", data, parent)
            elif event == "status":
                return
            else:
                self.publish(event, data, parent, _frame_buffers(frame), _frame_metadata(frame))

        resends = 0
        while True:
            try:
                runner = self._require_runner()
                request_id, future = runner.start_request(
                    "execute", content, on_event, parent, _client_metadata(msg)
                )
                self._current = (listener, msg, request_id)
                if self._interrupt_pending:
                    self._interrupt_pending = False
                    await self.interrupt()  # queued on the socket behind the execute
                frame = await future
                reply_content = frame.get("content") or {}
            except NotDelivered as e:
                if await self._may_resend(e, parent, resends):
                    resends += 1
                    continue
                frame = {}
                reply_content = await self._died(e, parent)
            except RunnerError as e:
                frame = {}
                reply_content = await self._died(e, parent)
            break
        if "execution_count" in reply_content:
            self.execution_count = reply_content["execution_count"]
        self.reply(
            listener,
            "shell",
            "execute_reply",
            reply_content,
            parent,
            metadata={"status": reply_content.get("status", "ok")},
        )
        if reply_content.get("status") == "error" and stop_on_error and not silent:
            # At once, with no await since the reply: only requests that were already queued
            # when the client got the error are aborted, never one it sends in response.
            self._abort_queued_executes()
        if self.after_execute is not None:
            try:
                await self.after_execute(reply_content, frame)
            except Exception:
                log.exception("kernel %s: after-execute hook failed", self.kernel_id)

    async def _died(self, error: RunnerError, parent: dict) -> dict:
        ename = "KernelDied" if isinstance(error, RunnerGone) else "RunnerError"
        evalue = (
            f"The kernel's pod stopped while this request ran ({error})."
            if isinstance(error, RunnerGone)
            else str(error)
        )
        if isinstance(error, RunnerGone) and self.explain_loss is not None:
            why = await self.explain_loss()  # e.g. the pod's memory limit (OOMKilled)
            if why:
                evalue = f"The kernel's pod stopped while this request ran: {why}."
        content = _error_content(ename, evalue)
        self.publish("error", {k: content[k] for k in ("ename", "evalue", "traceback")}, parent)
        content["execution_count"] = self.execution_count
        return content

    def _require_runner(self) -> RunnerClient:
        if self.runner is None or self.runner.lost:
            raise NotDelivered("the kernel has no running pod")
        return self.runner

    async def _send_comm(self, msg: dict) -> None:
        """Hand a client's comm message to the kernel and wait until the kernel handled it.

        Like ipykernel, a comm message gets no reply, and its ``idle`` comes once the kernel
        is done with it; what the kernel sends because of it (``comm_msg`` back, a widget's
        outputs) has it as parent. Binary buffers travel base64-encoded. A comm message for
        a kernel without a pod is dropped (and logged): its comms closed with the pod.
        """
        parent = msg["header"]
        content = dict(msg.get("content") or {})
        self._track_comm(parent["msg_type"], content)
        buffers = msg.get("buffers") or []
        if buffers:
            content["buffers"] = [base64.b64encode(bytes(b)).decode() for b in buffers]
        try:
            runner = self._require_runner()
            _, future = runner.start_request(
                COMM_OPS[parent["msg_type"]],
                content,
                self._event_publisher(parent),
                parent,
                _client_metadata(msg),
            )
            await future
        except RunnerError as e:
            log.warning("kernel %s: %s not delivered: %s", self.kernel_id, parent["msg_type"], e)

    def _event_publisher(self, parent: dict) -> Callable[..., None]:
        """An ``on_event`` callback that publishes a request's events on iopub."""

        def on_event(event: str, data: dict, frame: dict | None = None) -> None:
            if event == "status":
                return
            self.publish(event, data, parent, _frame_buffers(frame), _frame_metadata(frame))

        return on_event

    def _abort_queued_executes(self) -> None:
        kept = []
        while not self._queue.empty():
            listener, msg = self._queue.get_nowait()
            if msg["header"]["msg_type"] == "execute_request":
                self._abort(listener, msg, "a previous cell failed (stop_on_error)")
            else:
                kept.append((listener, msg))
        for item in kept:
            self._queue.put_nowait(item)

    def _abort(self, listener: KernelListener, msg: dict, reason: str) -> None:
        parent = msg["header"]
        self.publish("status", {"execution_state": "busy"}, parent)
        msg_type = parent.get("msg_type", "execute_request")
        content: dict[str, Any] = {"status": "aborted", "reason": reason}
        if msg_type == "execute_request":
            content["execution_count"] = self.execution_count
        self.reply(
            listener,
            "shell",
            _reply_type(msg_type),
            content,
            parent,
            metadata={"status": "aborted"},
        )
        self.publish("status", {"execution_state": "idle"}, parent)

    def _on_unsolicited(self, event: str, content: dict, frame: dict | None = None) -> None:
        """Output not caused by a running request (a widget callback, a thread, a debugger
        event): its parent is the request the kernel names, else the last request."""
        parent = (frame or {}).get("parent") or self._last_parent
        self.publish(event, content, parent, _frame_buffers(frame), _frame_metadata(frame))


def _frame_buffers(frame: dict | None) -> list[bytes]:
    """The binary buffers of a runner event frame (base64 strings on the wire)."""
    if not frame or not frame.get("buffers"):
        return []
    out = []
    for item in frame["buffers"]:
        try:
            out.append(base64.b64decode(item))
        except (ValueError, TypeError):
            log.warning("dropped a runner event buffer that is not base64")
    return out


def _client_metadata(msg: dict) -> dict | None:
    """A client message's ``metadata`` when it is a non-empty dict (the kernel sees it:
    ipywidgets checks a front end's ``comm_open`` version there, ipykernel reads an
    execute's ``cellId``)."""
    metadata = msg.get("metadata")
    return metadata if isinstance(metadata, dict) and metadata else None


def _frame_metadata(frame: dict | None) -> dict | None:
    """The Jupyter ``metadata`` of a runner event frame (e.g. a ``comm_open``'s widget
    protocol version), or None when it has none."""
    metadata = (frame or {}).get("metadata")
    return metadata if isinstance(metadata, dict) else None


def _reply_type(msg_type: object) -> str:
    """The reply type of a request type; a malformed one (not a string) gets ``error_reply``."""
    if not isinstance(msg_type, str):
        return "error_reply"
    return msg_type.replace("_request", "_reply")


def _error_content(ename: str, evalue: str) -> dict:
    return {
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [f"{ename}: {evalue}"],
    }
