"""The Helm chart renders, lints and validates for the default and a production-like values file."""

from __future__ import annotations

import json

import pytest

from .conftest import CHART, NAMESPACE, by_kind, helm, production_values, render

kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ["1.27.0", kv.latest_version() + ".0"]
VALUE_SETS = {"default": None, "production": production_values()}


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_lint_is_clean(values_name):
    report = helm.lint(CHART, VALUE_SETS[values_name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert report["messages"] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_every_manifest_validates_against_kubernetes_schemas(values_name, kube_version):
    manifests = render(VALUE_SETS[values_name])
    kinds = set()
    for template, docs in manifests.items():
        for doc in docs:
            try:
                kv.validate(doc, kube_version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{template}: {doc['kind']} invalid at {path}: {exc.message}")
            kinds.add(doc["kind"])
    expected = {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"}
    expected |= {"NetworkPolicy", "PodDisruptionBudget", "ConfigMap"}
    assert expected <= kinds


def test_default_install_creates_an_auth_secret_and_uses_embedded_stores(default_manifests):
    (secret,) = by_kind(default_manifests, "Secret")
    assert len(secret["data"]["token"]) >= 48
    env = _gateway_env(default_manifests)
    assert env["KCR_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert env["KCR_REGISTRY_URL"]["value"].startswith("sqlite:")
    assert env["KCR_FILES_URL"]["value"].startswith("file:")


def test_production_values_reference_existing_secrets(production_manifests):
    assert by_kind(production_manifests, "Secret") == []  # nothing secret in the chart
    env = _gateway_env(production_manifests)
    refs = {name: e.get("valueFrom", {}).get("secretKeyRef") for name, e in env.items()}
    assert refs["KCR_AUTH_TOKEN"] == {"name": "kcr-auth", "key": "token"}
    assert refs["KCR_REGISTRY_URL"] == {"name": "kcr-redis", "key": "url"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kcr-s3"
    assert env["KCR_FILES_URL"]["value"] == "s3://kcr-kernel-files/prod"
    (deployment,) = by_kind(production_manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("registry.example.com/kcr/gateway@sha256:")


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_gateway_is_probed_and_hardened(values_name):
    (deployment,) = by_kind(render(VALUE_SETS[values_name]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/kcr", "/tmp", "/var/lib/kcr"} <= mounts


def test_role_grants_only_the_pod_verbs_the_backend_uses(production_manifests):
    (role,) = by_kind(production_manifests, "Role")
    assert role["metadata"]["namespace"] == "kcr-runners"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["create", "get", "list", "watch", "patch", "delete"],
        }
    ]
    (binding,) = by_kind(production_manifests, "RoleBinding")
    (subject,) = binding["subjects"]
    (account,) = by_kind(production_manifests, "ServiceAccount")
    assert subject == {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": NAMESPACE,
    }


def test_runner_network_policy_denies_egress_by_default(default_manifests):
    runners = _policy(default_manifests, "runners")
    assert runners["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert runners["spec"]["egress"] == []
    (ingress,) = runners["spec"]["ingress"]
    (peer,) = ingress["from"]
    gateway_labels = {"app.kubernetes.io/name": "kcr-gateway", "app.kubernetes.io/instance": "kcr"}
    assert peer == {"podSelector": {"matchLabels": gateway_labels}}
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_runner_egress_allow_list_and_cross_namespace_ingress(production_manifests):
    runners = _policy(production_manifests, "runners")
    assert runners["metadata"]["namespace"] == "kcr-runners"
    egress = runners["spec"]["egress"]
    assert {"protocol": "UDP", "port": 53} in egress[0]["ports"]
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    (peer,) = runners["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}


def test_restricted_gateway_egress_keeps_dns_api_server_and_runners(production_manifests):
    gateway = _policy(production_manifests, "gateway")
    assert "Egress" in gateway["spec"]["policyTypes"]
    egress = gateway["spec"]["egress"]
    dns_ports = [p for rule in egress for p in rule.get("ports", []) if p["port"] == 53]
    assert {"protocol": "UDP", "port": 53} in dns_ports
    assert any(
        r.get("to") == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
        and {"protocol": "TCP", "port": 443} in r["ports"]
        for r in egress
    )
    peers = [peer for rule in egress for peer in rule.get("to", [])]
    runner_peers = [p for p in peers if "podSelector" in p]
    assert runner_peers[-1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "kcr-runner"


def test_config_map_carries_languages_pools_and_runner_hardening(production_manifests):
    (config_map,) = by_kind(production_manifests, "ConfigMap")
    config = json.loads(config_map["data"]["kcr.json"])
    assert config["backend"] == "kubernetes"
    assert config["pools"] == {"python": {"warm": 20, "max": 400}}
    kube = config["kubernetes"]
    assert kube["namespace"] == "kcr-runners"
    assert kube["runtime_class_name"] == "gvisor"
    assert kube["languages"]["python"]["image"] == "registry.example.com/kcr/runner-python:0.1.0"
    assert kube["pool_labels"] == {"app.kubernetes.io/instance": "kcr"}


def test_pod_template_override_is_shipped_in_the_config_map():
    template = "apiVersion: v1\nkind: Pod\nspec:\n  priorityClassName: kernels\n"
    manifests = render({"runner": {"podTemplate": template}})
    (config_map,) = by_kind(manifests, "ConfigMap")
    assert config_map["data"]["runner-pod-template.yaml"].strip() == template.strip()
    config = json.loads(config_map["data"]["kcr.json"])
    assert config["kubernetes"]["pod_template_file"] == "/etc/kcr/runner-pod-template.yaml"


def test_several_replicas_without_a_shared_registry_are_refused():
    with pytest.raises(helm.HelmError, match=r"replicas > 1 needs a shared registry"):
        render({"gateway": {"replicas": 2}})


@pytest.mark.parametrize(
    "values, field",
    [
        ({"languages": {"python": {"pool": {"warm": -1, "max": 5}}}}, "warm"),
        ({"gateway": {"image": {"digest": "latest"}}}, "digest"),
        ({"gateway": {"replicaCount": 3}}, "replicaCount"),
        ({"s3": {"url": "http://not-s3"}}, "url"),
    ],
)
def test_schema_rejects_invalid_values(values, field):
    with pytest.raises(helm.HelmError, match=field):
        render(values)


def _gateway_env(manifests) -> dict[str, dict]:
    (deployment,) = by_kind(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def _policy(manifests, suffix: str) -> dict:
    policies = by_kind(manifests, "NetworkPolicy")
    (policy,) = [p for p in policies if p["metadata"]["name"].endswith(suffix)]
    return policy
