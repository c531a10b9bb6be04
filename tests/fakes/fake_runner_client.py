"""FakeRunnerClient: a RunnerClient double that runs cells in this process, for fast tests.

It implements the :class:`~kcr_kernels.runner_client.RunnerClient` interface the
gateway uses (channel requests, ``send``, ``kernel_info``, ``set_env``, the
``/state/snapshot`` and ``/state/restore`` calls) over a plain dict namespace:
a cell is ``eval``'d (its value is the ``execute_result``) or ``exec``'d, and
the snapshot is a pickle of that dict. It reuses the real client's pending-
request bookkeeping, so losing the channel behaves as in production: pending
requests fail with ``RunnerGone`` and ``on_lost`` is called once.

Test knobs:

* a cell whose code is ``BLOCK`` never finishes on its own (an interrupt
  ends it with ``KeyboardInterrupt``; losing the pod ends it with ``RunnerGone``);
* :meth:`die` is the pod dying under the kernel;
* ``acks = False``: requests are sent but never reach the fake pod (no ``ack``,
  nothing runs), as for a request in flight at the instant the pod dies; losing
  the pod then fails them with ``NotDelivered``.

Use it through ``KCRKernelManager(runner_factory=FakeRunnerClient.for_pod)``;
:data:`FakeRunnerClient.made` lists every client made, newest last.
"""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace

from kcr_kernels.runner_client import RunnerClient, RunnerGone, _Pending

KERNEL_INFO = {
    "language_info": {"name": "python", "version": "3", "file_extension": ".py"},
    "implementation": "fake",
    "implementation_version": "0",
    "banner": "fake runner",
    "help_links": [],
}


class FakeRunnerClient(RunnerClient):
    """See the module docstring."""

    made: list[FakeRunnerClient] = []

    @classmethod
    def for_pod(cls, pod) -> FakeRunnerClient:
        client = cls(pod.url or f"http://fake/{pod.name}", pod.token)
        client.pod = pod
        cls.made.append(client)
        return client

    def __init__(self, url: str, token: str, **kw):
        super().__init__(url, token, **kw)
        self.namespace: dict = {}
        self.env: dict[str, str] = {}
        self.execution_count = 0
        self.blocked: str | None = None  # request id of a BLOCK cell
        self.acks = True  # False: requests never reach the fake pod
        self.unreached: list[str] = []  # codes of requests that never reached it
        self._tasks: set[asyncio.Task] = set()

    # -- channel --------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        if self.lost:
            raise RunnerGone("the fake pod is dead")
        self._ws = SimpleNamespace()  # "connected"

    def die(self, why: str = "the fake pod died") -> None:
        """The pod died: every pending request fails, ``on_lost`` is called."""
        self._channel_lost(why)

    def close(self) -> None:
        self._closing = True
        self._channel_lost("the channel was closed by the gateway")
        for task in self._tasks:
            task.cancel()

    def start_request(self, op: str, content: dict, on_event=None, header=None, metadata=None):
        if self._ws is None or self.lost:
            raise RunnerGone("the runner channel is closed")
        request_id = str(next(self._ids))
        pending = self._pending[request_id] = _Pending(on_event)
        pending.future.add_done_callback(lambda _f: self._pending.pop(request_id, None))
        task = asyncio.get_running_loop().create_task(self._run(request_id, op, content))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return request_id, pending.future

    async def request(
        self, op: str, content: dict, on_event=None, header=None, metadata=None
    ) -> dict:
        _request_id, future = self.start_request(op, content, on_event)
        return await future

    async def send(self, op: str, content: dict, request_id: str | None = None) -> None:
        if self._ws is None or self.lost:
            raise RunnerGone("the runner channel is closed")
        if op == "interrupt" and self.blocked is not None:
            self._reply(self.blocked, "execute_reply", _error("KeyboardInterrupt", ""))
            self.blocked = None

    def _event(self, request_id: str, event: str, content: dict) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and pending.on_event is not None:
            pending.on_event(event, content)

    def _reply(self, request_id: str, msg_type: str, content: dict) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and not pending.future.done():
            frame = {"id": request_id, "event": "reply", "msg_type": msg_type, "content": content}
            pending.future.set_result(frame)

    async def _run(self, request_id: str, op: str, content: dict) -> None:
        await asyncio.sleep(0)
        pending = self._pending.get(request_id)
        if not self.acks:
            self.unreached.append(content.get("code", op))
            return
        if pending is not None:
            pending.acked = True  # the runner's "ack"
        if op != "execute":
            self._reply(request_id, f"{op}_reply", {"status": "ok"})
            return
        self.execution_count += 1
        count = self.execution_count
        code = content.get("code", "")
        self._event(request_id, "execute_input", {"code": code, "execution_count": count})
        if code == "BLOCK":
            self.blocked = request_id
            return
        try:
            try:
                value = eval(code, self.namespace)  # test-controlled code
            except SyntaxError:
                exec(code, self.namespace)
                value = None
        except Exception as e:
            error = _error(type(e).__name__, str(e))
            self._event(
                request_id, "error", {k: error[k] for k in ("ename", "evalue", "traceback")}
            )
            self._reply(request_id, "execute_reply", {**error, "execution_count": count})
            return
        if value is not None:
            data = {"data": {"text/plain": repr(value)}, "metadata": {}, "execution_count": count}
            self._event(request_id, "execute_result", data)
        self._reply(request_id, "execute_reply", {"status": "ok", "execution_count": count})

    # -- HTTP -----------------------------------------------------------------

    def _check(self, what: str) -> None:
        if self.lost:
            raise RunnerGone(f"fake runner unreachable on {what}")

    async def kernel_info(self) -> dict:
        self._check("kernel_info")
        return dict(KERNEL_INFO)

    async def set_env(self, env: dict[str, str]) -> None:
        self._check("set_env")
        self.env.update(env)

    async def interrupt(self) -> None:
        await self.send("interrupt", {})

    async def call(self, method: str, path: str, body: bytes | None = None, **_kw):
        self._check(f"{method} {path}")
        if (method, path) != ("POST", "/state/snapshot"):
            raise NotImplementedError(f"FakeRunnerClient: {method} {path}")
        names = sorted(k for k in self.namespace if not k.startswith("__"))
        blob = pickle.dumps({k: self.namespace[k] for k in names})
        headers = {"X-KCR-State-Names": _json(names), "X-KCR-State-Errors": "[]"}
        return SimpleNamespace(body=blob, headers=headers)

    async def call_json_body(self, method: str, path: str, body: bytes, **_kw):
        self._check(f"{method} {path}")
        if (method, path) != ("POST", "/state/restore"):
            raise NotImplementedError(f"FakeRunnerClient: {method} {path}")
        values = pickle.loads(body)  # our own blob
        self.namespace.update(values)
        return {"restored": sorted(values), "errors": []}


def _error(ename: str, evalue: str) -> dict:
    return {
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [f"{ename}: {evalue}"],
    }


def _json(value) -> str:
    import json

    return json.dumps(value)
