"""ipywidgets, tqdm.notebook and the debugger in JupyterLab on a kcr kernel (headless Chromium).

What a user does, on kcr-gateway through ``--gateway-url``: move an
``IntSlider`` and watch the ``interact`` output it drives change; show a
``tqdm.notebook`` progress bar; turn the debugger on, set a breakpoint in a
cell, run it, and see the paused cell's variable in the Variables panel.
These need the Python worker to run ipykernel's own kernel (comms, the
debugpy-based debugger). Screenshots of every step are saved as test artifacts.
"""

from __future__ import annotations

import pytest

from tests.browser.test_jupyterlab import (
    KERNEL_DISPLAY_NAME,
    TIMEOUT_MS,
    output_area,
    run_cell,
    wait_kernel_idle,
)
from tests.jupyter_server.servers import http_get_json

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def lab_ready(lab):
    """The module's JupyterLab after one kernelspec listing: Jupyter Server adopts the
    gateway's default kernel (kcr-python) only when it first lists the gateway's specs, and a
    notebook opened before that gets its kernel replaced right after it connects (a cell run
    in that moment is lost). See docs/jupyterlab.md, "Things you may notice"."""
    specs = http_get_json(f"{lab.url}/api/kernelspecs", lab.token)
    assert "kcr-python" in specs["kernelspecs"], specs
    return lab


NOTEBOOK = ".jp-NotebookPanel:visible"


async def open_notebook(page, lab) -> None:
    # ?reset: a fresh workspace (no tabs of an earlier test restored, the launcher shown)
    await page.goto(f"{lab.url}/lab?reset&token={lab.token}", timeout=TIMEOUT_MS)
    card = page.locator(
        f".jp-LauncherCard[data-category='Notebook'][title='{KERNEL_DISPLAY_NAME}']"
    )
    await card.click(timeout=TIMEOUT_MS)
    await wait_kernel_idle(page)
    await kernel_settled(page)


async def kernel_settled(page) -> None:
    """Run a probe cell until it prints. Seen now and then on a new Lab server: the first
    notebook's kernel is replaced right after it connects, and JupyterLab resets a cell that
    was sent in that moment to ``[ ]`` without output; a user runs it again, so does this."""
    from playwright.async_api import expect

    for _ in range(3):
        await run_cell(page, "print('kcr-ready')")
        try:
            await expect(output_area(page).last).to_contain_text("kcr-ready", timeout=15_000)
            return
        except AssertionError:
            continue
    await expect(output_area(page).last).to_contain_text("kcr-ready")


async def turn_debugger_on(page, bug) -> None:
    """Click the bug icon until the debugger is on. While the notebook connects, JupyterLab
    re-checks the kernel a few times (a ``debugInfo`` request each) and re-renders the
    button; a click that lands between two checks is lost, so look and click again."""
    from playwright.async_api import expect

    for _ in range(5):
        await expect(bug).to_be_enabled()
        if await bug.get_attribute("aria-pressed") == "true":
            return
        await bug.click()
        try:
            await expect(bug).to_have_attribute("aria-pressed", "true", timeout=3000)
            return
        except AssertionError:
            continue
    await expect(bug).to_have_attribute("aria-pressed", "true")


async def test_slider_drives_interact_and_tqdm_shows_a_bar(lab_ready, page, artifacts):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    await open_notebook(page, lab_ready)

    await run_cell(
        page,
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=3, min=0, max=10, description='n')\n"
        "out = widgets.interact(lambda n: print(f'square={n * n}'), n=slider)",
    )
    widget = page.locator(f"{NOTEBOOK} .jp-OutputArea-output .widget-slider").first
    await expect(widget).to_be_visible()
    await expect(output_area(page).last).to_contain_text("square=9")
    await page.screenshot(path=str(artifacts / "widgets-01-slider.png"))

    # Move the slider as a user does with the keyboard: focus its handle, one step right.
    handle = widget.locator(".noUi-handle")
    await handle.click()
    await page.keyboard.press("ArrowRight")
    await expect(widget.locator(".widget-readout")).to_have_text("4")
    await expect(output_area(page).last).to_contain_text("square=16")
    await page.screenshot(path=str(artifacts / "widgets-02-moved.png"))

    await run_cell(
        page,
        "from tqdm.notebook import tqdm\nfor _ in tqdm(range(5), desc='kcr'): pass",
    )
    bar = page.locator(f"{NOTEBOOK} .jp-OutputArea-output .widget-hprogress").last
    await expect(bar).to_be_visible()
    await expect(output_area(page).last).to_contain_text("5/5")
    await page.screenshot(path=str(artifacts / "widgets-03-tqdm.png"))


async def test_debugger_stops_at_a_breakpoint_and_shows_a_variable(lab_ready, page, artifacts):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    await open_notebook(page, lab_ready)

    # The bug icon is enabled: kernel_info says the kernel supports debugging.
    bug = page.locator(f"{NOTEBOOK} .jp-DebuggerBugButton")
    await turn_debugger_on(page, bug)

    editor = page.locator(f"{NOTEBOOK} .jp-Cell .cm-content").last
    await editor.click()
    await page.keyboard.insert_text("a = 40\nb = a + 2\nprint(b)")
    # A breakpoint on line 2, from the editor's breakpoint gutter.
    cell = page.locator(f"{NOTEBOOK} .jp-Cell").last
    gutter = cell.locator(".cm-breakpoint-gutter .cm-gutterElement")
    await gutter.nth(2).click()  # element 0 is the gutter's spacer
    await expect(cell.locator(".cm-breakpoint-gutter .cm-gutterElement > *")).to_have_count(1)
    await page.screenshot(path=str(artifacts / "debugger-01-breakpoint.png"))
    await page.keyboard.press("Shift+Enter")

    variables = page.locator(".jp-DebuggerVariables")
    await expect(variables).to_contain_text("40")
    await expect(variables).to_contain_text("a")
    await page.screenshot(path=str(artifacts / "debugger-02-stopped.png"))

    # Continue: the cell finishes and prints.
    # (JupyterLab 4 puts the callstack's toolbar in the sidebar section's title bar)
    await page.locator("[data-command='debugger:continue']").first.click()
    await expect(output_area(page).last).to_have_text("42")
    await page.screenshot(path=str(artifacts / "debugger-03-continued.png"))
