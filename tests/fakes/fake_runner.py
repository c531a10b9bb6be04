"""FakeRunner: a stand-in for ``kcr-runner`` with the same command line and ready line.

It starts its "worker" as ``worker_prefix + [python, "-c", LOOP]`` (a process
that waits on its stdin pipe), answers ``GET /healthz`` with the bearer token
from ``KCR_RUNNER_TOKEN``, and offers ``POST /run``: the body is Python code,
run as ``worker_prefix + [python, "-c", code]`` in the workspace; the answer
is ``{"rc", "stdout", "stderr"}``. That lets the local-backend tests drive the
real sandbox prefix through a real runner process.

``--mode`` makes it misbehave: ``hang`` (never prints the ready
line), ``crash`` (exits 3 after writing to stderr), ``unhealthy`` (healthz
says the worker is dead).

Run as ``python tests/fakes/fake_runner.py --host ... --port ... --workspace
... --language ... --worker-prefix JSON``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORKER_LOOP = "import sys\nsys.stdin.read()"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--language", default="python")
    parser.add_argument("--worker-prefix", default="[]")
    parser.add_argument("--files-uid", type=int, default=None)  # accepted, unused
    parser.add_argument("--files-gid", type=int, default=None)
    parser.add_argument("--mode", default="", choices=["", "hang", "crash", "unhealthy"])
    args = parser.parse_args()
    token = os.environ.pop("KCR_RUNNER_TOKEN", "")
    mode = args.mode
    prefix = json.loads(args.worker_prefix)
    if mode == "crash":
        print("fake runner: crashing on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        print("fake runner: hanging on purpose", file=sys.stderr, flush=True)
        time.sleep(3600)
    worker = subprocess.Popen(
        [*prefix, sys.executable, "-c", WORKER_LOOP],
        stdin=subprocess.PIPE,
        cwd=args.workspace,
    )

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            print(fmt % a, file=sys.stderr, flush=True)

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._reply(403, {"error": "bad token"})
                return False
            return True

        def do_GET(self):
            if not self._authorized():
                return
            if self.path == "/healthz":
                ok = worker.poll() is None and mode != "unhealthy"
                state = "ok" if ok else "dead"
                self._reply(200, {"status": state, "worker": "alive" if ok else "dead"})
            else:
                self._reply(404, {})

        def do_POST(self):
            if not self._authorized():
                return
            if self.path != "/run":
                self._reply(404, {})
                return
            code = self.rfile.read(int(self.headers["Content-Length"])).decode()
            result = subprocess.run(
                [*prefix, sys.executable, "-c", code],
                capture_output=True,
                text=True,
                cwd=args.workspace,
                timeout=60,
            )
            self._reply(
                200, {"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
            )

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    ready = {"host": host, "port": port, "pid": os.getpid()}
    print("KCR_RUNNER_READY " + json.dumps(ready), flush=True)

    def exit_on_stdin_eof() -> None:
        sys.stdin.read()
        worker.kill()
        os._exit(0)

    threading.Thread(target=exit_on_stdin_eof, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
