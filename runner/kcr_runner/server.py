"""The runner's HTTP + WebSocket API (tornado). Language-neutral: it only speaks the worker
protocol to a ``WorkerProcess``. The API is documented in ``runner/README.md``."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from tornado import web, websocket

from .file_identity import FileOps
from .files import PathEscapes, PathRefused, Workspace
from .languages import LanguageSpec
from .output_budget import OutputBudget
from .worker_process import WorkerDied, WorkerProcess, reply_type
from .worker_protocol import QUEUED_OPS

log = logging.getLogger("kcr_runner.server")

#: Ops a client may send on ``/channel`` that are queued for the worker.
CHANNEL_OPS = QUEUED_OPS - {"snapshot", "restore"}
#: Ops a client may send on ``/channel`` that bypass the queue.
DIRECT_OPS = ("debug_request", "input_reply", "interrupt", "kernel_info")

#: Bytes a ``/channel`` connection may have queued and not yet sent before the runner stops
#: reading the worker's output (the worker then blocks on its pipe: natural back-pressure).
CHANNEL_HIGH_WATER = 4 * 1024 * 1024


@dataclass
class RunnerState:
    """Everything the handlers share: the worker, the workspace, the token and the limits."""

    token: str
    language: LanguageSpec
    worker: WorkerProcess
    workspace: Workspace
    max_request_bytes: int
    max_state_bytes: int
    channels: set[ChannelHandler]
    max_file_bytes: int = 0  # 0: uploads are bounded by the pod's disk only
    #: Every workspace operation runs on these threads (as the sandbox's uid, if given).
    file_ops: FileOps = field(default_factory=lambda: FileOps(None, None))
    max_output_bytes: int = 10 * 1024 * 1024  # per cell, every output type (0: no limit)
    max_output_messages: int = 100_000  # per cell (0: no limit)
    #: The budget of output sent between cells (``"id": null``), renewed by every execute.
    between_cells: OutputBudget = field(init=False)

    def __post_init__(self) -> None:
        self.between_cells = self.new_budget()

    def new_budget(self) -> OutputBudget:
        return OutputBudget(self.max_output_bytes, self.max_output_messages)

    def broadcast(
        self, event: str, content: dict[str, Any], extra: dict | None = None
    ) -> Awaitable[None] | None:
        """Send an event not caused by a request to every connection (within the budget);
        returns an awaitable while a connection's send buffer is full."""
        channels = list(self.channels)
        for name, content_json in self.between_cells.admit(event, content):
            for channel in channels:
                channel.send_event(None, name, content_json, extra)
        waits = [w for w in (channel.drained() for channel in channels) if w is not None]
        return asyncio.gather(*waits) if waits else None

    def kernel_info(self) -> dict[str, Any]:
        """The language's kernel_info, overridden by what the worker said when it started
        (the Python worker reports ipykernel's own ``kernel_info_reply``)."""
        info = dict(self.language.kernel_info())
        info.update(self.worker.ready_info.get("kernel_info") or {})
        info.pop("status", None)
        return info


def _authorized(handler: web.RequestHandler, token: str) -> bool:
    header = handler.request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


class ApiHandler(web.RequestHandler):
    """Base: bearer-token check and JSON errors ``{"reason": ..., "message": ...}``."""

    state: RunnerState

    def initialize(self, state: RunnerState) -> None:
        self.state = state

    def prepare(self) -> None:
        if not _authorized(self, self.state.token):
            self.fail(401, "unauthorized", "missing or wrong bearer token")

    def check_xsrf_cookie(self) -> None:
        pass  # token-authenticated API, no cookies

    def fail(self, status: int, reason: str, message: str) -> None:
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"reason": reason, "message": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = str(exc) if exc is not None else self._reason
        reason = "internal_error" if status_code >= 500 else "bad_request"
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"reason": reason, "message": message}))

    def send_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def worker_dead(self, exc: Exception) -> None:
        self.fail(409, "kernel_dead", str(exc))


