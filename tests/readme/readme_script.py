"""Turn the README's console blocks into one bash script that runs them as written.

Every line of every ```` ```console ```` block is a command. :func:`plan` decides, line
by line, what the script does with it (the first matching :data:`RULES` entry):

* run it as written (the default: a new README command is run unless a rule says why not);
* start it in the background when it is a server (``hatch run gateway``, ``hatch run
  lab``), wait until it answers, and stop it at the end of its block (the first gateway,
  from the set-up block, serves every later block);
* skip it, with the reason (it needs a cluster, it is the test suite itself, …).

What the script changes, always the same way: the port ``8888`` becomes the port of the
gateway started last (a free port: other gateways may run on this machine), the servers
get ``--port``/``--no-browser``-like options appended, ``--sys-prefix`` becomes a
``--prefix`` in the scratch folder (found through ``JUPYTER_PATH``), and ``./bootstrap``
installs into the scratch folder (``KCR_TOOLS_DIR``/``KCR_BIN_DIR``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

CONSOLE_BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMMENT = re.compile(r"\s+#(\s.*)?$")


@dataclass(frozen=True)
class Rule:
    pattern: str
    action: str  # "run", "skip", "gateway", "lab", "lab-help", "bootstrap"
    reason: str = ""


RULES = [
    Rule(r"^apt-get install .*&& \./bootstrap$", "bootstrap", "apt-get: .ci/run installs"),
    Rule(r"^hatch test\b", "skip", "the test suite this test is part of"),
    Rule(r"^hatch run bench:", "skip", "a benchmark (minutes each): hatch run bench:…"),
    Rule(r"^helm ", "skip", "needs a Kubernetes cluster"),
    Rule(r"^hatch run gateway\b", "gateway"),
    # With --help: JupyterLab's start takes 10-30 s; tests/jupyter_server/test_lab_command.py
    # starts it the way `kcr-kernels lab` does. The "lab" action (a real start, a kernel
    # through Lab, resolvePath) is kept for running by hand.
    Rule(r"^hatch run lab\b", "lab-help", "started in tests/jupyter_server/test_lab_command.py"),
]


@dataclass
class Step:
    block: int
    line: str
    action: str
    reason: str = ""


def console_blocks(readme: str) -> list[list[str]]:
    """The commands of each console block: lines ending in ``\\`` joined with the next,
    comment lines (``# output shown``) and comments after a command removed."""
    blocks = []
    for body in CONSOLE_BLOCK.findall(readme):
        commands, pending = [], ""
        for raw in body.splitlines():
            line = (pending + " " + raw.strip()).strip() if pending else raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].strip()
                continue
            pending = ""
            if line and not line.startswith("#"):
                commands.append(COMMENT.sub("", line).strip())
        blocks.append(commands)
    return blocks


def plan(readme: str) -> list[Step]:
    steps = []
    for index, block in enumerate(console_blocks(readme)):
        for line in block:
            rule = next((r for r in RULES if re.search(r.pattern, line)), None)
            steps.append(
                Step(index, line, rule.action if rule else "run", rule.reason if rule else "")
            )
    return steps


PRELUDE = r"""
set -euo pipefail
servers=()
stop_servers() {
  local pid
  for pid in "${servers[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  servers=()
}
trap stop_servers EXIT
# start_server LOG URL COMMAND...: COMMAND in its own process group, until URL answers.
start_server() {
  local log=$1 url=$2
  shift 2
  setsid "$@" >"$log" 2>&1 &
  local pid=$!
  servers+=("$pid")
  echo "$pid" >>servers.pids  # the test stops these groups too if this script is killed
  for _ in $(seq 1 900); do
    if curl -sf -o /dev/null "$url"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "readme: server exited: $*" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.2
  done
  echo "readme: no answer from $url after 180 s: $*" >&2; cat "$log" >&2
  return 1
}
"""

LAB_TOKEN = "readme-lab-token"


def script(steps: list[Step], *, repo: Path, scratch: Path, ports: list[int]) -> str:
    """The bash script for ``steps``; ``ports``: free ports, one per server started."""
    free = iter(ports)
    out = [PRELUDE, f"cd {shlex.quote(str(scratch))}"]
    current = None  # the gateway port lines talk to
    first_gateway = None
    block = None
    for n, step in enumerate(steps):
        if step.block != block:
            if block is not None:
                out.append("stop_servers  # the block's own servers")
                current = first_gateway
            block = step.block
            out.append(f"echo '== README console block {block}'")
        out.append(f'echo "[$SECONDS s] "{shlex.quote("$ " + step.line)}')
        line = step.line
        if current is not None:
            line = re.sub(r"(localhost|127\.0\.0\.1|gw):8888\b", f"127.0.0.1:{current}", line)
            line = line.replace("http://gw:", "http://127.0.0.1:")
        line = line.replace("--sys-prefix", f"--prefix={scratch / 'env'}")
        log = scratch / f"server-{n}.log"
        if step.action == "skip":
            out.append(f"echo '   (skipped: {step.reason})'")
        elif step.action == "bootstrap":
            out.append(f"echo '   ({step.reason}; running ./bootstrap only)'")
            out.append(f"(cd {shlex.quote(str(repo))} && ./bootstrap)")
        elif step.action == "lab-help":
            out.append(f"{line} --help")
        elif step.action == "gateway":
            port = next(free)
            # A data folder of its own: the README's later gateways stand for "stop the
            # first one, start it like this" (same port, same default folder).
            data = f" --data-dir={scratch / f'gateway-{n}'}" if first_gateway else ""
            probe = f"http://127.0.0.1:{port}/healthz"
            out.append(f"start_server {log} {probe} {line} --port={port}{data}")
            if first_gateway is None:
                first_gateway = port
                # The first gateway serves every later block: not stopped by block ends.
                out.append('first_server=("${servers[@]}"); servers=()')
            current = port
        elif step.action == "lab":
            port = next(free)
            lab = f"http://127.0.0.1:{port}"
            out.append(
                f"start_server {log} {lab}/api/status?token={LAB_TOKEN} {line}"
                f" --gateway-url=http://127.0.0.1:{current} --port={port} --no-browser"
                f" --IdentityProvider.token={LAB_TOKEN}"
            )
            # Through Lab to the gateway (the token is wired), and resolvePath answers.
            out.append(
                f"curl -sf '{lab}/api/kernelspecs?token={LAB_TOKEN}' | grep -q kcr-python\n"
                f"LKID=$(curl -sf -X POST '{lab}/api/kernels?token={LAB_TOKEN}' "
                '-d \'{"name": "kcr-python"}\' | python3 -c '
                "'import json, sys; print(json.load(sys.stdin)[\"id\"])')\n"
                f"curl -sf '{lab}/api/resolvePath?token={LAB_TOKEN}&path=a.py&kernel='$LKID\n"
                f"curl -sf -X DELETE '{lab}/api/kernels/'$LKID'?token={LAB_TOKEN}'"
            )
        else:
            out.append(line)
    out.append("stop_servers")
    out.append('servers=("${first_server[@]}"); stop_servers')
    out.append("echo '== README commands: all ran'")
    return "\n".join(out) + "\n"
