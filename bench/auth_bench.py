"""What identities, kernel ownership and log redaction cost per request.

Usage::

    hatch run bench:python bench/auth_bench.py            # 500 requests per case
    hatch run bench:python bench/auth_bench.py --n 2000

One kcr-gateway per case runs in this process (local sandboxed pods, warm pool of 1,
one kernel started), and ``GET /api/kernels/{id}`` and ``GET /api/kernels`` are timed
sequentially from a tornado client on the same event loop (so the figures include the
client's share). Cases: no auth; the shared ``auth_token``; a token file of 1,000
identities with ``kernel_ownership`` on (the owner, and another user who gets 404);
a JupyterHub token (cached after the first request) with ownership, against
``tests/fakes/fake_hub.py``. Last, the cost of the redacting log-record factory for a
tornado access-log line with a ``?token=`` in it, per record.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import summarize_ms  # noqa: E402
from kcr_gateway.app import KCRGateway  # noqa: E402
from kcr_gateway.tokens import token_line  # noqa: E402
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest  # noqa: E402
from traitlets.config import Config  # noqa: E402

from tests.fakes.fake_hub import FakeHub  # noqa: E402


async def gateway(data: Path, **classes) -> KCRGateway:
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(data)
    config.KCRGateway.pools = {"python": {"warm": 1}}
    for class_name, traits in classes.items():
        for name, value in traits.items():
            setattr(config[class_name], name, value)
    app = KCRGateway(config=config)
    await app.start_async()
    await app.pool.wait_warm(60)
    return app


async def call(url: str, method: str, token: str | None, body=None) -> int:
    headers = {"Authorization": f"token {token}"} if token else {}
    request = HTTPRequest(url, method=method, headers=headers, body=body)
    try:
        return (await AsyncHTTPClient().fetch(request)).code
    except HTTPClientError as e:
        return e.code


async def timed(url: str, token: str | None, n: int, want: int) -> dict:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        code = await call(url, "GET", token)
        times.append(time.perf_counter() - started)
        assert code == want, (url, code)
    return summarize_ms(times)


async def case(name, data, n, starter, readers, **classes) -> list[tuple]:
    app = await gateway(data, **classes)
    base = f"http://127.0.0.1:{app.port}"
    rows = []
    try:
        r = await AsyncHTTPClient().fetch(
            HTTPRequest(
                base + "/api/kernels",
                method="POST",
                body='{"name": "kcr-python"}',
                headers={"Authorization": f"token {starter}"} if starter else {},
            )
        )
        import json

        kernel_id = json.loads(r.body)["id"]
        for label, token, want in readers:
            one = await timed(f"{base}/api/kernels/{kernel_id}", token, n, want)
            listing = await timed(f"{base}/api/kernels", token, n, 200)
            rows.append((f"{name}: {label}", one, listing))
        await call(f"{base}/api/kernels/{kernel_id}", "DELETE", starter)
    finally:
        await app.stop_async()
    return rows


def redaction_cost(n: int) -> tuple[float, float]:
    """Microseconds per access-log record, without and with the redacting factory."""
    from kcr_gateway import redact

    log = logging.getLogger("bench.access")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    line = ("403 GET %s (%s) %.2fms", "/api/kernels?token=abcdef0123456789", "127.0.0.1", 1.2)

    def run() -> float:
        started = time.perf_counter()
        for _ in range(n):
            log.info(*line)
        return (time.perf_counter() - started) / n * 1e6

    factory = logging.getLogRecordFactory()
    redact._installed = False  # measure both ways in one process
    logging.setLogRecordFactory(logging.LogRecord)
    plain = run()
    redact.install()
    redacted = run()
    logging.setLogRecordFactory(factory)
    return plain, redacted


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows += await case("no auth", tmp / "a", args.n, None, [("anonymous", None, 200)])
        rows += await case(
            "auth_token",
            tmp / "b",
            args.n,
            "shared-0123456789",
            [("admin", "shared-0123456789", 200)],
            KCRGateway={"auth_token": "shared-0123456789"},
        )
        tokens = tmp / "tokens.txt"
        lines = [token_line(f"tok-user-{i:04d}-abcdef", f"user{i}") for i in range(1000)]
        tokens.write_text("\n".join(lines) + "\n")
        ownership = {"KCRAuthorizer": {"kernel_ownership": True}}
        rows += await case(
            "token file (1,000 lines) + ownership",
            tmp / "c",
            args.n,
            "tok-user-0001-abcdef",
            [("owner", "tok-user-0001-abcdef", 200), ("other user", "tok-user-0002-abcdef", 404)],
            KCRIdentityProvider={"token_file": str(tokens)},
            **ownership,
        )
        hub = FakeHub()
        await hub.start()
        hub.add_token("hub-alice-0123456789", "alice")
        try:
            rows += await case(
                "JupyterHub token (cached) + ownership",
                tmp / "d",
                args.n,
                "hub-alice-0123456789",
                [("owner", "hub-alice-0123456789", 200)],
                KCRIdentityProvider={"hub_api_url": hub.api_url, "hub_access_scopes": set()},
                **ownership,
            )
            hub_requests = hub.requests
        finally:
            await hub.stop()
    print(f"\nGET latency, {args.n} sequential requests each (ms)")
    print(f"{'case':<52} {'one kernel p50/p99':>20} {'list p50/p99':>16}")
    for label, one, listing in rows:
        print(
            f"{label:<52} {one['p50_ms']:>9.2f} / {one['p99_ms']:<8.2f}"
            f" {listing['p50_ms']:>6.2f} / {listing['p99_ms']:<6.2f}"
        )
    print(f"JupyterHub /user requests for {2 * args.n + 2} gateway requests: {hub_requests}")
    plain, redacted = redaction_cost(20000)
    print(f"log record with ?token=: {plain:.2f} us plain, {redacted:.2f} us redacted")


if __name__ == "__main__":
    asyncio.run(main())
