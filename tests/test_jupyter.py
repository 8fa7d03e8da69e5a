"""JupyterLab opens the notebooks: notebook 00, run in headless Chromium through the page, works.

Starts JupyterLab on 127.0.0.1 (a free port, a token, temporary Jupyter folders) in a copy of the
repository (utils/ and notebooks/) under a temporary folder, so the demo dataset notebook 00 makes
never touches the working tree. Selenium drives Debian's ``chromium`` with its ``chromedriver``
(``apt-get install chromium chromium-driver``; ``.ci/run`` installs them); the test is skipped,
saying so, only where they are missing. Selenium Manager is never asked for a driver.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")
NOTEBOOK = "notebooks/00_explore_dataset.ipynb"

# Each code cell's prompt ("[3]:", "[*]:", "[ ]:"), the stderr/error outputs, and the figures.
PAGE_STATE = """
const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')];
return {
  prompts: cells.map(c => c.querySelector('.jp-InputArea-prompt').textContent.trim()),
  stderr: [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
          .map(e => e.textContent.slice(0, 500)),
  images: [...document.querySelectorAll('.jp-OutputArea-output img')].map(i => {
      const box = i.getBoundingClientRect();
      return [i.naturalWidth, i.naturalHeight, box.width, box.height];
  }),
};
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def server_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_jupyterlab(repo: Path, tmp: Path, port: int, token: str, log) -> subprocess.Popen:
    """JupyterLab serving ``repo``, with every Jupyter folder (config, runtime, settings) under ``tmp``."""
    settings = tmp / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Attach every cell to the page, so that the figures of cells below the fold are laid out too.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"), "IPYTHONDIR": str(tmp / "ipython"),
           "PYTHONPATH": str(repo)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)   # what a user's shell has: utils/ must keep the kernel quiet
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={repo}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]   # no look-ups on the internet
    if hasattr(os, "geteuid") and os.geteuid() == 0:   # CI containers run as root
        command.append("--allow-root")
    return subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def chromium_driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which would download one) is skipped.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def run_all_cells(driver) -> None:
    """Run > Run All Cells, through the menu bar, as a user would, once the notebook is open."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def labelled(selector: str, text: str):
        return [e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.text == text]

    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell"), 60,
             "the notebook's cells")

    def open_menu_and_click():
        menu = labelled(".lm-MenuBar-itemLabel", "Run")
        if not menu:
            return False
        menu[0].click()
        time.sleep(0.5)
        item = labelled(".lm-Menu-itemLabel", "Run All Cells")
        if item:
            item[0].click()
            return True
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)   # opened too early: close, retry
        return False

    wait_for(open_menu_and_click, 60, "Run > Run All Cells", interval=1)


@pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
def test_jupyterlab_runs_notebook_00_in_a_browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")   # Selenium Manager, should anything call it, stays offline
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for folder in ("utils", "notebooks"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=ignore)
    n_figures = sum("plt.show()" in "".join(cell["source"])
                    for cell in json.loads((repo / NOTEBOOK).read_text())["cells"] if cell["cell_type"] == "code")

    port, token = free_port(), "test-token"
    log_file = tmp_path / "jupyterlab.log"
    with open(log_file, "w") as log:
        server = start_jupyterlab(repo, tmp_path, port, token, log)
    driver = None
    try:
        wait_for(lambda: server.poll() is not None or server_up(f"http://127.0.0.1:{port}/api/status?token={token}"),
                 60, "JupyterLab to start")
        assert server.poll() is None, log_file.read_text()[-3000:]
        driver = chromium_driver(tmp_path / "chromium-profile")
        driver.get(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?reset&token={token}")
        run_all_cells(driver)

        def finished():   # every cell ran, or the run stopped at an error (no cell queued or running)
            state = driver.execute_script(PAGE_STATE)
            ran = state["prompts"] and all(p.strip("[]:").isdigit() for p in state["prompts"])
            stopped = state["stderr"] and not any("*" in p for p in state["prompts"])
            return state if ran or stopped else None

        state = wait_for(finished, 90, "every code cell of notebook 00 to have an execution count")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    assert state["stderr"] == [], f"error or stderr outputs in the page: {state['stderr']}"
    assert all(p.strip("[]:").isdigit() for p in state["prompts"]), state["prompts"]
    assert len(state["images"]) == n_figures, state["images"]
    for natural_width, natural_height, width, height in state["images"]:
        assert min(natural_width, natural_height, width, height) > 0, state["images"]