@web.stream_request_body
class BodyHandler(ApiHandler):
    """Base for requests with a body: refuses bodies over ``body_limit()`` with 413."""

    def body_limit(self) -> int:
        return self.state.max_request_bytes

    def prepare(self) -> None:
        super().prepare()
        if self._finished:
            return
        self._body = bytearray()
        self._too_large = False
        limit = self.body_limit()
        self.request.connection.set_max_body_size(limit + 1)
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.body_too_large()

    def data_received(self, chunk: bytes) -> None:
        if self._finished or self._too_large:
            return
        self._body.extend(chunk)
        if len(self._body) > self.body_limit():
            self._too_large = True
            self._body = bytearray()

    def body_too_large(self) -> None:
        self.fail(
            413,
            "request_too_large",
            f"the request body is over the limit of {self.body_limit()} "
            "bytes (--max-request-bytes / --max-state-bytes)",
        )

    def body_ok(self) -> bool:
        if self._too_large:
            self.body_too_large()
            return False
        return True


class HealthHandler(ApiHandler):
    def get(self) -> None:
        worker = self.state.worker
        self.send_json(
            {
                "status": "ok" if worker.alive else "dead",
                "language": self.state.language.name,
                "busy": worker.busy,
                "worker": "alive" if worker.alive else "dead",
                "detail": worker.detail,
            }
        )


class KernelInfoHandler(ApiHandler):
    def get(self) -> None:
        self.send_json(self.state.kernel_info())


class InterruptHandler(BodyHandler):
    async def post(self) -> None:
        await self.state.worker.interrupt("user")
        self.set_status(204)
        self.finish()


class EnvHandler(BodyHandler):
    async def post(self) -> None:
        if not self.body_ok():
            return
        try:
            env = json.loads(self._body or b"null")
        except ValueError as exc:
            return self.fail(400, "bad_json", f"the body is not JSON: {exc}")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            return self.fail(400, "bad_env", "the body must be a JSON object of string values")
        try:
            await self.state.worker.control("set_env", {"env": env})
        except WorkerDied as exc:
            return self.worker_dead(exc)
        self.set_status(204)
        self.finish()


class SnapshotHandler(BodyHandler):
    async def post(self) -> None:
        worker = self.state.worker
        try:
            _, reply = await worker.request(worker.new_id(), "snapshot", {}, None)
        except WorkerDied as exc:
            return self.worker_dead(exc)
        if reply.get("status") != "ok":
            status = 413 if reply.get("reason") == "state_too_large" else 500
            return self.fail(
                status,
                reply.get("reason", "snapshot_failed"),
                reply.get("message") or reply.get("evalue", ""),
            )
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-KCR-State-Errors", json.dumps(reply.get("skipped", [])))
        self.set_header("X-KCR-State-Names", json.dumps(reply.get("names", [])))
        self.finish(bytes(reply["blob"]))


class RestoreHandler(BodyHandler):
    def body_limit(self) -> int:
        return self.state.max_state_bytes

    async def post(self) -> None:
        if not self.body_ok():
            return
        worker = self.state.worker
        blob = bytes(self._body)
        try:
            _, reply = await worker.request(worker.new_id(), "restore", {"blob": blob}, None)
        except WorkerDied as exc:
            return self.worker_dead(exc)
        if reply.get("status") != "ok":
            status = 400 if reply.get("reason") == "bad_state" else 500
            return self.fail(
                status,
                reply.get("reason", "restore_failed"),
                reply.get("message") or reply.get("evalue", ""),
            )
        self.send_json({"restored": reply.get("restored", []), "errors": reply.get("errors", [])})


class FilesListHandler(ApiHandler):
    async def get(self) -> None:
        files = await self.state.file_ops.run(self.state.workspace.list)
        self.send_json({"files": files})


