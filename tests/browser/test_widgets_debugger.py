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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

#: Observed with the ipykernel worker merged (ipykernel-worker at cdba8f1): through
#: JupyterLab -> Jupyter Server's GatewayClient -> kcr-gateway, the interact output prints
#: but the slider stays at "Loading widget..." (its comm_open never reaches the frontend's
#: widget manager), and the bug icon stays disabled (JupyterLab does not see a kernel that
#: supports debugging). The same features pass through a direct gateway WebSocket
#: (tests/gateway/test_ipykernel_features.py) and through the provisioner. strict: when the
#: path through Jupyter Server works, these pass and the mark must go.
NEEDS_SERVER_PATH = pytest.mark.xfail(
    strict=True,
    reason="widgets and the debugger do not reach JupyterLab through Jupyter Server's "
    "gateway client yet (see the comment above)",
)

NOTEBOOK = ".jp-NotebookPanel:visible"


async def open_notebook(page, lab) -> None:
    await page.goto(f"{lab.url}/lab?token={lab.token}", timeout=TIMEOUT_MS)
    card = page.locator(
        f".jp-LauncherCard[data-category='Notebook'][title='{KERNEL_DISPLAY_NAME}']"
    )
    await card.click(timeout=TIMEOUT_MS)
    await wait_kernel_idle(page)


@NEEDS_SERVER_PATH
async def test_slider_drives_interact_and_tqdm_shows_a_bar(lab, page, artifacts):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    await open_notebook(page, lab)

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


@NEEDS_SERVER_PATH
async def test_debugger_stops_at_a_breakpoint_and_shows_a_variable(lab, page, artifacts):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    await open_notebook(page, lab)

    # The bug icon is enabled: kernel_info says the kernel supports debugging.
    bug = page.locator(f"{NOTEBOOK} .jp-DebuggerBugButton")
    await expect(bug).to_be_enabled()
    await bug.click()
    await expect(bug).to_have_attribute("aria-pressed", "true")

    editor = page.locator(f"{NOTEBOOK} .jp-Cell .cm-content").last
    await editor.click()
    await page.keyboard.insert_text("a = 40\nb = a + 2\nprint(b)")
    # A breakpoint on line 2, from the editor's breakpoint gutter.
    gutter = page.locator(f"{NOTEBOOK} .jp-Cell .cm-breakpoint-gutter .cm-gutterElement")
    await gutter.nth(2).click()  # element 0 is the gutter's spacer
    await expect(
        page.locator(f"{NOTEBOOK} .jp-Cell .cm-breakpoint-gutter .cm-gutterElement > *")
    ).to_have_count(1)
    await page.screenshot(path=str(artifacts / "debugger-01-breakpoint.png"))
    await page.keyboard.press("Shift+Enter")

    variables = page.locator(".jp-DebuggerVariables")
    await expect(variables).to_contain_text("40")
    await expect(variables).to_contain_text("a")
    await page.screenshot(path=str(artifacts / "debugger-02-stopped.png"))

    # Continue: the cell finishes and prints.
    await page.locator(".jp-DebuggerCallstack [data-command='debugger:continue']").click()
    await expect(output_area(page).last).to_have_text("42")
    await page.screenshot(path=str(artifacts / "debugger-03-continued.png"))
