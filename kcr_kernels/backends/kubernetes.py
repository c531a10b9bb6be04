"""The ``kubernetes`` pod backend: hardened runner pods shared by every gateway replica.

* Pods are created from :func:`~kcr_kernels.backends.k8s_pod_spec.runner_pod_manifest`
  (labels ``kcr.dev/language``, ``kcr.dev/state=warm``, the installation's
  ``pool_labels``) and deleted on release.
* One :class:`~kcr_kernels.backends.k8s_watch.PodWatch` per language keeps a
  cache of the pool's pods: readiness, IPs, claims by other replicas and pods
  deleted behind the gateway's back are seen without polling.
* Warm pods are shared: any replica may claim any warm pod. :meth:`claim`
  patches the labels (``kcr.dev/state=leased``, kernel id, owner) with the
  pod's ``resourceVersion`` as a precondition; a 409 Conflict means another
  replica won, and the pool takes the next pod.
* Pool sizes are cluster-wide: :meth:`warm_deficit` counts warm pods of every
  replica. :meth:`reap` deletes leased pods whose kernel left the registry,
  failed pods and warm pods beyond the target, so a killed replica leaks nothing.

Every Kubernetes call runs in a thread (``asyncio.to_thread``): the official
client is blocking.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable, Mapping

from kcr_runner.memory_cap import oom_message
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .base import Pod, PodBackend, PodStartError
from .cgroups import parse_memory
from .k8s_pod_spec import (
    CLAIMED_AT_ANNOTATION,
    CONTAINER_NAME,
    KERNEL_LABEL,
    LANGUAGE_LABEL,
    OWNER_LABEL,
    RUNNER_PORT_ANNOTATION,
    STATE_LABEL,
    TOKEN_ENV,
    KubernetesConfig,
    runner_pod_manifest,
)
from .k8s_watch import PodWatch, log

_MERGE_PATCH = "application/merge-patch+json"
_CLAIM_ATTEMPTS = 3


def _ready(obj: dict) -> bool:
    status = obj.get("status") or {}
    if status.get("phase") != "Running" or obj["metadata"].get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _failed(obj: dict) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _why_not_running(obj: dict) -> str:
    """A one-line reason from the container statuses (ImagePullBackOff, OOMKilled, …)."""
    status = obj.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        for state in ("waiting", "terminated"):
            detail = (cs.get("state") or {}).get(state)
            if detail:
                bits = [detail.get("reason") or state, detail.get("message") or ""]
                if "exitCode" in detail:
                    bits.append(f"exit code {detail['exitCode']}")
                return ", ".join(b for b in bits if b)
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("message"):
            return f"{cond.get('reason', '')}: {cond['message']}"
    return f"phase {status.get('phase', 'unknown')}"


def _terminations(obj: dict) -> list[dict]:
    """The ``terminated`` details of the runner container (current and last state)."""
    out = []
    for cs in (obj.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") not in (None, CONTAINER_NAME):
            continue
        for key in ("state", "lastState"):
            detail = (cs.get(key) or {}).get("terminated")
            if detail:
                out.append(detail)
    return out


def _memory_limit(obj: dict) -> int | None:
    for container in (obj.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER_NAME:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            try:
                return parse_memory(limit)
            except ValueError:
                return None
    return None


def _oom_killed(obj: dict) -> str | None:
    """The user's sentence when the runner container was ``OOMKilled``, else ``None``."""
    if any(t.get("reason") == "OOMKilled" for t in _terminations(obj)):
        return oom_message(_memory_limit(obj))
    return None


