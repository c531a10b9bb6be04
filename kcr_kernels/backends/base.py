"""The small async interface every pod backend implements.

A *pod* is one runner (``kcr-runner``) plus the sandboxed worker that runs user
code. Pods are created warm by the pool before any kernel needs them, leased
to exactly one kernel, and destroyed on release: a pod that has run user code
is never reused.

Backends:

* ``local`` (:mod:`kcr_kernels.backends.local`): a runner process on 127.0.0.1
  whose worker lives in a bubblewrap sandbox. The embedded default.
* ``kubernetes`` (:mod:`kcr_kernels.backends.kubernetes`): one hardened pod per
  runner, created and watched through the Kubernetes API.
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import dataclass, field


class PodStartError(RuntimeError):
    """A pod could not be created or did not become ready in time.

    The message is written for the user: it names the language, what failed
    and, where known, what to do about it.
    """


@dataclass
class Pod:
    """One runner instance, as the pool and the kernel manager see it.

    ``url`` is the runner's base URL (``http://host:port``) once the pod is
    ready, ``None`` before. ``token`` is the bearer token every runner call
    must carry. ``kernel_id`` is set while the pod is leased. ``meta`` holds
    backend-specific details (a process handle, a Kubernetes resourceVersion).
    """

    name: str
    language: str
    token: str
    url: str | None = None
    kernel_id: str | None = None
    created: float = field(default_factory=time.monotonic)
    meta: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.url is not None


class PodBackend(abc.ABC):
    """Creates, watches and destroys pods for one gateway.

    Contract:

    * :meth:`create` starts one pod for ``language`` and returns at once with
      a :class:`Pod` whose ``url`` may still be ``None``.
    * :meth:`wait_ready` returns the same pod with ``url`` set once its runner
      answers ``/healthz``, or raises :class:`PodStartError` after ``timeout``
      seconds (and deletes the pod).
    * :meth:`claim` marks a warm pod as leased to ``kernel_id``. Backends whose
      pods are shared by several gateway replicas return ``False`` when another
      replica claimed it first; the pool then takes the next warm pod.
    * :meth:`delete` destroys a pod; it is idempotent and never raises for a
      pod that is already gone.
    * :meth:`alive` is a cheap liveness check (no network round trip where the
      backend can avoid one).
    * :meth:`healthy` asks the pod's runner (``GET /healthz``) whether it and
      its worker are fine; ``False`` when it does not answer within ``timeout``.
    * :meth:`list` returns the pods this backend knows of, for reconciliation.
    * :meth:`stop_reason` says, for the user, why a pod stopped when the
      backend knows better than "it stopped" (its memory limit); ``None`` else.
    * :meth:`close` releases the backend's own resources (not the pods).

    Every method is a coroutine that never blocks the event loop.
    """

    name: str = "abstract"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backend (check prerequisites, open watches)."""

    @abc.abstractmethod
    async def create(self, language: str) -> Pod: ...

    @abc.abstractmethod
    async def wait_ready(self, pod: Pod, timeout: float) -> Pod: ...

    async def claim(self, pod: Pod, kernel_id: str) -> bool:
        pod.kernel_id = kernel_id
        return True

    @abc.abstractmethod
    async def delete(self, pod: Pod) -> None: ...

    @abc.abstractmethod
    async def alive(self, pod: Pod) -> bool: ...

    async def healthy(self, pod: Pod, timeout: float = 5.0) -> bool:
        """``True`` when the runner answers ``/healthz`` with ``status: ok``."""
        if pod.url is None:
            return False
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

        request = HTTPRequest(
            f"{pod.url}/healthz",
            headers={"Authorization": f"Bearer {pod.token}"},
            connect_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
            return json.loads(response.body).get("status") == "ok"
        except (HTTPClientError, OSError, ValueError, TimeoutError):
            return False

    @abc.abstractmethod
    async def list(self, language: str | None = None) -> list[Pod]: ...

    async def stop_reason(self, pod: Pod, timeout: float = 3.0) -> str | None:
        """Why ``pod`` stopped, in a sentence for the user, or ``None`` when not known.

        Called by the kernel manager when a pod's runner went away under a
        request; may wait up to ``timeout`` seconds for the backend to learn it.
        """
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's own resources. Pods are deleted by the pool."""