@web.stream_request_body
class FileHandler(ApiHandler):
    """``GET|PUT|DELETE /files/{path}`` inside the workspace.

    Bodies stream: an upload goes chunk by chunk into a temporary file next to its target
    (renamed into place when complete, removed on any failure), a download is read and sent
    in 1 MiB chunks, so a file never has to fit in the runner's memory.
    """

    CHUNK = 1 << 20

    async def prepare(self) -> None:
        super().prepare()
        self._upload = None
        self._upload_error: tuple[int, str, str] | None = None
        if self._finished or self.request.method != "PUT":
            return
        # Uploads are bounded by the pod's disk (and the gateway's quotas), not by
        # --max-request-bytes, which limits bodies the runner keeps in memory.
        self.request.connection.set_max_body_size(1 << 62)
        path = self.path_kwargs.get("path") or (self.path_args[0] if self.path_args else "")
        self._received = 0
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and self._over_file_limit(int(length)):
            return
        try:
            self._upload = await self.state.file_ops.run(self.state.workspace.begin_write, path)
        except Exception as exc:
            self._upload_error = self._error_for(exc, path)

    def _over_file_limit(self, size: int) -> bool:
        limit = self.state.max_file_bytes
        if limit and size > limit:
            self._discard_upload()
            self._upload_error = (
                413,
                "file_too_large",
                f"the file is over this pod's limit of {limit} bytes (--max-file-bytes)",
            )
            return True
        return False

    async def data_received(self, chunk: bytes) -> None:
        if self._upload is None:
            return
        self._received += len(chunk)
        if self._over_file_limit(self._received):
            return
        try:
            await self.state.file_ops.run(self._upload.file.write, chunk)
        except OSError as exc:
            self._discard_upload()
            self._upload_error = (507, "io_error", f"writing the file failed: {exc}")

    def _discard_upload(self) -> None:
        if self._upload is not None:
            self.state.file_ops.submit(self.state.workspace.abort_write, self._upload)
            self._upload = None

    def on_connection_close(self) -> None:
        self._discard_upload()

    def _error_for(self, exc: Exception, path: str) -> tuple[int, str, str]:
        if isinstance(exc, PathRefused):
            return 400, "bad_path", str(exc)
        if isinstance(exc, PathEscapes):
            return 403, "path_escapes_workspace", str(exc)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return 404, "not_found", f"no such file in the workspace: {path!r}"
        if isinstance(exc, IsADirectoryError):
            return 400, "is_a_directory", f"{path!r} is a directory"
        if isinstance(exc, OSError) and exc.errno == 40:  # ELOOP: O_NOFOLLOW met a symlink
            return 403, "path_escapes_workspace", f"{path!r} is a symlink"
        if isinstance(exc, PermissionError):
            return 403, "permission_denied", f"the kernel's user may not access {path!r}"
        return 500, "io_error", f"{type(exc).__name__}: {exc}"

    async def _run(self, func, *args):
        try:
            return True, await self.state.file_ops.run(func, *args)
        except Exception as exc:
            self.fail(*self._error_for(exc, args[0] if args else ""))
        return False, None

    async def get(self, path: str) -> None:
        ok, handle = await self._run(self.state.workspace.open_read, path)
        if not ok:
            return
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
            while chunk := await self.state.file_ops.run(handle.read, self.CHUNK):
                self.write(chunk)
                await self.flush()
        finally:
            handle.close()
        self.finish()

    async def put(self, path: str) -> None:
        if self._upload_error is not None:
            self._discard_upload()
            self.fail(*self._upload_error)
            return
        upload, self._upload = self._upload, None
        try:
            await self.state.file_ops.run(self.state.workspace.commit_write, upload)
        except OSError as exc:
            self.fail(*self._error_for(exc, path))
            return
        self.set_status(204)
        self.finish()

    async def delete(self, path: str) -> None:
        ok, _ = await self._run(self.state.workspace.delete, path)
        if ok:
            self.set_status(204)
            self.finish()


