"""The views in a real browser: JupyterLab + headless Chromium (Debian's, launched by path) via Playwright.

Opens tests/browser_notebooks/views.ipynb, runs all cells through the Run menu (``runmenu:run-all``),
waits for the widgets, checks that sliders and plotly plots rendered, moves the clip explorer's Ĩ
slider with the keyboard and checks that the plot and the readout changed, and saves screenshots to
``$A2TGPO_SCREENSHOT_DIR`` (or the test's tmp dir). Skipped, with the reason, when Chromium,
Playwright or JupyterLab is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(__file__).parent / "browser_notebooks" / "views.ipynb"
# The first-run "Jupyter news" toast would cover part of the screenshot.
DISABLED = {"@jupyterlab/apputils-extension:announcements": True}


def chromium_path() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server in a temp dir holding the test notebook; yields its URL; killed at the end."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); Playwright cannot download one here")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if shutil.which("jupyter") is None:
        pytest.skip("jupyter (JupyterLab) is not installed")
    root, config = tmp_path / "notebooks", tmp_path / "config"
    root.mkdir()
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": DISABLED}))
    # Start the notebook's kernel without asking (JupyterLab otherwise shows a "Select Kernel" dialog).
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--allow-root", "--IdentityProvider.token=", "--ServerApp.password=", "--LabApp.news_url=None",
         f"--ServerApp.root_dir={root}"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(0.25)
        yield url
    finally:
        # The server and its kernel run in their own process group: end that group, by its id.
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def line_paths(plot) -> list[str]:
    """The ``d`` attributes of the line traces of a plotly plot (a Playwright locator)."""
    return plot.locator("path.js-line").evaluate_all("paths => paths.map(p => p.getAttribute('d'))")


def test_views_render_and_respond_in_jupyterlab(jupyter_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("A2TGPO_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            drive_the_notebook(page, jupyter_lab, shots)
        except Exception:
            page.screenshot(path=str(shots / "failure.png"))   # what the browser showed when it failed
            raise
        finally:
            browser.close()
    assert (shots / "clip_explorer.png").stat().st_size > 10_000


def drive_the_notebook(page, url: str, shots: Path) -> None:
    """Open the notebook, run all cells, check the widgets rendered, move a slider, take screenshots."""
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
    # The kernel (auto-started, see the fixture) reports idle in the status bar: the notebook is ready.
    page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=30_000)
    page.keyboard.press("Control+b")                   # hide the file browser: more room for the outputs

    # Run all cells through the Run menu: the command runmenu:run-all.
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()

    # Widgets: the clip explorer's sliders and figure, the dashboard's figures.
    page.wait_for_selector(".jp-OutputArea-output .widget-slider >> nth=4", timeout=45_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=30_000)
    assert page.locator(".jp-OutputArea-output .widget-slider").count() == 5   # 4 in the explorer, 1 step slider
    # Plotly draws asynchronously: wait for the explorer's curves (objective, unclipped, gradient; two panels).
    page.wait_for_function("document.querySelector('.js-plotly-plot').querySelectorAll('path.js-line').length >= 6",
                           timeout=30_000)
    explorer_plot = page.locator(".js-plotly-plot").first
    before_paths = line_paths(explorer_plot)
    readout = page.locator(".widget-html", has_text="adaptive band").first
    before_readout = readout.inner_text()

    # Move the Ĩ slider with the keyboard: focus its handle and press End (its maximum, 4).
    slider = page.locator(".widget-slider", has=page.locator("label", has_text="Ĩ")).first
    slider.scroll_into_view_if_needed()
    slider.locator(".noUi-handle").focus()
    page.keyboard.press("End")
    page.wait_for_function("([el, old]) => el.innerText !== old", arg=[readout.element_handle(), before_readout],
                           timeout=15_000)
    page.wait_for_function("([plot, old]) => Array.from(plot.querySelectorAll('path.js-line'), "
                           "p => p.getAttribute('d')).join() !== old.join()",
                           arg=[explorer_plot.element_handle(), before_paths], timeout=15_000)
    assert "c = 1.2892" in readout.inner_text()        # Ĩ = 4: c = 1 + 0.3·tanh(2)
    assert line_paths(explorer_plot) != before_paths
    page.screenshot(path=str(shots / "clip_explorer.png"))

    dashboard_plot = page.locator(".js-plotly-plot").nth(1)
    dashboard_plot.scroll_into_view_if_needed()
    page.wait_for_function("plot => plot.querySelectorAll('path.js-line').length >= 6",   # the training curves
                           arg=dashboard_plot.element_handle(), timeout=30_000)
    page.screenshot(path=str(shots / "dashboard.png"))

    # Record tabs are drawn when opened: the group heatmap, then the token-by-token rollout view.
    page.locator(".lm-TabBar-tab", has_text="IG groups").click()
    heatmap = page.locator(".js-plotly-plot .hm image").first
    heatmap.wait_for(timeout=30_000)
    heatmap.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "dashboard_groups.png"))
    page.locator(".lm-TabBar-tab", has_text="rollouts").click()
    page.wait_for_function("document.querySelectorAll('.a2tgpo-rollout span').length > 50", timeout=30_000)
    page.locator(".a2tgpo-rollout").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "dashboard_rollout.png"))
