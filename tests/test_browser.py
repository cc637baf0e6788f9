"""The views in a real browser: JupyterLab + headless Chromium (Debian's, launched by path) via Playwright.

Both tests open a notebook of tests/browser_notebooks/ and run all cells through the Run menu
(``runmenu:run-all``), as a user would:

- views.ipynb: the clip explorer and an offline dashboard render; moving the explorer's Ĩ slider with
  the keyboard changes the plot and the readout; the dashboard's tabs draw when opened.
- live.ipynb: the last cell starts background training with a live dashboard. While it runs, the
  dashboard's plots hold traces in the DOM and change between two samples; pause stops the step
  counter ("paused after step N"); stop ends the run ("stopped after step N").

Screenshots go to ``$A2TGPO_SCREENSHOT_DIR`` (or the test's tmp dir). Skipped, with the reason, when
Chromium, Playwright or JupyterLab is missing.
"""
from __future__ import annotations

import contextlib
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
# Headless in a container: no sandbox, and none of Chromium's calls home.
BROWSER_FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-default-apps", "--disable-sync", "--no-first-run", "--metrics-recording-only"]


def chromium_path() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_without_browser() -> None:
    """Skip, with the reason, when Chromium, Playwright or JupyterLab is missing."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); Playwright cannot download one here")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if shutil.which("jupyter") is None:
        pytest.skip("jupyter (JupyterLab) is not installed")


@contextlib.contextmanager
def lab_server(tmp_path: Path, notebook: Path):
    """A JupyterLab server in a temp dir holding ``notebook``; yields its URL; killed at the end."""
    root, config = tmp_path / "notebooks", tmp_path / "config"
    root.mkdir()
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": DISABLED}))
    # Start the notebook's kernel without asking (JupyterLab otherwise shows a "Select Kernel" dialog).
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    shutil.copy(notebook, root / notebook.name)
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


@contextlib.contextmanager
def browser_page(shots: Path):
    """A headless Chromium page (Debian's, launched by path); a screenshot of it is saved on failure."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield page
        except Exception:
            page.screenshot(path=str(shots / "failure.png"))   # what the browser showed when it failed
            raise
        finally:
            browser.close()


def run_all(page, url: str, notebook: Path) -> None:
    """Open ``notebook`` in JupyterLab, wait for its kernel, and run all cells from the Run menu."""
    page.goto(f"{url}/lab/tree/{notebook.name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The kernel (auto-started, see lab_server) reports idle in the status bar: the notebook is ready.
    page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=90_000)
    page.keyboard.press("Control+b")                   # hide the file browser: more room for the outputs
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()


def line_paths(plot) -> list[str]:
    """The ``d`` attributes of the line traces of a plotly plot (a Playwright locator)."""
    return plot.locator("path.js-line").evaluate_all("paths => paths.map(p => p.getAttribute('d'))")


def screenshot_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("A2TGPO_SCREENSHOT_DIR") or tmp_path / "screenshots")


def test_views_render_and_respond_in_jupyterlab(tmp_path):
    skip_without_browser()
    shots = screenshot_dir(tmp_path)
    with lab_server(tmp_path, NOTEBOOK) as url, browser_page(shots) as page:
        drive_the_notebook(page, url, shots)
    assert (shots / "clip_explorer.png").stat().st_size > 10_000


def drive_the_notebook(page, url: str, shots: Path) -> None:
    """Run all cells, check the widgets rendered, move a slider, take screenshots."""
    run_all(page, url, NOTEBOOK)

    # Widgets: the clip explorer's sliders and figure, the dashboard's figures.
    page.wait_for_selector(".jp-OutputArea-output .widget-slider >> nth=4", timeout=120_000)
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


LIVE_NOTEBOOK = Path(__file__).parent / "browser_notebooks" / "live.ipynb"
# For each plotly plot on the page: how many traces the browser holds, and a fingerprint of their data.
PLOTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot'), plot => ({
    traces: (plot.data || []).length,
    points: (plot.data || []).reduce((n, trace) => n + ((trace.y || []).length || 0), 0),
}))"""


def dashboard_status(page) -> str:
    return page.locator(".a2tgpo-status").first.inner_text()


def status_step(page) -> int:
    """The step counter of the dashboard's status line ("… step 12 / 400 …")."""
    import re

    match = re.search(r"step (\d+)", dashboard_status(page))
    return int(match.group(1)) if match else -1


def test_live_dashboard_draws_while_training_in_jupyterlab(tmp_path):
    """Run All starts background training with a dashboard: the plots fill in and change while it runs,
    pause stops the step counter, stop ends the run."""
    skip_without_browser()
    shots = screenshot_dir(tmp_path)
    with lab_server(tmp_path, LIVE_NOTEBOOK) as url, browser_page(shots) as page:
        run_all(page, url, LIVE_NOTEBOOK)
        page.wait_for_selector(".a2tgpo-status", timeout=90_000)
        # The training-curves plot holds traces in the DOM once a few steps have run.
        page.wait_for_function(f"({PLOTS_JS})().some(p => p.traces > 0 && p.points >= 3)", timeout=120_000)
        first = page.evaluate(PLOTS_JS)
        first_step = status_step(page)
        page.wait_for_function("s => /step (\\d+)/.exec(document.querySelector('.a2tgpo-status').innerText)[1] > s",
                               arg=first_step + 2, timeout=60_000)
        second = page.evaluate(PLOTS_JS)
        assert second != first, "the plots did not change while training ran"
        assert any(plot["traces"] > 0 for plot in second)
        page.locator(".a2tgpo-status").first.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "live_dashboard.png"))

        page.locator("button", has_text="pause").first.click()
        page.wait_for_function("document.querySelector('.a2tgpo-status').innerText.includes('paused after step')",
                               timeout=60_000)
        paused_at = status_step(page)
        page.wait_for_timeout(3_000)       # a running trainer finishes a step in well under this
        assert status_step(page) == paused_at, "the step counter moved while paused"
        page.screenshot(path=str(shots / "live_paused.png"))

        page.locator("button", has_text="stop").first.click()
        page.wait_for_function("document.querySelector('.a2tgpo-status').innerText.includes('stopped')",
                               timeout=60_000)
        page.screenshot(path=str(shots / "live_stopped.png"))
