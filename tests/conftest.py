"""Fixtures shared by every test module."""

import functools
import sys

import pytest


@pytest.fixture(autouse=True)
def empty_streamlit_cache():
    """Tests that run Streamlit code start and end with an empty st.cache_data.

    It persists across AppTest runs in one process; engine-only tests never import streamlit,
    and this fixture does not import it for them.
    """
    st = sys.modules.get("streamlit")
    if st is not None:
        st.cache_data.clear()
    yield
    st = sys.modules.get("streamlit")
    if st is not None:
        st.cache_data.clear()


@pytest.fixture(autouse=True)
def scan_components_once():
    """Streamlit's component scan runs once per test process, not once per AppTest.

    Every new ``AppTest`` reads the metadata of every installed distribution looking for v2
    component manifests (0.3-1.5 s each on a 2-core machine, ~150 AppTests). The installed
    packages do not change during a run, so the first real scan's answer is reused.
    """
    if "streamlit" in sys.modules:
        from streamlit.components.v2 import manifest_scanner

        scan = manifest_scanner.scan_component_manifests
        if not hasattr(scan, "cache_info"):
            manifest_scanner.scan_component_manifests = functools.cache(scan)
    yield


@pytest.fixture
def run_async():
    """``run_async(coro)``: ``asyncio.run(coro)`` in a thread of its own.

    A worker that ran browser tests before keeps Playwright's event loop running in the main
    thread (its fixtures live for the whole session), where ``asyncio.run`` refuses to start.
    """
    import asyncio
    import concurrent.futures

    def run(coro):
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()

    return run