class KubernetesBackend(PodBackend):
    """Runner pods in one namespace, watched and shared by all gateway replicas.

    ``config`` is a :class:`KubernetesConfig` (or its fields as keyword
    arguments). ``api_client`` is a ready ``kubernetes.client.ApiClient``;
    without one, the in-cluster service-account config is loaded, falling
    back to ``~/.kube/config``. A pod's runner URL is
    ``http://<podIP>:<port>`` with the port from the ``kcr.dev/runner-port``
    annotation when present, else ``config.runner_port``.
    """

    name = "kubernetes"

    def __init__(
        self,
        config: KubernetesConfig | None = None,
        *,
        api_client: client.ApiClient | None = None,
        **settings,
    ):
        self.config = config or KubernetesConfig.from_dict(settings)
        self._api_client = api_client
        self.api: client.CoreV1Api | None = None
        self.watches: dict[str, PodWatch] = {}
        self._cache: dict[str, dict] = {}  # pod name -> latest manifest from the watch
        self._changed = asyncio.Event()
        self._http = AsyncHTTPClient()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open one watch per language and wait for each pool's first list."""
        if self._api_client is None:
            self._api_client = await asyncio.to_thread(self._load_client)
        self.api = client.CoreV1Api(self._api_client)
        loop = asyncio.get_running_loop()
        for language in self.config.languages:
            w = PodWatch(
                self.api,
                self.config.namespace,
                self.config.selector(language),
                lambda kind, obj, lang=language: self._on_event(lang, kind, obj),
                loop,
                timeout=self.config.watch_timeout,
            )
            try:
                await w.start()
            except Exception as e:
                await self.close()
                raise PodStartError(
                    f"cannot list runner pods in namespace {self.config.namespace!r} "
                    f"through the Kubernetes API ({e}); check the gateway's RBAC Role "
                    "(pods: create, get, list, watch, patch, delete)"
                )
            self.watches[language] = w

    @staticmethod
    def _load_client() -> client.ApiClient:
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            kube_config.load_kube_config()
        return client.ApiClient()

    async def close(self) -> None:
        watches, self.watches = list(self.watches.values()), {}
        await asyncio.gather(*(w.stop() for w in watches))

    # -- the cache (event loop only) ---------------------------------------------------

    def _on_event(self, language: str, kind: str, obj: dict) -> None:
        if kind == "SYNC":
            for name in [n for n, p in self._cache.items() if self._language(p) == language]:
                del self._cache[name]
            for item in obj["items"]:
                self._cache[item["metadata"]["name"]] = item
        elif kind == "DELETED":
            self._cache.pop(obj["metadata"]["name"], None)
        else:
            self._cache[obj["metadata"]["name"]] = obj
        self._changed.set()
        self._changed = asyncio.Event()

    @staticmethod
    def _language(obj: dict) -> str:
        return (obj["metadata"].get("labels") or {}).get(LANGUAGE_LABEL, "")

    def _to_pod(self, obj: dict, pod: Pod | None = None) -> Pod:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        if pod is None:
            token = ""
            for env in obj["spec"]["containers"][0].get("env") or []:
                if env.get("name") == TOKEN_ENV:
                    token = env.get("value", "")
            pod = Pod(name=meta["name"], language=labels.get(LANGUAGE_LABEL, ""), token=token)
        pod.kernel_id = labels.get(KERNEL_LABEL) or pod.kernel_id
        pod.meta.update(
            resourceVersion=meta.get("resourceVersion"),
            uid=meta.get("uid"),
            phase=(obj.get("status") or {}).get("phase"),
            state=labels.get(STATE_LABEL),
            owner=labels.get(OWNER_LABEL),
        )
        if _ready(obj) and pod.url is None:
            ip = obj["status"].get("podIP")
            port = (meta.get("annotations") or {}).get(RUNNER_PORT_ANNOTATION)
            pod.url = f"http://{ip}:{port or self.config.runner_port}"
        return pod

    async def _wait_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    # -- PodBackend --------------------------------------------------------------------

    async def create(self, language: str) -> Pod:
        if language not in self.config.languages:
            offered = ", ".join(sorted(self.config.languages)) or "none"
            raise PodStartError(f"no runner image configured for {language!r} (have: {offered})")
        name = f"kcr-{language}-{secrets.token_hex(5)}"
        token = secrets.token_urlsafe(32)
        manifest = runner_pod_manifest(self.config, language, name, token)
        try:
            created = await asyncio.to_thread(
                self.api.create_namespaced_pod, self.config.namespace, manifest
            )
        except ApiException as e:
            raise PodStartError(
                f"Kubernetes refused to create a {language} runner pod in namespace "
                f"{self.config.namespace!r}: {e.status} {e.reason}: {_message(e)}"
            )
        pod = Pod(name=name, language=language, token=token)
        pod.meta.update(resourceVersion=created.metadata.resource_version, uid=created.metadata.uid)
        return pod

    async def wait_ready(self, pod: Pod, timeout: float) -> Pod:
        deadline = time.monotonic() + timeout
        seen = False
        while True:
            obj = self._cache.get(pod.name)
            if obj is not None:
                seen = True
                if _failed(obj):
                    await self.delete(pod)
                    raise PodStartError(
                        f"{pod.language} runner pod {pod.name} failed to start: "
                        f"{_why_not_running(obj)}"
                    )
                self._to_pod(obj, pod)
                if pod.url is not None and await self._healthy(pod, deadline):
                    return pod
            elif seen:
                raise PodStartError(
                    f"{pod.language} runner pod {pod.name} was deleted while starting"
                )
            if time.monotonic() >= deadline:
                why = _why_not_running(obj) if obj else "never seen by the watch"
                await self.delete(pod)
                raise PodStartError(
                    f"{pod.language} runner pod {pod.name} was not ready after {timeout:.0f} s "
                    f"({why}); check the image, resources and node capacity "
                    f"(kubectl -n {self.config.namespace} describe pod {pod.name})"
                )
            await self._wait_change(min(deadline, time.monotonic() + 0.5))

    async def _healthy(self, pod: Pod, deadline: float) -> bool:
        request = HTTPRequest(
            f"{pod.url}/healthz",
            headers={"Authorization": f"Bearer {pod.token}"},
            request_timeout=max(0.5, min(5.0, deadline - time.monotonic())),
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError):
            return False
        return response.code == 200

    async def claim(self, pod: Pod, kernel_id: str) -> bool:
        """Lease a warm pod to ``kernel_id``; False when another replica got it first."""
        fresh_rv: str | None = None
        for _ in range(_CLAIM_ATTEMPTS):
            obj = self._cache.get(pod.name)
            if fresh_rv is not None:
                rv = fresh_rv
            elif obj is not None:
                if self._state(obj) != "warm":
                    return False
                rv = obj["metadata"]["resourceVersion"]
            else:
                rv = pod.meta.get("resourceVersion")
            patch = {
                "metadata": {
                    "resourceVersion": rv,
                    "labels": {
                        STATE_LABEL: "leased",
                        KERNEL_LABEL: kernel_id,
                        OWNER_LABEL: self.config.owner,
                    },
                    "annotations": {CLAIMED_AT_ANNOTATION: str(int(time.time()))},
                }
            }
            try:
                updated = await asyncio.to_thread(
                    self.api.patch_namespaced_pod,
                    pod.name,
                    self.config.namespace,
                    patch,
                    _content_type=_MERGE_PATCH,
                )
            except ApiException as e:
                if e.status == 404:
                    return False
                if e.status != 409:
                    raise
                # Changed since we looked: claimed by another replica, or only a status update.
                try:
                    fresh = await asyncio.to_thread(
                        self.api.read_namespaced_pod, pod.name, self.config.namespace
                    )
                except ApiException:
                    return False
                fresh_obj = self.api.api_client.sanitize_for_serialization(fresh)
                if self._state(fresh_obj) != "warm" or fresh_obj["metadata"].get(
                    "deletionTimestamp"
                ):
                    return False
                fresh_rv = fresh_obj["metadata"]["resourceVersion"]
                continue
            obj = self.api.api_client.sanitize_for_serialization(updated)
            self._to_pod(obj, pod)
            pod.kernel_id = kernel_id
            return True
        return False

    @staticmethod
    def _state(obj: dict) -> str:
        return (obj["metadata"].get("labels") or {}).get(STATE_LABEL, "")

    async def delete(self, pod: Pod) -> None:
        pod.meta["deleted"] = True  # not alive from now on, before the watch reports it
        await self._delete_name(pod.name)

    async def _delete_name(self, name: str, resource_version: str | None = None) -> bool:
        body = client.V1DeleteOptions(grace_period_seconds=0)
        if resource_version is not None:
            body.preconditions = client.V1Preconditions(resource_version=resource_version)
        try:
            await asyncio.to_thread(
                self.api.delete_namespaced_pod, name, self.config.namespace, body=body
            )
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    async def alive(self, pod: Pod) -> bool:
        if pod.meta.get("deleted"):
            return False
        obj = self._cache.get(pod.name)
        return obj is not None and not _failed(obj) and not obj["metadata"].get("deletionTimestamp")

    async def list(self, language: str | None = None) -> list[Pod]:
        return [
            self._to_pod(obj)
            for obj in self._cache.values()
            if language is None or self._language(obj) == language
        ]

    async def stop_reason(self, pod: Pod, timeout: float = 3.0) -> str | None:
        """ "The kernel used more than N of memory and was stopped" for an ``OOMKilled`` pod.

        The runner's socket usually drops before the kubelet's status update reaches
        the watch: waits up to ``timeout`` seconds for the container's termination
        (the kernel manager deletes a lost pod only after this returns). ``None`` at
        once for a pod already gone from the watch (deleted behind the gateway's back).
        """
        deadline = time.monotonic() + timeout
        while True:
            obj = self._cache.get(pod.name)
            if obj is None:  # deleted by someone else: no status to learn from
                return None
            why = _oom_killed(obj)
            if why is not None or _terminations(obj):
                return why
            if time.monotonic() >= deadline:
                return None
            await self._wait_change(deadline)

    # -- shared pools ------------------------------------------------------------------

    async def warm_pods(self, language: str) -> list[Pod]:
        """Ready, unclaimed pods of ``language`` created by any replica (oldest first)."""
        objs = [
            o
            for o in self._cache.values()
            if self._language(o) == language and self._state(o) == "warm" and _ready(o)
        ]
        objs.sort(
            key=lambda o: (o["metadata"].get("creationTimestamp") or "", o["metadata"]["name"])
        )
        return [self._to_pod(o) for o in objs]

    def counts(self, language: str) -> dict[str, int]:
        """Cluster-wide pod counts of one pool: warm ready, warm starting, leased."""
        out = {"warm": 0, "starting": 0, "leased": 0}
        for o in self._cache.values():
            if (
                self._language(o) != language
                or _failed(o)
                or o["metadata"].get("deletionTimestamp")
            ):
                continue
            if self._state(o) == "leased":
                out["leased"] += 1
            else:
                out["warm" if _ready(o) else "starting"] += 1
        return out

    def warm_deficit(self, language: str, target: int, maximum: int | None = None) -> int:
        """How many pods this replica should create so the cluster has ``target`` warm pods.

        Counts the warm and starting pods of every replica, and never lets the
        pool exceed ``maximum`` pods in total.
        """
        c = self.counts(language)
        missing = max(0, target - c["warm"] - c["starting"])
        if maximum is not None:
            missing = min(missing, max(0, maximum - sum(c.values())))
        return missing

    async def pod_for_kernel(self, kernel_id: str) -> Pod | None:
        """The live pod leased to ``kernel_id`` by any replica, or None."""
        for obj in self._cache.values():
            labels = obj["metadata"].get("labels") or {}
            if labels.get(KERNEL_LABEL) == kernel_id and not _failed(obj):
                return self._to_pod(obj)
        return None

    async def reap(
        self,
        live_kernel_ids: Iterable[str],
        warm_targets: Mapping[str, int],
        *,
        grace: float | None = None,
    ) -> list[str]:
        """Delete what no replica should keep; return the names deleted.

        * leased pods whose kernel is not in ``live_kernel_ids`` (claimed more
          than ``grace`` seconds ago, so a claim is not reaped before its kernel
          reaches the registry);
        * failed pods, and pods still not ready ``2 * start_timeout`` after creation;
        * warm pods beyond ``warm_targets[language]`` — the same pods (by name)
          on every replica, each deleted only if unchanged since seen, so a
          concurrent claim wins over the reaper.
        """
        grace = self.config.reap_grace if grace is None else grace
        live = set(live_kernel_ids)
        now = time.time()
        doomed: list[tuple[str, str | None]] = []
        warm_by_language: dict[str, list[dict]] = {}
        for obj in list(self._cache.values()):
            meta = obj["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            labels = meta.get("labels") or {}
            if _failed(obj):
                doomed.append((meta["name"], None))
            elif self._state(obj) == "leased":
                claimed = float((meta.get("annotations") or {}).get(CLAIMED_AT_ANNOTATION, 0))
                if labels.get(KERNEL_LABEL) not in live and now - claimed > grace:
                    doomed.append((meta["name"], meta["resourceVersion"]))
            elif not _ready(obj):
                created = _epoch(meta.get("creationTimestamp"))
                if created and now - created > 2 * self.config.start_timeout:
                    doomed.append((meta["name"], meta["resourceVersion"]))
            else:
                warm_by_language.setdefault(self._language(obj), []).append(obj)
        for language, objs in warm_by_language.items():
            extra = len(objs) - warm_targets.get(language, 0)
            if extra > 0:
                objs.sort(key=lambda o: o["metadata"]["name"])
                doomed += [
                    (o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in objs[-extra:]
                ]
        deleted = []
        for name, rv in doomed:
            if await self._delete_name(name, rv):
                log.info("reaped runner pod %s", name)
                deleted.append(name)
        return deleted


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    import datetime

    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _message(e: ApiException) -> str:
    import json

    try:
        return json.loads(e.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(e.body or "")
