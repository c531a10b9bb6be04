"""JupyterLab with ``--gateway-url`` pointing at kcr-gateway, driven in headless Chromium.

What a user does: open JupyterLab, find the kcr kernel (with its logo) in the
launcher, open a notebook on it, run ``print(1 + 1)`` and a matplotlib plot,
interrupt a long cell from the toolbar, restart the kernel from the toolbar.
Screenshots of every step are saved as test artifacts.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

KERNEL_DISPLAY_NAME = "Python 3 (kcr)"
TIMEOUT_MS = 60_000


async def run_cell(page, code: str) -> None:
    """Type ``code`` into the notebook's last cell and run it with Shift+Enter."""
    editor = page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").last
    await editor.click()
    # insert_text: no per-key auto-indent or bracket closing from the editor
    await page.keyboard.insert_text(code)
    await page.keyboard.press("Shift+Enter")


def output_area(page):
    return page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")


async def wait_kernel_idle(page) -> None:
    """The notebook's kernel indicator says idle (JupyterLab shows it once connected)."""
    await page.locator(
        ".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator[data-status='idle']"
    ).wait_for(timeout=TIMEOUT_MS)


async def image_loaded(page, locator, min_width: int) -> None:
    """Wait until the <img> behind ``locator`` has loaded a picture at least ``min_width`` wide."""
    handle = await locator.element_handle(timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "([img, w]) => img.complete && img.naturalWidth >= w",
        arg=[handle, min_width],
        timeout=TIMEOUT_MS,
    )


async def test_notebook_on_a_kcr_kernel(lab, page, artifacts):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    shots = iter(range(1, 100))

    async def shot(name: str) -> None:
        await page.screenshot(path=str(artifacts / f"{next(shots):02d}-{name}.png"))

    await page.goto(f"{lab.url}/lab?token={lab.token}", timeout=TIMEOUT_MS)

    # The launcher shows the kcr kernel with its logo, served through the server.
    card = page.locator(
        f".jp-LauncherCard[data-category='Notebook'][title='{KERNEL_DISPLAY_NAME}']"
    )
    await expect(card).to_be_visible()
    logo = card.locator("img")
    await expect(logo).to_have_attribute("src", _contains("/kernelspecs/kcr-python/logo-"))
    await image_loaded(page, logo, min_width=1)
    await shot("launcher")

    # New notebook on the kcr kernel; time from the click to the first output.
    started = time.perf_counter()
    await card.click()
    await expect(page.locator(".jp-NotebookPanel:visible .jp-KernelName")).to_have_text(
        KERNEL_DISPLAY_NAME
    )
    # As a user does: wait until the toolbar says the kernel is connected and idle.
    await wait_kernel_idle(page)
    await run_cell(page, "print(1 + 1)")
    await expect(output_area(page).first).to_have_text("2")
    first_output_s = time.perf_counter() - started
    await shot("first-output")

    await run_cell(
        page,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4])\nplt.title('kcr')\nplt.show()",
    )
    plot = output_area(page).locator("img")
    await expect(plot).to_be_visible()
    await image_loaded(page, plot, min_width=100)
    await shot("matplotlib")

    # A long cell, interrupted from the toolbar.
    await run_cell(page, "import time\nfor _ in range(600): time.sleep(0.1)")
    await page.locator(
        ".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator[data-status='busy']"
    ).wait_for(timeout=TIMEOUT_MS)
    await page.locator(
        ".jp-NotebookPanel:visible .jp-NotebookPanel-toolbar [data-jp-item-name='interrupt']"
    ).click()
    await expect(output_area(page).last).to_contain_text("KeyboardInterrupt")
    await wait_kernel_idle(page)
    await shot("interrupted")

    # Restart from the toolbar: the namespace is gone, the notebook keeps working.
    await run_cell(page, "marker = 'before restart'")
    await wait_kernel_idle(page)
    await page.locator(
        ".jp-NotebookPanel:visible .jp-NotebookPanel-toolbar [data-jp-item-name='restart']"
    ).click()
    await page.locator(".jp-Dialog .jp-mod-accept").click()
    await wait_kernel_idle(page)
    await run_cell(page, "print('marker' in dir(), 1 + 1)")
    await expect(output_area(page).last).to_have_text("False 2")
    await shot("restarted")

    timings = {"start_to_first_output_s": round(first_output_s, 3)}
    (artifacts / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"JupyterLab start-to-first-output: {first_output_s:.2f} s")


def _contains(text: str):
    import re

    return re.compile(re.escape(text))


#: Lines a JupyterLab session must not leave in the gateway's or Jupyter Server's log.
LOG_NOISE = ("Traceback", "never retrieved", "ERROR", "[E ", "ping timeout", "ping_timeout")
#: Known and not ours to fix here: Jupyter Server asks its own (local) kernelspecs for a logo
#: of a kernel it only knows from the gateway (Lab asks for the default `python3` before it
#: learns the gateway's default; gateway kernelspec aliases are the fix, issue 16).
KNOWN = ("Could not open static file 'logo-",)


async def test_the_session_left_no_noise_in_the_logs(lab, page):
    """After the notebook session above (cells, an interrupt, a restart) and a cell that
    raises and one with a tqdm bar, neither log has errors, tracebacks or ping warnings."""
    # A fresh workspace: the launcher, not the notebook the test above left open.
    url = f"{lab.url}/lab/workspaces/log-hygiene?reset&token={lab.token}"
    await page.goto(url, timeout=TIMEOUT_MS)
    await page.locator(
        f".jp-LauncherCard[data-category='Notebook'][title='{KERNEL_DISPLAY_NAME}']"
    ).click(timeout=TIMEOUT_MS)
    await wait_kernel_idle(page)
    await run_cell(page, "1 / 0")
    await run_cell(page, "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass")
    await wait_kernel_idle(page)
    await page.goto("about:blank")  # closes the kernel's WebSockets
    for name, text in (("gateway", lab.gateway.log_text()), ("JupyterLab", lab.log_text())):
        noisy = [
            line
            for line in text.splitlines()
            if any(n in line for n in LOG_NOISE) and not any(k in line for k in KNOWN)
        ]
        assert noisy == [], f"{name} log:\n{text}"