class ChannelHandler(websocket.WebSocketHandler):
    """``/channel``: JSON text frames multiplexed by request id (see runner/README.md)."""

    def initialize(self, state: RunnerState) -> None:
        self.state = state
        self._executes: dict[Any, str] = {}
        self._unsent = 0  # bytes handed to tornado and not yet written to the socket
        self._last_write: asyncio.Future | None = None

    def prepare(self) -> None:
        if not _authorized(self, self.state.token):
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"reason": "unauthorized", "message": "missing or wrong token"}))

    def check_origin(self, origin: str) -> bool:
        return True  # authenticated by bearer token, not by cookies

    def open(self) -> None:
        # Request/reply frames are small: do not let Nagle's algorithm hold them back.
        self.set_nodelay(True)
        self.state.channels.add(self)

    def on_close(self) -> None:
        self.state.channels.discard(self)

    def send(self, frame: dict[str, Any]) -> None:
        self.send_text(json.dumps(frame))

    def send_event(
        self, request_id: Any, event: str, content_json: str, extra: dict | None = None
    ) -> None:
        """Send an event frame whose content is already JSON text (measured by the budget);
        ``extra`` adds optional frame fields (``buffers``, ``parent``)."""
        tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in (extra or {}).items())
        self.send_text(
            f'{{"id": {json.dumps(request_id)}, "event": {json.dumps(event)}, '
            f'"content": {content_json}{tail}}}'
        )

    def send_text(self, text: str) -> None:
        """Queue one frame; its bytes count as unsent until tornado has written them."""
        try:
            sent = self.write_message(text)
        except websocket.WebSocketClosedError:
            return
        size = len(text)
        self._unsent += size
        self._last_write = sent
        sent.add_done_callback(lambda f: self._written(f, size))

    def _written(self, future: asyncio.Future, size: int) -> None:
        self._unsent -= size
        if not future.cancelled():
            future.exception()  # a closed socket: nothing to do, on_close cleans up

    def drained(self) -> Awaitable[None] | None:
        """``None`` while little is queued; else an awaitable that ends once everything
        queued so far is written (or the connection closed)."""
        if self._unsent <= CHANNEL_HIGH_WATER or self._last_write is None:
            return None
        return asyncio.wait([self._last_write])

    def protocol_error(self, request_id: Any, reason: str, message: str) -> None:
        content = {"reason": reason, "message": message}
        self.send({"id": request_id, "event": "protocol_error", "content": content})

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            return self.protocol_error(
                None, "binary_frame", "binary frames are not supported; send JSON text frames"
            )
        try:
            frame = json.loads(message)
        except ValueError as exc:
            return self.protocol_error(None, "bad_json", f"the frame is not valid JSON: {exc}")
        if not isinstance(frame, dict):
            return self.protocol_error(None, "bad_frame", "the frame must be a JSON object")
        request_id = frame.get("id")
        if request_id is None or not isinstance(request_id, (str, int)) or request_id == "":
            return self.protocol_error(None, "missing_id", 'every frame needs a string "id"')
        op = frame.get("op")
        content = frame.get("content", {})
        if content is None:
            content = {}
        if not isinstance(content, dict):
            return self.protocol_error(request_id, "bad_content", '"content" must be an object')
        if op == "input_reply":
            worker_id = self._executes.get(request_id)
            if worker_id is None:
                return self.protocol_error(
                    request_id, "no_pending_input", "no running execute with this id"
                )
            asyncio.ensure_future(
                self.state.worker.send_input(worker_id, str(content.get("value", "")))
            )
        elif op == "interrupt":
            # Same effect as POST /interrupt, but ordered after the frames sent before it on
            # this socket: an interrupt sent right after an execute never overtakes it.
            asyncio.ensure_future(self.state.worker.interrupt())
        elif op == "kernel_info":
            self.send(
                {
                    "id": request_id,
                    "event": "reply",
                    "msg_type": "kernel_info_reply",
                    "content": {"status": "ok", **self.state.kernel_info()},
                }
            )
        elif op == "debug_request":
            # Control channel: answered while a cell runs (stopped at a breakpoint).
            asyncio.ensure_future(self._control(request_id, op, content))
        elif op in CHANNEL_OPS:
            if op == "execute" and not isinstance(content.get("code", ""), str):
                return self.protocol_error(request_id, "bad_content", '"code" must be a string')
            header = frame.get("header")
            header = header if isinstance(header, dict) else None
            metadata = frame.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else None
            # The request reached the pod: a gateway that loses the pod after this ends
            # the request with KernelDied; before it, it re-sends the request to a new pod.
            self.send_text(f'{{"id": {json.dumps(request_id)}, "event": "ack"}}')
            asyncio.ensure_future(self._request(request_id, op, content, header, metadata))
        else:
            self.protocol_error(
                request_id,
                "unknown_op",
                f"unknown op {op!r}; known ops: {', '.join(sorted([*CHANNEL_OPS, *DIRECT_OPS]))}",
            )

    async def _control(self, request_id: Any, op: str, content: dict[str, Any]) -> None:
        """A request the worker answers at once, beside the queue (``debug_request``)."""
        try:
            reply = await self.state.worker.control(op, content)
            msg_type = reply_type(op) if op != "debug_request" else "debug_reply"
        except WorkerDied as exc:
            msg_type = "debug_reply" if op == "debug_request" else reply_type(op)
            reply = {"status": "error", "ename": "KernelDied", "evalue": str(exc), "traceback": []}
        if op == "debug_request" and reply.get("status") == "error" and "type" not in reply:
            # A DAP response, so a debugger front end can show why.
            reply = {
                "type": "response",
                "request_seq": content.get("seq", 0),
                "success": False,
                "command": content.get("command", ""),
                "message": reply.get("evalue", "the debugger is not available"),
                "body": {},
            }
        self.send({"id": request_id, "event": "reply", "msg_type": msg_type, "content": reply})

    async def _request(
        self,
        request_id: Any,
        op: str,
        content: dict[str, Any],
        header: dict | None = None,
        metadata: dict | None = None,
    ) -> None:
        worker = self.state.worker
        worker_id = worker.new_id()
        seen: dict[str, Any] = {}
        budget = self.state.new_budget()
        if op == "execute":
            self._executes[request_id] = worker_id

        def on_event(
            event: str, event_content: dict[str, Any], extra: dict | None = None
        ) -> Awaitable[None] | None:
            if event == "execute_input":
                seen["execution_count"] = event_content.get("execution_count")
                self.state.between_cells.reset()
            for name, content_json in budget.admit(event, event_content):
                self.send_event(request_id, name, content_json, extra)
            return self.drained()

        try:
            msg_type, reply = await worker.request(
                worker_id, op, content, on_event, header, metadata
            )
        except WorkerDied as exc:
            error = {"ename": "KernelDied", "evalue": str(exc), "traceback": [str(exc)]}
            self.send({"id": request_id, "event": "error", "content": error})
            msg_type, reply = reply_type(op), {"status": "error", **error}
            if op == "execute":
                reply.update(
                    execution_count=seen.get("execution_count"), payload=[], user_expressions={}
                )
        except Exception as exc:  # never leave a request without a reply
            log.exception("request %s failed", op)
            error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": []}
            msg_type, reply = reply_type(op), {"status": "error", **error}
        finally:
            if self._executes.get(request_id) == worker_id:
                del self._executes[request_id]
        frame = {"id": request_id, "event": "reply", "msg_type": msg_type, "content": reply}
        if op == "execute":
            # Lets the gateway skip syncing the workspace when the cell changed no file.
            frame["workspace"] = await self.state.file_ops.run(self.state.workspace.fingerprint)
        self.send(frame)


def make_app(state: RunnerState) -> web.Application:
    """The tornado application for one runner."""
    kwargs = {"state": state}
    return web.Application(
        [
            (r"/healthz", HealthHandler, kwargs),
            (r"/kernel_info", KernelInfoHandler, kwargs),
            (r"/interrupt", InterruptHandler, kwargs),
            (r"/env", EnvHandler, kwargs),
            (r"/state/snapshot", SnapshotHandler, kwargs),
            (r"/state/restore", RestoreHandler, kwargs),
            (r"/files/?", FilesListHandler, kwargs),
            (r"/files/(.+)", FileHandler, kwargs),
            (r"/channel", ChannelHandler, kwargs),
        ],
        websocket_max_message_size=state.max_request_bytes,
        default_handler_class=NotFoundHandler,
        default_handler_args=kwargs,
    )


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.fail(404, "not_found", f"no such endpoint: {self.request.path}")
