"""Runner pod manifests: hardened, schema-valid, configurable from the chart."""

from __future__ import annotations

import json

import pytest

from kcr_kernels.backends.k8s_pod_spec import KubernetesConfig, runner_pod_manifest

kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")


def chart_config(tmp_path, values=None) -> KubernetesConfig:
    from tests.chart.conftest import by_kind, production_values, render

    (config_map,) = by_kind(render(values or production_values()), "ConfigMap")
    for key, text in config_map["data"].items():
        (tmp_path / key).write_text(text)
    data = json.loads(config_map["data"]["kcr.json"])
    if "pod_template_file" in data["kubernetes"]:
        data["kubernetes"]["pod_template_file"] = str(tmp_path / "runner-pod-template.yaml")
    (tmp_path / "kcr.json").write_text(json.dumps(data))
    return KubernetesConfig.from_file(tmp_path / "kcr.json")


def test_chart_config_gives_a_hardened_schema_valid_pod(tmp_path):
    config = chart_config(tmp_path)
    pod = runner_pod_manifest(config, "python", "kcr-python-abc", "tok")
    kv.validate(pod, kv.latest_version(), strict=True)
    spec = pod["spec"]
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["nodeSelector"] == {"kcr.dev/runner-node": "true"}
    assert spec["imagePullSecrets"] == [{"name": "registry-example-com"}]
    assert container["resources"]["limits"]["ephemeral-storage"] == "6Gi"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["workspace"]["emptyDir"] == {"sizeLimit": "4Gi"}
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "kcr"  # matched by the chart's NetworkPolicy
    assert labels["app.kubernetes.io/name"] == "kcr-runner" and labels["kcr.dev/state"] == "warm"


def test_template_can_add_but_not_weaken(tmp_path):
    template = """
apiVersion: v1
kind: Pod
metadata:
  annotations: {team: data}
spec:
  priorityClassName: kernels
  automountServiceAccountToken: true
  containers:
    - name: x
      securityContext: {privileged: true, runAsUser: 0}
"""
    config = chart_config(tmp_path, {"runner": {"podTemplate": template}})
    pod = runner_pod_manifest(config, "python", "kcr-python-abc", "tok")
    kv.validate(pod, kv.latest_version(), strict=True)
    assert pod["spec"]["priorityClassName"] == "kernels"
    assert pod["metadata"]["annotations"]["team"] == "data"
    assert pod["spec"]["automountServiceAccountToken"] is False
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["privileged"] is False and sc["runAsUser"] == 1000
