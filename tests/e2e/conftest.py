"""Fixtures for browser tests: a real ``streamlit run app.py`` server and headless Chromium.

How to use them in ``tests/e2e/test_<page>_e2e.py``::

    import pytest
    from apphelpers import set_number, wait_for_app

    pytestmark = pytest.mark.e2e

    def test_page_renders(page, app_url, shot):
        page.goto(f"{app_url}/Adapter_audit")
        wait_for_app(page)
        assert page.get_by_test_id("stException").count() == 0
        shot(page, "audit")                       # PNG under the test's tmp dir

    def test_cold_link(page, fresh_server, shot):
        url = fresh_server()                      # a new server; its first request is yours
        page.goto(f"{url}/Adapter_audit?rule=sv_ratio")
        wait_for_app(page)
        ...

Fixtures
--------
``app_server`` / ``app_url`` (session)
    One server for the whole session, started from the repository root with
    ``--server.fileWatcherType none``; ``app_url`` is ``http://127.0.0.1:PORT``.
``fresh_server`` (function)
    A factory: each call starts another server and returns its URL; all are stopped when
    the test ends. Use it for cold deep links (the first request a server ever sees).
``browser_type_launch_args`` (session)
    Overrides pytest-playwright's: Debian's ``/usr/bin/chromium`` (or ``$CHROMIUM_PATH``) with
    flags that work as root without network.
``shot`` (function)
    ``shot(page, name)`` saves a full-page screenshot to ``<tmp_path>/<name>.png`` and returns
    the path; look at them while developing.

Helpers (``apphelpers.py``)
---------------------------
``wait_for_app(page)``: wait until the script run finished (connected, not running, no
skeleton), as Streamlit's own e2e suite does. Call it after ``goto`` and every interaction.
``set_number(page, key, value)``: type into the number input whose widget key is ``key`` and
commit with Enter. ``visit(page, url, shot, name)``: open a link, wait, screenshot, and check
no exception box shows. ``wait_for_any(page, "stDataFrame", "stAlertContentError")``: a result
or its error. ``download(page, button, path)`` and ``zipped_adapter(path, folder)``: a download
and the PEFT adapter in a zip. ``alerts_are_inert(page)``: alert texts, checked to render no
markup. Helpers for every test folder (AppTest pages, samples, oracles) are in
``tests/testkit.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from apphelpers import CHROMIUM, CHROMIUM_ARGS, AppServer


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """Debian's Chromium, headless, with flags that work as root and offline."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True,
            "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """One real app server for the session."""
    server = AppServer(tmp_path_factory.mktemp("server") / "streamlit.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app_url(app_server: AppServer) -> str:
    """Base URL of the session's server, e.g. ``http://127.0.0.1:8765``."""
    return app_server.url


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Factory: start a new server per call (its first request is the test's), return its URL."""
    servers: list[AppServer] = []

    def start() -> str:
        server = AppServer(tmp_path / f"streamlit-{len(servers)}.log")
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    """A desktop-sized window and downloads allowed."""
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000},
            "accept_downloads": True}


@pytest.fixture
def shot(tmp_path: Path) -> Callable[..., Path]:
    """``shot(page, name)``: screenshot of the whole app saved as ``<tmp_path>/<name>.png``.

    Streamlit scrolls inside its main container, not the document, so the window is made as
    tall as the content for the shot and restored afterwards.
    """
    def take(page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        size = page.viewport_size
        height = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
            "[data-testid=\"stAppScrollToBottomContainer\"], [data-testid=\"stMainBlockContainer\"]')]"
            ".map(e => e.scrollHeight), window.innerHeight)")
        page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 8000)})
        page.wait_for_timeout(300)
        page.screenshot(path=str(path), full_page=True)
        page.set_viewport_size(size)
        return path
    return take
