"""Work for a closed tab stops (issue 12 "Seen" 3: a core stayed at 100 % after closing).

A real server and headless Chromium: a long sweep starts (the ask threshold is raised for this
server so it runs unasked), the tab is closed mid-run, and the server's CPU time must stop
growing within a few seconds: the progress callback sees the session is gone.
"""

from __future__ import annotations

import os
import time

import pytest

from apphelpers import wait_for_app  # noqa: F401  (fixtures come from conftest)
from test_uploads_e2e import server_pid

pytestmark = pytest.mark.e2e


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_closing_the_tab_stops_the_fit(browser, fresh_server, monkeypatch):
    monkeypatch.setenv("LORARANK_ASK_SECONDS", "100000")
    monkeypatch.setenv("LORARANK_MAX_SECONDS", "100000")
    url = fresh_server()
    pid = server_pid(int(url.rsplit(":", 1)[1]))
    context = browser.new_context()
    page = context.new_page()
    # About a minute of work on a quiet machine: d = 256, Adam, 20000 steps at three ranks,
    # with a progress tick every 600 steps (a second or so).
    page.goto(f"{url}/Rank_sweep?d_out=256&d_in=256&optimizer=adam&steps=20000&ranks=16,32,64")
    page.wait_for_selector('[data-testid="stProgress"]', timeout=120_000)
    busy_from = cpu_seconds(pid)
    time.sleep(3)
    assert cpu_seconds(pid) - busy_from > 0.3  # it is working
    context.close()
    time.sleep(8)  # the disconnect, then the next progress tick (~1 % of the work)
    quiet_from = cpu_seconds(pid)
    time.sleep(10)
    spent = cpu_seconds(pid) - quiet_from
    assert spent < 1.0, f"the server used {spent:.1f} CPU s in 10 s after the tab closed"
