"""Fixtures for tests that run the real huggingface_hub against tests/hubserver.FakeHub.

Import them into a test module (``from hubfixtures import client, endpoint, hub``): the module
gets the client (imported when its tests run, not at collection: it weighs ~25 MB, and
tests/hostile measures children's peak memory, which includes the parent's), one loopback Hub
for the module, and every test pointed at it with the request log cleared.
"""

from __future__ import annotations

import pytest

from hubserver import FakeHub, point_client_at

__all__ = ["client", "hub", "endpoint"]


@pytest.fixture(scope="module", autouse=True)
def client():
    """The real huggingface_hub (the tests skip with the reason without it)."""
    return pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def hub():
    """A loopback stand-in for the Hub's API, for the test module."""
    with FakeHub() as server:
        yield server


@pytest.fixture(autouse=True)
def endpoint(hub, monkeypatch):
    """Point the client at the fake Hub (tests/hubserver.point_client_at)."""
    point_client_at(hub.url, monkeypatch)
    hub.requests.clear()
    yield
