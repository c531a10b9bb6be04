"""Fixtures that render the Helm chart in ``chart/`` with Helm's own engine.

``helm-python-sdk`` embeds Helm (``libhelm_c``), so no helm binary and no
cluster are needed: templates are rendered offline exactly as ``helm template``
would render them.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")

CHART = pathlib.Path(__file__).resolve().parents[2] / "chart"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "kcr"
NAMESPACE = "jupyter"


def render(values: dict | None = None) -> dict[str, list[dict]]:
    """Render the chart; return the parsed manifests keyed by template file name."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out: dict[str, list[dict]] = {}
    for path, text in rendered.items():
        if path.endswith(".txt"):
            continue
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        if docs:
            out[path.rsplit("/", 1)[-1]] = docs
    return out


def by_kind(manifests: dict[str, list[dict]], kind: str) -> list[dict]:
    return [doc for docs in manifests.values() for doc in docs if doc["kind"] == kind]


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


@pytest.fixture(scope="session")
def default_manifests() -> dict[str, list[dict]]:
    return render(None)


@pytest.fixture(scope="session")
def production_manifests() -> dict[str, list[dict]]:
    return render(production_values())
