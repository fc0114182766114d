"""Uploads never touch disk, and a closed tab's upload leaves the server (issue 12 "Seen" 2, 7).

Through a real ``streamlit run app.py`` and headless Chromium: Starlette used to spool every
upload over 1 MiB to a (deleted) temp file in ``$TMPDIR``; the server now keeps parts in
memory (``ui.uploads.keep_uploads_in_memory``). Closed sessions used to keep their uploads
until another session connected; the janitor (``ui.uploads.start_janitor``) now closes
sessions disconnected for longer than the grace period.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from apphelpers import assert_no_exception, wait_for_app

pytestmark = pytest.mark.e2e


def adapter_files(mb: int) -> list[dict]:
    """A PEFT adapter of about ``mb`` MiB (float32), written by the real safetensors writer."""
    rng = np.random.default_rng(0)
    d, r = 1024, 16
    n = max(1, mb * (1 << 20) // (2 * d * r * 4))
    tensors = {}
    for i in range(n):
        stem = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((r, d), dtype=np.float32)
        tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((d, r), dtype=np.float32)
    config = b'{"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]}'
    return [{"name": "adapter_model.safetensors", "mimeType": "application/octet-stream",
             "buffer": safetensors.numpy.save(tensors)},
            {"name": "adapter_config.json", "mimeType": "application/json", "buffer": config}]


def server_pid(port: int) -> int:
    """The PID of the process listening on ``port`` (the streamlit server)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "0A":
                inode = parts[9]
    assert inode, f"nothing listens on {port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no process owns port {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class FdWatcher(threading.Thread):
    """Polls a process's open files for anything inside ``folder`` (spooled temp files are
    unnamed on Linux, O_TMPFILE or deleted, but their descriptors still point there)."""

    def __init__(self, pid: int, folder: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.folder, self.seen, self.done = pid, str(folder), set(), threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for fd in os.listdir(f"/proc/{self.pid}/fd"):
                    try:
                        target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                    except OSError:
                        continue
                    if target.startswith(self.folder):
                        self.seen.add(target)
            except OSError:
                pass
            time.sleep(0.002)


def test_upload_bytes_never_reach_the_temp_folder(page, fresh_server, tmp_path, monkeypatch):
    """A 24 MiB upload is parsed without one file opened in the server's ``$TMPDIR``."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    url = fresh_server()
    pid = server_pid(int(url.rsplit(":", 1)[1]))
    page.goto(f"{url}/Adapter_audit")
    wait_for_app(page)
    watcher = FdWatcher(pid, spool)
    watcher.start()
    page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(
        files=adapter_files(24))
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]',
                           timeout=300_000)
    wait_for_app(page, timeout=300_000)
    watcher.done.set()
    watcher.join(5)
    assert_no_exception(page)
    assert watcher.seen == set(), watcher.seen
    assert list(spool.iterdir()) == []


def test_closed_tab_releases_its_upload(browser, fresh_server, monkeypatch):
    """Upload 64 MiB, close the tab: within grace + a janitor pass, server memory drops back."""
    monkeypatch.setenv("LORARANK_DISCONNECTED_GRACE_SECONDS", "2")
    monkeypatch.setenv("LORARANK_JANITOR_INTERVAL_SECONDS", "1")
    url = fresh_server()
    pid = server_pid(int(url.rsplit(":", 1)[1]))
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{url}/Adapter_audit")
    wait_for_app(page)
    before = rss_mb(pid)
    files = adapter_files(64)
    size = len(files[0]["buffer"]) / 2**20
    page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(files=files)
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]',
                           timeout=300_000)
    wait_for_app(page, timeout=300_000)
    holding = rss_mb(pid)
    assert holding - before > 0.8 * size  # the server holds the upload while the tab is open
    context.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and rss_mb(pid) - before > 0.5 * size:
        time.sleep(0.5)
    after = rss_mb(pid)
    assert after - before <= 0.5 * size, (before, holding, after, size)
