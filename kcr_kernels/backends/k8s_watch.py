"""One list-then-watch loop per pool, feeding a pod cache on the event loop.

The official client's watch is blocking, so each :class:`PodWatch` runs it in
its own daemon thread and hands every event to the asyncio loop with
``call_soon_threadsafe``. The loop is the classic informer pattern (written
here because the official client has no informer): list (a full snapshot and
its resourceVersion), then watch from that resourceVersion with bookmarks;
when a watch request times out, resume from the last resourceVersion seen;
when the server answers 410 Gone (history compacted), list again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("kcr_kernels.backends.kubernetes")

#: ``on_event(kind, pod_dict)`` with kind ADDED/MODIFIED/DELETED, or
#: ``on_event("SYNC", {"items": [...]})`` after every (re)list.
EventCallback = Callable[[str, dict], None]


class PodWatch:
    """Keeps ``on_event`` informed of every pod matching ``selector`` in ``namespace``.

    :meth:`start` returns once the first list has been delivered (or raises its
    error). Counters ``lists`` and ``resumes`` tell how often it relisted and
    resumed. :meth:`stop` ends the thread promptly.
    """

    def __init__(
        self,
        api: client.CoreV1Api,
        namespace: str,
        selector: str,
        on_event: EventCallback,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: int = 300,
        retry_delay: float = 1.0,
    ):
        self.api = api
        self.namespace = namespace
        self.selector = selector
        self.on_event = on_event
        self.loop = loop
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.lists = 0
        self.resumes = 0
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self._first_list: asyncio.Future | None = None

    async def start(self) -> None:
        self._first_list = self.loop.create_future()
        self._thread = threading.Thread(
            target=self._run, name=f"kcr-watch {self.selector}", daemon=True
        )
        self._thread.start()
        await self._first_list

    async def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    # -- the thread --------------------------------------------------------------------

    def _emit(self, kind: str, obj: dict) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.on_event, kind, obj)

    def _first(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self._first_list is not None and not self._first_list.done():
                if error is None:
                    self._first_list.set_result(None)
                else:
                    self._first_list.set_exception(error)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)

    def _list(self) -> str:
        pods = self.api.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _request_timeout=30
        )
        items = [self.api.api_client.sanitize_for_serialization(p) for p in pods.items]
        self.lists += 1
        self._emit("SYNC", {"items": items})
        return pods.metadata.resource_version

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                    self._first(None)
                resource_version = self._watch_from(resource_version)
                self.resumes += 1
            except ApiException as e:
                if e.status == 410:
                    log.info("watch %s expired (410 Gone): listing again", self.selector)
                    resource_version = None
                    continue
                self._failed(e)
                resource_version = None
            except Exception as e:  # connection refused, reset, timeouts
                if self._stopping.is_set():
                    break
                self._failed(e)
                resource_version = None

    def _failed(self, error: Exception) -> None:
        if self._first_list is not None and not self._first_list.done():
            self._first(error)
            self._stopping.set()
            return
        log.warning("watch %s failed (%s); retrying", self.selector, error)
        self._stopping.wait(self.retry_delay)

    def _watch_from(self, resource_version: str) -> str:
        """Stream events until the request times out; return the last resourceVersion."""
        w = watch.Watch()
        self._watch = w
        if self._stopping.is_set():
            return resource_version
        stream = w.stream(
            self.api.list_namespaced_pod,
            self.namespace,
            label_selector=self.selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.timeout,
            _request_timeout=self.timeout + 30,
        )
        for event in stream:
            if self._stopping.is_set():
                w.stop()
                break
            kind, obj = event["type"], event["raw_object"]
            if kind == "ERROR":
                raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
            resource_version = obj.get("metadata", {}).get("resourceVersion") or resource_version
            if kind != "BOOKMARK":
                self._emit(kind, obj)
        return resource_version
