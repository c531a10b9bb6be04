"""Repo-wide, session-scoped fixtures for the real services the tests run against.

* ``redis_server`` / ``redis_url`` — a real ``redis-server`` on 127.0.0.1
  (skipped, with the reason, only when the binary is missing).
* ``s3_server`` / ``s3_endpoint`` / ``s3_options`` / ``s3_url`` — moto's S3
  server in a subprocess on 127.0.0.1; ``s3_url`` is ``s3://kcr-test/files``
  in a bucket that exists; pass ``**s3_options`` to ``open_file_store``.

The services are shared by the whole session: use fresh kernel ids (uuid4)
per test instead of flushing data. The start/stop helpers live in
``tests/services.py``.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.services import MotoS3Server, RedisServer, redis_binary

S3_TEST_BUCKET = "kcr-test"


@pytest.fixture(scope="session")
def redis_server():
    if not redis_binary():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server():
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto's server mode is not installed (pip install 'moto[server]')")
    server = MotoS3Server().start()
    server.create_bucket(S3_TEST_BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server) -> str:
    return s3_server.endpoint


@pytest.fixture(scope="session")
def s3_options(s3_server) -> dict:
    return s3_server.client_options()


@pytest.fixture(scope="session")
def s3_url(s3_server) -> str:
    return f"s3://{S3_TEST_BUCKET}/files"


# Modules that take a minute or more each (real JupyterLab in Chromium, nbclient's own
# suite, notebooks from worker processes, long race loops). `hatch test` runs the suite on
# two pytest-xdist workers, one test file per worker at a time (`--dist loadfile`, see
# hatch.toml); xdist hands out files in collection order, so these go first and the short
# files fill in around them instead of one long file running alone at the end.
LONG_RUNNING_FIRST = (
    "tests/compat/",
    "tests/browser/",
    "tests/provisioner/test_fork_safety.py",
    "tests/sandbox/test_symlink_race.py",
    "tests/jupyter_server/test_gateway_lifecycle.py",
    "tests/kubernetes/test_gateway_replicas.py",
    "tests/gateway/test_output_flood.py",
    "tests/code_api/test_librechat.py",  # installs @librechat/agents with npm on first use
    "tests/code_api/test_code_api.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        for index, prefix in enumerate(LONG_RUNNING_FIRST):
            if path.startswith(prefix):
                return index
        return len(LONG_RUNNING_FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept
