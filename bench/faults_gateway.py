"""Gateway fault scenarios (issue 14, bullets 3-6): what a user loses, and how long it takes.

Each scenario starts real gateways (processes for the crash and second-gateway cases, in
this process where the bench needs the pods' pids), real sandboxed pods and, for the
registry stall, its own ``redis-server``; injects the fault with signals; and reports
one row::

    {"scenario", "kernels_lost", "values_lost", "files_lost", "recovery_s", "message"}

* ``kernels_lost``: kernels whose next cell failed or that disappeared;
* ``values_lost``: variables (one per kernel) that came back wrong or missing;
* ``files_lost``: files (one per kernel, written by a cell) that came back wrong;
* ``recovery_s``: time from the end of the fault to the first result (scenario-specific,
  the row's message names it);
* ``message``: what the user (or operator) saw.

``bench/faults_bench.py`` (``hatch run bench:faults``) imports :func:`run` and prints these
rows with the file-store scenarios; alone: ``hatch run bench:python bench/faults_gateway.py
[--kernels 3] [--tries 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kcr_kernels.stores import open_kernel_store
from tests.faults.gateway_procs import FAST_LEASES, GatewayProcess
from tests.gateway.conftest import (
    WSKernelClient,
    http,
    start_gateway,
    start_kernel,
    wait_for,
)
from tests.services import RedisServer, redis_binary


def row(scenario, kernels_lost, values_lost, files_lost, recovery_s, message) -> dict:
    return {
        "scenario": scenario,
        "kernels_lost": kernels_lost,
        "values_lost": values_lost,
        "files_lost": files_lost,
        "recovery_s": None if recovery_s is None else round(recovery_s, 3),
        "message": message,
    }


async def fill(base: str, n: int) -> list[str]:
    """``n`` kernels, kernel ``i`` holding ``v = i`` and a file ``f.txt`` = ``'file i'``."""
    ids = []
    for i in range(n):
        kernel_id = await start_kernel(base)
        client = await WSKernelClient.connect(base, kernel_id)
        r = await client.execute(f"v = {i}\nopen('f.txt', 'w').write('file {i}')")
        assert r.content["status"] == "ok", r.content
        client.close()
        ids.append(kernel_id)
    return ids


async def check(base: str, ids: list[str]) -> tuple[int, int, int, list[str], float | None]:
    """(kernels, values, files lost; the [kcr] lines seen; seconds to the first result)."""
    kernels = values = files = 0
    notes: list[str] = []
    first: float | None = None
    started = time.monotonic()
    for i, kernel_id in enumerate(ids):
        try:
            client = await WSKernelClient.connect(base, kernel_id)
            r = await client.execute("print(v); print(open('f.txt').read())", timeout=120)
            client.close()
        except Exception as e:  # a kernel that is gone or never answers
            kernels += 1
            notes.append(f"{type(e).__name__}: {e}")
            continue
        if first is None:
            first = time.monotonic() - started
        if r.content["status"] != "ok":
            ename = r.content.get("ename", "")
            if ename in ("NameError", "FileNotFoundError"):
                values += ename == "NameError"
                files += ename == "FileNotFoundError"
            else:
                kernels += 1
            notes.append(f"{ename}: {r.content.get('evalue', '')}")
            continue
        lines = r.stdout.splitlines()
        values += lines[:1] != [str(i)]
        files += lines[1:2] != [f"file {i}"]
        notes += [line for line in r.stderr.splitlines() if line.startswith("[kcr]")]
    return kernels, values, files, notes, first


async def wait_checkpointed(url: str, ids: list[str]) -> None:
    store = open_kernel_store(url)
    try:
        deadline = time.monotonic() + 60
        for kernel_id in ids:
            while await store.get_state(kernel_id) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kernel {kernel_id} was never checkpointed")
                await asyncio.sleep(0.05)
    finally:
        await store.close()


# -- scenario 3 -------------------------------------------------------------------------


async def second_gateway(work: Path, n: int) -> dict:
    data = work / "second"
    first = await asyncio.to_thread(GatewayProcess(data, *FAST_LEASES).start)
    try:
        ids = await fill(first.base, n)
        intruder = GatewayProcess(data)
        code = await asyncio.to_thread(intruder.run_to_exit)
        line = next((x for x in intruder.lines if "error" in x), intruder.stderr[-200:])
        kernels, values, files, notes, first_result = await check(first.base, ids)
    finally:
        first.kill()
    message = f"second gateway exit {code}: {line}" + (f" | {'; '.join(notes)}" if notes else "")
    message += "; recovery = time to the first kernel's next result"
    return row("second gateway, same data folder", kernels, values, files, first_result, message)


# -- scenario 4 -------------------------------------------------------------------------


async def killed_gateway(work: Path, n: int) -> dict:
    data = work / "restart"
    options = [*FAST_LEASES, "--KCRLeaseKeeper.lease_ttl=15"]
    gateway = await asyncio.to_thread(GatewayProcess(data, *options).start)
    try:
        ids = await fill(gateway.base, n)
        await wait_checkpointed(f"sqlite:///{data}/kcr.db", ids)
    finally:
        gateway.kill(signal.SIGKILL)
    restarted = GatewayProcess(data, *options)
    await asyncio.to_thread(restarted.start, 120)  # ready: its pool is warm
    try:
        listed = (await http(restarted.base, "GET", "/api/kernels")).json()
        states = sorted({k["execution_state"] for k in listed})
        kernels, values, files, notes, first_result = await check(restarted.base, ids)
        kernels += len(set(ids) - {k["id"] for k in listed})
    finally:
        restarted.kill()
    message = (
        f"listed as {'/'.join(states)}; first cells: "
        + ("; ".join(sorted(set(notes))) or "no notice")
        + "; recovery = restarted gateway ready to first result"
    )
    return row("gateway SIGKILL + restart", kernels, values, files, first_result, message)


# -- scenario 5 -------------------------------------------------------------------------


async def pod_killed_as_cell_sent(work: Path, tries: int) -> dict:
    app = await start_gateway(
        work / "resend", manager={"checkpoint_delay": 0.05}, pools={"python": {"warm": 2}}
    )
    base = f"http://127.0.0.1:{app.port}"
    lost = values = 0
    seconds: list[float] = []
    notes: set[str] = set()
    try:
        kernel_id = await start_kernel(base)
        client = await WSKernelClient.connect(base, kernel_id)
        kernel = app.kernel_manager.get_kernel(kernel_id)
        for i in range(tries):
            r = await client.execute(f"v = {i}")
            assert r.content["status"] == "ok"
            await wait_for(lambda: not kernel.dirty and not kernel.checkpoint_lock.locked(), 30, "")
            process = kernel.pod.meta["process"]
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)  # the pod dies ...
            killed = time.monotonic()
            entry = client.send(client.make("execute_request", {"code": "print(v)"}))  # ... now
            await wait_for(lambda e=entry: e.reply is not None, 120, "reply")
            seconds.append(time.monotonic() - killed)
            if entry.reply["content"]["status"] != "ok":
                lost += 1
                notes.add(entry.reply["content"].get("ename", "error"))
            elif entry.stdout != f"{i}\n":
                values += 1
            notes.update(x for x in entry.stderr.splitlines() if x.startswith("[kcr]"))
            await wait_for(lambda: kernel.attached, 30, "attached")
        client.close()
    finally:
        await app.stop_async()
    seen = sorted({n.split(" State restored")[0] for n in notes})
    message = f"{tries} tries, cell sent right after SIGKILL of the pod; " + "; ".join(seen)
    return row(
        "pod SIGKILL as a cell is sent",
        lost,
        values,
        0,
        statistics.median(seconds) if seconds else None,
        message,
    )


# -- scenario 6 -------------------------------------------------------------------------


async def redis_stalled(work: Path, n: int) -> dict:
    if not redis_binary():
        return row("redis-server SIGSTOP", None, None, None, None, "skipped: no redis-server")
    redis = RedisServer().start()
    app = await start_gateway(
        work / "redis",
        manager={"checkpoint_delay": 0.05},
        kernel_store_url=redis.url,
        pools={"python": {"warm": 1}},
    )
    base = f"http://127.0.0.1:{app.port}"
    stopped = False
    try:
        ids = await fill(base, n)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        stopped = True
        lists, starts = [], []
        header = refusal = ""
        for _ in range(5):
            t = time.monotonic()
            r = await http(base, "GET", "/api/kernels")
            lists.append(time.monotonic() - t)
            header = r.headers.get("X-KCR-Registry", "")
            listed = len(r.json()) if r.code == 200 else 0
            t = time.monotonic()
            r = await http(base, "POST", "/api/kernels", {"name": "kcr-python"})
            starts.append(time.monotonic() - t)
            refusal = f"{r.code} …{r.json().get('message', '')[-110:]}"
        kernels, values, files, _notes, _ = await check(base, ids)  # running kernels go on
        os.kill(redis.proc.pid, signal.SIGCONT)
        stopped = False
        resumed = time.monotonic()
        for _ in range(1200):  # a minute at most
            if (await http(base, "POST", "/api/kernels", {"name": "kcr-python"})).code == 201:
                break
            await asyncio.sleep(0.05)
        recovery = time.monotonic() - resumed
    finally:
        if stopped:
            os.kill(redis.proc.pid, signal.SIGCONT)
        await app.stop_async()
        redis.close()
    message = (
        f"GET /api/kernels p50 {statistics.median(lists) * 1e3:.0f} ms, max "
        f"{max(lists) * 1e3:.0f} ms ({listed} of {n} kernels listed, "
        f"X-KCR-Registry: {header}); POST first {starts[0]:.2f} s, then max "
        f"{max(starts[1:]) * 1e3:.0f} ms: {refusal}; recovery = SIGCONT to a started kernel"
    )
    return row("redis-server SIGSTOP", kernels, values, files, recovery, message)


async def run(args) -> list[dict]:
    """Every gateway scenario, one row each (see the module docstring)."""
    n = getattr(args, "kernels", None) or 3
    tries = getattr(args, "tries", None) or 10
    work = Path(tempfile.mkdtemp(prefix="kcr-faults-gw-"))
    scenarios = [
        lambda: second_gateway(work, n),
        lambda: killed_gateway(work, n),
        lambda: pod_killed_as_cell_sent(work, tries),
        lambda: redis_stalled(work, n),
    ]
    rows = []
    for scenario in scenarios:
        try:
            rows.append(await scenario())
        except Exception as e:  # one broken scenario still reports the others
            rows.append(row("(failed)", None, None, None, None, f"{type(e).__name__}: {e}"))
    return rows


def print_table(rows: list[dict]) -> None:
    keys = ["scenario", "kernels_lost", "values_lost", "files_lost", "recovery_s", "message"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join("-" if r[k] is None else str(r[k]) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=3, help="kernels per scenario")
    parser.add_argument("--tries", type=int, default=10, help="pod kills in scenario 5")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
