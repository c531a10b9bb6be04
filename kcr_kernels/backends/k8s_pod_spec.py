"""Configuration and hardened pod manifests for the Kubernetes backend.

:class:`KubernetesConfig` is what the Helm chart writes into ``kcr.json``
(key ``kubernetes``); :func:`runner_pod_manifest` turns it into one runner
pod. The hardening is applied *after* an optional template file is merged, so
a template can add (priority classes, affinity, annotations) but cannot weaken
the security context.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

#: Labels and annotations the backend reads and writes on runner pods.
NAME_LABEL = "app.kubernetes.io/name"
RUNNER_NAME = "kcr-runner"
LANGUAGE_LABEL = "kcr.dev/language"
STATE_LABEL = "kcr.dev/state"  # warm | leased
KERNEL_LABEL = "kcr.dev/kernel-id"
OWNER_LABEL = "kcr.dev/owner"  # the replica that leased the pod
CLAIMED_AT_ANNOTATION = "kcr.dev/claimed-at"  # epoch seconds of the claim
CREATED_BY_ANNOTATION = "kcr.dev/created-by"
RUNNER_PORT_ANNOTATION = "kcr.dev/runner-port"  # overrides the container port when set
CONTAINER_NAME = "runner"
TOKEN_ENV = "KCR_RUNNER_TOKEN"
WORKSPACE = "/workspace"
#: The workspace's second name, for code-interpreter clients (LibreChat writes /mnt/data).
WORKSPACE_ALIAS = "/mnt/data"


def _default_owner() -> str:
    return os.environ.get("KCR_REPLICA_ID") or socket.gethostname()


@dataclass
class LanguageSpec:
    """Image and resources of one language's runner pods.

    ``memory`` (a quantity such as ``"2Gi"``; the gateway fills it from the pools'
    ``memory`` setting) is the pod's memory cap: it replaces ``resources.limits.memory``
    (and lowers ``requests.memory`` to it when the request was larger). A pod over it is
    ``OOMKilled`` by the kubelet, and the user's cell says "the kernel used more than N
    of memory and was stopped".
    """

    image: str
    memory: str = ""
    resources: dict = field(
        default_factory=lambda: {
            "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
            "limits": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "2Gi"},
        }
    )


@dataclass
class KubernetesConfig:
    """Everything the Kubernetes backend needs besides a client.

    ``pool_labels`` identify this installation's pods (the chart sets
    ``app.kubernetes.io/instance``); every replica of one installation must use
    the same ones, as they select the shared pool. ``owner`` names this
    replica on the pods it leases. ``watch_timeout`` is the server-side
    timeout of one watch request (it is resumed from the last resourceVersion).
    ``reap_grace`` is how long a fresh claim is safe from the reaper (until its
    kernel reaches the registry); ``reap_interval`` the seconds between the
    gateway's reaper passes. ``api_server`` (e.g. ``http://127.0.0.1:8001``
    for ``kubectl proxy``) makes ``kcr-gateway`` talk to that URL without
    credentials instead of loading the in-cluster or kubeconfig settings.
    """

    namespace: str = "default"
    languages: dict[str, LanguageSpec] = field(default_factory=dict)
    runner_port: int = 8080
    run_as_user: int = 1000
    workspace_size_limit: str = "1Gi"
    tmp_size_limit: str = "256Mi"
    runtime_class_name: str = ""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    image_pull_secrets: list[dict] = field(default_factory=list)
    pod_template_file: str = ""
    pool_labels: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    owner: str = field(default_factory=_default_owner)
    watch_timeout: int = 300
    reap_grace: float = 60.0
    reap_interval: float = 30.0
    api_server: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> KubernetesConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Kubernetes backend settings: {', '.join(sorted(unknown))}")
        data = dict(data)
        languages = {}
        for name, spec in (data.pop("languages", None) or {}).items():
            if isinstance(spec, str):
                spec = {"image": spec}
            languages[name] = LanguageSpec(**spec)
        return cls(languages=languages, **data)

    @classmethod
    def from_file(cls, path: str | Path) -> KubernetesConfig:
        """Read the ``kubernetes`` section of the chart's ``kcr.json``."""
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("kubernetes", data))

    def selector(self, language: str | None = None) -> str:
        """The label selector of this installation's runner pods (one language or all)."""
        labels = {NAME_LABEL: RUNNER_NAME, **self.pool_labels}
        if language is not None:
            labels[LANGUAGE_LABEL] = language
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def runner_pod_manifest(config: KubernetesConfig, language: str, name: str, token: str) -> dict:
    """The manifest of one warm runner pod for ``language``.

    Hardened whatever the template says: non-root uid, read-only root
    filesystem, every capability dropped, no privilege escalation, seccomp
    RuntimeDefault, no service-account token, no service links; writable
    ``/workspace`` and ``/tmp`` are size-limited emptyDirs.
    """
    try:
        spec = config.languages[language]
    except KeyError:
        offered = ", ".join(sorted(config.languages)) or "none"
        raise ValueError(f"no runner image configured for language {language!r} (have: {offered})")
    pod = _template(config.pod_template_file)
    meta = pod.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta["name"] = name
    meta["labels"] = {
        **(meta.get("labels") or {}),
        **config.pool_labels,
        NAME_LABEL: RUNNER_NAME,
        "app.kubernetes.io/component": "runner",
        "app.kubernetes.io/managed-by": "kcr-gateway",
        LANGUAGE_LABEL: language,
        STATE_LABEL: "warm",
    }
    meta["annotations"] = {**(meta.get("annotations") or {}), CREATED_BY_ANNOTATION: config.owner}
    pod_spec = pod.setdefault("spec", {})
    containers = pod_spec.get("containers") or [{}]
    container = containers[0]
    container.update(
        name=CONTAINER_NAME,
        image=spec.image,
        args=[
            "--host",
            "0.0.0.0",
            "--port",
            str(config.runner_port),
            "--workspace",
            WORKSPACE,
            "--language",
            language,
        ],
        ports=[{"name": "runner", "containerPort": config.runner_port, "protocol": "TCP"}],
        resources=_resources(spec),
        # Readiness by TCP: the runner's HTTP endpoints need the per-pod token.
        readinessProbe={"tcpSocket": {"port": "runner"}, "periodSeconds": 1},
        securityContext={
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    env = [e for e in container.get("env") or [] if e.get("name") != TOKEN_ENV]
    container["env"] = [*env, {"name": TOKEN_ENV, "value": token}]
    mounts = [
        m for m in container.get("volumeMounts") or [] if m["name"] not in ("workspace", "tmp")
    ]
    container["volumeMounts"] = [
        *mounts,
        {"name": "workspace", "mountPath": WORKSPACE},
        # The same folder under the name code-interpreter clients use (/v1/exec).
        {"name": "workspace", "mountPath": WORKSPACE_ALIAS},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes = [v for v in pod_spec.get("volumes") or [] if v["name"] not in ("workspace", "tmp")]
    pod_spec.update(
        containers=[container, *containers[1:]],
        volumes=[
            *volumes,
            {"name": "workspace", "emptyDir": {"sizeLimit": config.workspace_size_limit}},
            {"name": "tmp", "emptyDir": {"sizeLimit": config.tmp_size_limit}},
        ],
        restartPolicy="Never",
        automountServiceAccountToken=False,
        enableServiceLinks=False,
        hostNetwork=False,
        hostPID=False,
        hostIPC=False,
        securityContext={
            **(pod_spec.get("securityContext") or {}),
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    pod_spec.setdefault("terminationGracePeriodSeconds", 5)
    if config.runtime_class_name:
        pod_spec["runtimeClassName"] = config.runtime_class_name
    if config.node_selector:
        pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **config.node_selector}
    if config.tolerations:
        pod_spec["tolerations"] = [*(pod_spec.get("tolerations") or []), *config.tolerations]
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = list(config.image_pull_secrets)
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    return pod


def _resources(spec: LanguageSpec) -> dict:
    from .cgroups import parse_memory

    resources = copy.deepcopy(spec.resources)
    if not spec.memory:
        return resources
    limit = parse_memory(spec.memory)  # ValueError for a bad size, at config time
    if limit is None:  # "0": no memory limit on the pod
        (resources.get("limits") or {}).pop("memory", None)
        return resources
    resources.setdefault("limits", {})["memory"] = spec.memory
    request = (resources.get("requests") or {}).get("memory")
    if request is not None and (parse_memory(request) or 0) > limit:
        resources["requests"]["memory"] = spec.memory
    return resources


def _template(path: str) -> dict:
    if not path:
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read the runner pod template {path}: {e}")
    if not isinstance(loaded, dict):
        raise ValueError(f"the runner pod template {path} is not a YAML mapping (a Pod manifest)")
    return copy.deepcopy(loaded)
