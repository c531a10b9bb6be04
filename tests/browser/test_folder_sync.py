"""JupyterLab + kcr: the files next to the notebook are the kernel's files (headless Chromium).

What a user does, with kcr's Jupyter Server extension installed beside JupyterLab (it is
enabled by the package's ``jupyter_server_config.d`` file): upload ``data.csv`` with the
file browser's Upload button and read it in a kcr kernel, write ``out.png`` from the kernel
and see it appear in the file browser, rename a file in the file browser and read it by its
new name in the next cell.
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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


async def notebook_tab(page) -> None:
    """Bring the notebook to the front (the file browser may have opened another tab)."""
    await page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=".ipynb").first.click()


async def test_upload_read_write_rename(lab, page, artifacts, tmp_path):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    await page.goto(f"{lab.url}/lab?token={lab.token}", timeout=TIMEOUT_MS)
    card = page.locator(
        f".jp-LauncherCard[data-category='Notebook'][title='{KERNEL_DISPLAY_NAME}']"
    )
    await card.click()
    await wait_kernel_idle(page)

    # Upload with the file browser's Upload button.
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    async with page.expect_file_chooser() as chooser:
        await page.locator(".jp-FileBrowser-toolbar [data-jp-item-name='uploader'] button").click()
    await (await chooser.value).set_files(str(data))
    listing = page.locator(".jp-DirListing-content")
    await expect(listing.get_by_text("data.csv", exact=True)).to_be_visible()
    await notebook_tab(page)
    await run_cell(page, "print(open('data.csv').read().split()[1])")
    await expect(output_area(page).last).to_have_text("1,2")

    # A file the kernel writes shows up in the file browser.
    await run_cell(
        page,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.savefig('out.png'); plt.close()",
    )
    await wait_kernel_idle(page)
    assert (lab.root_dir / "out.png").read_bytes()[:4] == b"\x89PNG"
    await page.locator(".jp-FileBrowser-toolbar [data-jp-item-name='refresh'] button").click()
    await expect(listing.get_by_text("out.png", exact=True)).to_be_visible()
    await page.screenshot(path=str(artifacts / "folder-sync-out-png.png"))

    # Rename in the file browser; the next cell reads the new name.
    await listing.get_by_text("data.csv", exact=True).click(button="right")
    await page.locator(".lm-Menu-item[data-command='filebrowser:rename']").click()
    editor = page.locator(".jp-DirListing-editor")
    await editor.fill("renamed.csv")
    await editor.press("Enter")
    await expect(listing.get_by_text("renamed.csv", exact=True)).to_be_visible()
    await notebook_tab(page)
    await run_cell(
        page, "import os; print(open('renamed.csv').read().split()[1], os.path.exists('data.csv'))"
    )
    await expect(output_area(page).last).to_have_text("1,2 False")
    await page.screenshot(path=str(artifacts / "folder-sync-renamed.png"))
