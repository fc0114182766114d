"""Helpers for browser tests of the app: the server process and waits (see conftest.py).

Import them in a test module of this folder with ``from apphelpers import wait_for_app``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
STARTUP_TIMEOUT = 30.0

__all__ = ["REPO", "CHROMIUM", "CHROMIUM_ARGS", "AppServer", "free_port", "wait_for_app", "wait_for_any", "visit",
           "open_tab", "set_number", "assert_no_exception", "alerts_are_inert", "input_value", "error_sentences",
           "uploader", "adapter_uploader", "download", "zipped_adapter"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as the OS hands it out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """A ``streamlit run app.py`` subprocess on a free port; ``stop()`` ends it by its PID.

    ``env``: variables added to this process's environment for the server (``TMPDIR``,
    ``LORARANK_*`` limits). ``base_url_path``: ``server.baseUrlPath`` (the app is then served
    under ``url + "/" + base_url_path``; ``url`` stays the origin).
    """

    def __init__(self, log_path: Path, *, script: str = "app.py",
                 env: dict[str, str] | None = None, base_url_path: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._health = f"{self.url}/{base_url_path.strip('/') + '/' if base_url_path.strip('/') else ''}_stcore/health"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(self.port),
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               *(["--server.baseUrlPath", base_url_path] if base_url_path else [])]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     env=None if env is None else {**os.environ, **env})
        self.started = time.perf_counter()
        self.healthy_after = self._wait_healthy()

    def _wait_healthy(self) -> float:
        deadline = time.perf_counter() + STARTUP_TIMEOUT
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self._health, timeout=1) as resp:
                    if resp.read().decode().strip() == "ok":
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"streamlit not healthy after {STARTUP_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        """The server's output so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate, wait up to 10 s, then kill."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def wait_for_app(page, *, timeout: float = 60_000) -> None:
    """Wait until the app is connected, its script has finished and no skeleton is left."""
    page.wait_for_timeout(200)
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]',
                           timeout=timeout)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                           timeout=timeout)
    page.wait_for_function('document.querySelectorAll(\'[data-testid="stSkeleton"]\').length === 0',
                           timeout=timeout)


def wait_for_any(page, *test_ids: str, timeout: float = 90_000) -> None:
    """Wait until an element with one of the ``data-testid`` values shows (``"stDataFrame"``,
    ``"stAlertContentError"``: a result or its error), then for the run to end."""
    page.wait_for_selector(", ".join(f'[data-testid="{t}"]' for t in test_ids), timeout=timeout)
    wait_for_app(page)


def visit(page, url: str, shot=None, name: str = "") -> None:
    """Open ``url`` and wait for its run to end; with the ``shot`` fixture, save screenshot
    ``name``; then check that no exception box shows."""
    page.goto(url)
    wait_for_app(page)
    if shot is not None:
        shot(page, name)
    assert_no_exception(page)


def open_tab(page, name: str) -> None:
    """Open the page's tab ``name`` and wait for the rerun that draws it.

    A tab draws its charts and tables only when open (``ui.layout.sections``), so a click
    reruns the page. The URL's ``tab`` parameter changes while that run is under way (it names
    the tab, or goes away for the default one): wait for it, then for the run to end. A tab
    already open is only waited for.
    """
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.get_attribute("aria-selected") != "true":
        before = page.evaluate("new URLSearchParams(location.search).get('tab')")
        tab.click()
        page.wait_for_function("b => new URLSearchParams(location.search).get('tab') !== b",
                               arg=before)
    wait_for_app(page)


def set_number(page, key: str, value: object) -> None:
    """Type ``value`` into the number input with widget key ``key`` and commit it (Enter)."""
    box = page.locator(f".st-key-{key}").get_by_test_id("stNumberInput").locator("input")
    box.fill(str(value))
    box.press("Enter")
    wait_for_app(page)


def assert_no_exception(page) -> None:
    """The page shows no Streamlit exception box (no traceback)."""
    assert page.get_by_test_id("stException").count() == 0


def alerts_are_inert(page) -> list[str]:
    """The texts of the page's alert boxes (at least one), after checking that none renders
    markup from what a user sent: no link, image, KaTeX or coloured span ("RED") inside."""
    alerts = page.get_by_test_id("stAlert")
    assert alerts.count() >= 1
    for i in range(alerts.count()):
        alert = alerts.nth(i)
        html = alert.inner_html()
        assert alert.locator("a").count() == 0, html
        assert alert.locator("img").count() == 0, html
        assert alert.locator(".katex").count() == 0, html
        assert "RED" not in "".join(alert.locator("span[style*='color']").all_inner_texts()), html
    return alerts.all_inner_texts()


def download(page, button, path: Path) -> Path:
    """Click ``button`` (a locator, or the accessible name of a button) and save the file it
    sends at ``path``."""
    if isinstance(button, str):
        button = page.get_by_role("button", name=button)
    with page.expect_download() as info:
        button.click()
    info.value.save_as(path)
    return path


def zipped_adapter(path: Path, folder: str) -> tuple[dict, dict]:
    """``(tensors, config)`` of the PEFT adapter saved in folder ``folder`` of the zip at ``path``."""
    import json
    import zipfile

    from safetensors.numpy import load

    with zipfile.ZipFile(path) as archive:
        return (load(archive.read(f"{folder}/adapter_model.safetensors")),
                json.loads(archive.read(f"{folder}/adapter_config.json")))


def uploader(page, key: str):
    """The file input of the uploader with widget key ``key`` (exactly one, else Playwright's
    strict mode fails the test): ``uploader(page, "audit_upload_b").set_input_files(files=...)``.

    The Adapter audit page has several uploaders (the adapter, the compare adapter B, the base
    weights, the series run), so a test names the one it means rather than taking the first.
    """
    return page.locator(f".st-key-{key}").get_by_test_id("stFileUploaderDropzoneInput")


def adapter_uploader(page):
    """The Adapter audit page's adapter uploader, whatever its generation.

    Its key is ``audit_upload`` and gains a suffix (``audit_upload_1``, ``_2``, ...) each time
    files are taken in (:func:`ui.loaded.uploader_key`), so it cannot be named by one key; the
    other uploaders' keys (``audit_upload_b``, ``audit_upload_base``, ``audit_series_upload``)
    are not matched.
    """
    keys = ", ".join([".st-key-audit_upload"] + [f".st-key-audit_upload_{g}" for g in range(1, 100)])
    return page.locator(f":is({keys})").get_by_test_id("stFileUploaderDropzoneInput")


def input_value(page, key: str) -> str:
    """Current text of the text or number input with widget key ``key``."""
    return page.locator(f".st-key-{key} input").first.input_value()


def error_sentences(page) -> list[str]:
    """The texts of the page's ``st.error`` boxes, stripped (code spans render without backticks)."""
    alerts = page.get_by_test_id("stAlertContentError")
    return [t.strip() for t in alerts.get_by_test_id("stMarkdownContainer").all_inner_texts()]
