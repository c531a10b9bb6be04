"""FakeKubeApiServer: an API-server double serving core/v1 pods over real HTTP.

It speaks the REST paths and payloads the official ``kubernetes`` client uses,
so code under test is configured with ``Configuration(host=server.url)`` and
cannot tell it from a real API server, for the subset it implements:

* ``POST   /api/v1/namespaces/{ns}/pods`` (``metadata.generateName`` honoured; 409 AlreadyExists)
* ``GET    /api/v1/namespaces/{ns}/pods/{name}`` (404 NotFound)
* ``GET    /api/v1/namespaces/{ns}/pods?labelSelector=…`` (PodList with the list resourceVersion)
* ``GET    /api/v1/namespaces/{ns}/pods?watch=1&resourceVersion=…`` — a chunked stream of
  JSON lines: ADDED/MODIFIED/DELETED (objects entering/leaving the label selector
  become ADDED/DELETED, as on a real server), BOOKMARK when ``allowWatchBookmarks``,
  and a single ``ERROR`` event with a 410 ``Expired`` Status when the
  resourceVersion is older than the compacted history. ``timeoutSeconds`` ends it.
* ``PATCH  /api/v1/namespaces/{ns}/pods/{name}`` (merge / strategic-merge patch; a
  ``metadata.resourceVersion`` in the patch is a precondition: 409 Conflict on mismatch)
* ``DELETE /api/v1/namespaces/{ns}/pods/{name}`` (immediate; ``preconditions`` honoured)

Test controls: :meth:`expire_watches` (compact history and drop open watches, as
etcd compaction does), :meth:`update_pod` (what a kubelet or controller would
write), :meth:`subscribe` (in-process observers such as :class:`FakeKubelet`),
and :attr:`requests` (a log of ``(method, path, query)``).

It is deliberately not a full API server: no authentication, admission,
defaulting, status subresource or graceful deletion.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable

import tornado.httpserver
import tornado.netutil
import tornado.web

PodKey = tuple[str, str]
_DEFAULT_BOOKMARK_INTERVAL = 1.0


class LabelSelector:
    """A parsed Kubernetes label selector (equality and set-based requirements)."""

    _SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")

    def __init__(self, text: str | None):
        self.requirements: list[tuple[str, str, set[str]]] = []
        for part in _split_selector(text or ""):
            part = part.strip()
            if not part:
                continue
            if m := self._SET.match(part):
                values = {v.strip() for v in m.group(3).split(",") if v.strip()}
                self.requirements.append((m.group(1), m.group(2), values))
            elif "!=" in part:
                key, value = part.split("!=", 1)
                self.requirements.append((key.strip(), "notin", {value.strip()}))
            elif "=" in part:
                key, value = part.replace("==", "=").split("=", 1)
                self.requirements.append((key.strip(), "in", {value.strip()}))
            elif part.startswith("!"):
                self.requirements.append((part[1:].strip(), "!exists", set()))
            else:
                self.requirements.append((part, "exists", set()))

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        for key, op, values in self.requirements:
            present = key in labels
            if op == "in" and not (present and labels[key] in values):
                return False
            if op == "notin" and present and labels[key] in values:
                return False
            if op == "exists" and not present:
                return False
            if op == "!exists" and present:
                return False
        return True


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside ``( … )``."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (also what strategic merge does for metadata maps)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_body(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.body = status_body(code, reason, message)


class _Watcher:
    def __init__(self, namespace: str, selector: LabelSelector, loop, queue):
        self.namespace = namespace
        self.selector = selector
        self.loop = loop
        self.queue: asyncio.Queue = queue


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubeApiServer:
    """An in-memory pod store behind real Kubernetes REST paths on 127.0.0.1.

    Thread-safe: the HTTP server runs on its own thread and event loop; test
    code and :class:`FakeKubelet` call the control methods from any thread.
    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, *, bookmark_interval: float = _DEFAULT_BOOKMARK_INTERVAL):
        self.bookmark_interval = bookmark_interval
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.RLock()
        self._pods: dict[PodKey, dict] = {}
        self._rv = 1
        # (rv, namespace, type, old object or None, new object)
        self._history: list[tuple[int, str, str, dict | None, dict]] = []
        self._compacted_rv = 0
        self._watchers: set[_Watcher] = set()
        self._subscribers: list[Callable[[str, dict], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self):
        """A ``kubernetes.client.Configuration`` pointing at this server."""
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        return config

    def start(self) -> FakeKubeApiServer:
        ready = threading.Event()
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            app = tornado.web.Application(
                [
                    (r"/api/v1/namespaces/([^/]+)/pods", _PodsHandler, {"api": self}),
                    (r"/api/v1/namespaces/([^/]+)/pods/([^/]+)", _PodHandler, {"api": self}),
                ],
                log_function=lambda handler: None,
            )
            self._server = tornado.httpserver.HTTPServer(app)
            self._server.add_sockets(sockets)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="FakeKubeApiServer", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            self._server.stop()
            with self._lock:
                watchers = list(self._watchers)
            for w in watchers:
                w.queue.put_nowait(None)
            await asyncio.sleep(0)
            await self._server.close_all_connections()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeKubeApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------

    def subscribe(self, callback: Callable[[str, dict], None]) -> None:
        """Call ``callback(event_type, pod)`` for every change (under the store lock: be quick)."""
        with self._lock:
            self._subscribers.append(callback)

    def pods(self, namespace: str | None = None) -> list[dict]:
        with self._lock:
            return [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self._pods.items())
                if namespace is None or ns == namespace
            ]

    def get(self, namespace: str, name: str) -> dict | None:
        with self._lock:
            pod = self._pods.get((namespace, name))
            return copy.deepcopy(pod) if pod else None

    def update_pod(self, namespace: str, name: str, mutate: Callable[[dict], None]) -> bool:
        """Apply ``mutate(pod)`` as one write (new resourceVersion, MODIFIED event).

        Returns False when the pod does not exist (any more).
        """
        with self._lock:
            old = self._pods.get((namespace, name))
            if old is None:
                return False
            new = copy.deepcopy(old)
            mutate(new)
            self._write(namespace, "MODIFIED", old, new)
            return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod behind every client's back (as ``kubectl delete`` would)."""
        with self._lock:
            try:
                self._delete(namespace, name, None)
            except _ApiError:
                return False
            return True

    def expire_watches(self) -> None:
        """Compact the event history and end every open watch.

        Clients that resume from a resourceVersion they saw before this call get
        a 410 Expired error event and must list again.
        """
        with self._lock:
            self._rv += 1
            self._compacted_rv = self._rv
            self._history.clear()
            watchers = list(self._watchers)
        for w in watchers:
            w.loop.call_soon_threadsafe(w.queue.put_nowait, None)

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    # -- store (called with the lock held) ---------------------------------------------

    def _write(self, namespace: str, kind: str, old: dict | None, new: dict) -> dict:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            self._pods.pop((namespace, new["metadata"]["name"]), None)
        else:
            self._pods[(namespace, new["metadata"]["name"])] = new
        self._history.append((self._rv, namespace, kind, old, new))
        for w in self._watchers:
            event = _event_for(w, namespace, kind, old, new)
            if event is not None:
                w.loop.call_soon_threadsafe(w.queue.put_nowait, event)
        for callback in self._subscribers:
            callback(kind, copy.deepcopy(new))
        return copy.deepcopy(new)

    def _create(self, namespace: str, body: dict) -> dict:
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _ApiError(422, "Invalid", "Pod is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta["name"]
        if not body.get("spec", {}).get("containers"):
            raise _ApiError(
                422, "Invalid", f'Pod "{name}" is invalid: spec.containers: Required value'
            )
        if (namespace, name) in self._pods:
            raise _ApiError(409, "AlreadyExists", f'pods "{name}" already exists')
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        meta.pop("resourceVersion", None)
        body.update(apiVersion="v1", kind="Pod")
        body["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        return self._write(namespace, "ADDED", None, body)

    def _patch(self, namespace: str, name: str, patch: dict) -> dict:
        old = self._pods.get((namespace, name))
        if old is None:
            raise _ApiError(404, "NotFound", f'pods "{name}" not found')
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != old["metadata"]["resourceVersion"]:
            raise _ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        patch = copy.deepcopy(patch)
        patch.get("metadata", {}).pop("resourceVersion", None)
        new = merge_patch(old, patch)
        for field in ("name", "namespace", "uid", "creationTimestamp"):
            new["metadata"][field] = old["metadata"][field]
        if new.get("spec") != old.get("spec"):
            raise _ApiError(
                422,
                "Invalid",
                f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not '
                "change fields other than image, activeDeadlineSeconds, tolerations",
            )
        return self._write(namespace, "MODIFIED", old, new)

    def _delete(self, namespace: str, name: str, preconditions: dict | None) -> dict:
        old = self._pods.get((namespace, name))
        if old is None:
            raise _ApiError(404, "NotFound", f'pods "{name}" not found')
        for field in ("resourceVersion", "uid"):
            wanted = (preconditions or {}).get(field)
            if wanted is not None and wanted != old["metadata"][field]:
                raise _ApiError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on Pod {name}: Precondition failed: "
                    f"{field}: {wanted}, object {field}: {old['metadata'][field]}",
                )
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        return self._write(namespace, "DELETED", old, new)


def _event_for(
    watcher: _Watcher, namespace: str, kind: str, old: dict | None, new: dict
) -> dict | None:
    """The event a label-selector watch sees for one change (or None)."""
    if namespace != watcher.namespace:
        return None
    now_matches = watcher.selector.matches(new["metadata"].get("labels"))
    before = old is not None and watcher.selector.matches(old["metadata"].get("labels"))
    if kind == "MODIFIED":
        if before and not now_matches:
            kind = "DELETED"
        elif now_matches and not before:
            kind = "ADDED"
        elif not now_matches:
            return None
    elif kind == "DELETED" and not before:
        return None
    elif kind == "ADDED" and not now_matches:
        return None
    return {"type": kind, "object": copy.deepcopy(new)}


class _Base(tornado.web.RequestHandler):
    def initialize(self, api: FakeKubeApiServer) -> None:
        self.api = api

    def prepare(self) -> None:
        query = {k: v[-1].decode() for k, v in self.request.query_arguments.items()}
        self.query = query
        with self.api._lock:
            self.api.requests.append((self.request.method, self.request.path, query))

    def send(self, code: int, body: dict) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def body_json(self) -> dict:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise _ApiError(400, "BadRequest", f"invalid JSON body: {e}")

    def run(self, fn, *args) -> None:
        try:
            with self.api._lock:
                result = fn(*args)
        except _ApiError as e:
            self.send(e.body["code"], e.body)
            return
        self.send(201 if fn == self.api._create else 200, result)


class _PodsHandler(_Base):
    def post(self, namespace: str) -> None:
        try:
            body = self.body_json()
        except _ApiError as e:
            return self.send(e.body["code"], e.body)
        self.run(self.api._create, namespace, body)

    async def get(self, namespace: str) -> None:
        if self.query.get("fieldSelector"):
            body = status_body(400, "BadRequest", "fieldSelector is not supported by the double")
            return self.send(400, body)
        selector = LabelSelector(self.query.get("labelSelector"))
        if self.query.get("watch") in ("1", "true", "True"):
            return await self._watch(namespace, selector)
        with self.api._lock:
            items = [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self.api._pods.items())
                if ns == namespace and selector.matches(p["metadata"].get("labels"))
            ]
            rv = str(self.api._rv)
        self.send(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            },
        )

    async def _watch(self, namespace: str, selector: LabelSelector) -> None:
        api = self.api
        loop = asyncio.get_running_loop()
        timeout = float(self.query.get("timeoutSeconds") or 1800)
        bookmarks = self.query.get("allowWatchBookmarks") in ("true", "1", "True")
        since = self.query.get("resourceVersion") or ""
        queue: asyncio.Queue = asyncio.Queue()
        watcher = _Watcher(namespace, selector, loop, queue)
        self.set_header("Content-Type", "application/json")
        self.set_header("Transfer-Encoding", "chunked")
        with api._lock:
            if since not in ("", "0") and int(since) < api._compacted_rv:
                expired = status_body(
                    410, "Expired", f"too old resource version: {since} ({api._compacted_rv})"
                )
                initial, gone = [{"type": "ERROR", "object": expired}], True
            elif since in ("", "0"):
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(p)}
                    for (ns, _), p in sorted(api._pods.items())
                    if ns == namespace and selector.matches(p["metadata"].get("labels"))
                ]
                gone = False
            else:
                initial = []
                for rv, ns, kind, old, new in api._history:
                    if rv > int(since):
                        event = _event_for(watcher, ns, kind, old, new)
                        if event is not None:
                            initial.append(event)
                gone = False
            if not gone:
                api._watchers.add(watcher)
        try:
            for event in initial:
                self.write(json.dumps(event) + "\n")
            await self.flush()
            if gone:
                return
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wait = min(remaining, api.bookmark_interval) if bookmarks else remaining
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        with api._lock:
                            rv = str(api._rv)
                        event = {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Pod",
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": rv},
                            },
                        }
                    else:
                        continue
                if event is None:  # expired or server stopping
                    break
                self.write(json.dumps(event) + "\n")
                await self.flush()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            with api._lock:
                api._watchers.discard(watcher)
        if not self._finished:
            self.finish()


class _PodHandler(_Base):
    def get(self, namespace: str, name: str) -> None:
        pod = self.api.get(namespace, name)
        if pod is None:
            return self.send(404, status_body(404, "NotFound", f'pods "{name}" not found'))
        self.send(200, pod)

    def patch(self, namespace: str, name: str) -> None:
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            body = status_body(
                415, "UnsupportedMediaType", f"the double does not support {content_type}"
            )
            return self.send(415, body)
        try:
            patch = self.body_json()
        except _ApiError as e:
            return self.send(e.body["code"], e.body)
        self.run(self.api._patch, namespace, name, patch)

    def delete(self, namespace: str, name: str) -> None:
        try:
            body = self.body_json()
        except _ApiError as e:
            return self.send(e.body["code"], e.body)
        self.run(self.api._delete, namespace, name, body.get("preconditions"))
