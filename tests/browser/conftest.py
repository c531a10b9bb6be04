"""Fixtures for the browser test: kcr-gateway + JupyterLab + headless Chromium (Playwright).

Chromium comes from Debian (``apt-get install chromium``; Playwright never
downloads a browser here): the test is skipped, with the reason, when
``/usr/bin/chromium`` (or ``$KCR_CHROMIUM``) or the ``playwright`` package is
missing; with ``KCR_REQUIRE_BROWSER=1`` (CI) it fails instead. Screenshots go
to ``test-artifacts/browser/`` at the repository root (or
``$KCR_TEST_ARTIFACTS/browser``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.jupyter_server.servers import GatewayProcess, JupyterServerProcess

CHROMIUM = os.environ.get("KCR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPO = Path(__file__).resolve().parents[2]


def _missing_browser() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set KCR_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright)"
    if importlib.util.find_spec("jupyterlab") is None:
        return "jupyterlab is not installed (pip install jupyterlab)"
    return None


def require_browser() -> None:
    """Skip (fail, when CI sets ``KCR_REQUIRE_BROWSER=1``) if the browser test cannot run."""
    reason = _missing_browser()
    if reason is None:
        return
    if os.environ.get("KCR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KCR_REQUIRE_BROWSER=1 but the browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("KCR_TEST_ARTIFACTS", REPO / "test-artifacts"))
    folder = root / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A kcr-gateway (two warm Python pods) and JupyterLab using it; yields the lab process."""
    require_browser()
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        "browser-gateway-token",
        args=['--KCRGateway.pools={"python": {"warm": 2}}'],
    ).start()
    server = JupyterServerProcess(
        tmp_path_factory.mktemp("lab"),
        gateway,
        "browser-lab-token",
        app="jupyterlab",
        args=[
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # What `kcr-kernels lab` sets: /api/resolvePath answers instead of a 500.
            "--GatewayMappingKernelManager.kernel_manager_class=kcr_kernels.lab.GatewayKernelManager",
        ],
    )
    # Answer JupyterLab's "get notified about Jupyter news?" question up front (no toast).
    settings = server.workdir / "home" / ".jupyter" / "lab" / "user-settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}'
    )
    try:
        server.start(timeout=90)
        yield server
    finally:
        server.stop()
        gateway.stop()


@pytest.fixture
async def page(artifacts):
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.console_log = console
        try:
            yield page
        finally:
            # The page as it was when the test ended (the place to look when it failed).
            await page.screenshot(path=str(artifacts / "last.png"))
            (artifacts / "console.log").write_text("\n".join(console))
            await context.close()
            await browser.close()
