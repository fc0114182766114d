"""Stress: N concurrent browser sessions against one ``streamlit run app.py``.

Run: ``python benchmarks/bench_stress.py [--sessions 1,4,8] [--layers 32] [--timeout 240]
[--grace 5]``.

For each N, a fresh server on 127.0.0.1 (loopback only) and one headless Chromium with N
contexts (separate sessions). Every session, at the same time: opens the Rank sweep (defaults)
and waits for its table, then alpha/r stability (defaults), then the Adapter audit with a
Llama-3-8B-shaped PEFT adapter in bfloat16 (84 MB with ``--layers 32``, written by the real
safetensors writer, as in ``bench_upload_memory.py``) and waits for the per-module table.
Prints per N: median and max latency of each step (the audit's from the file drop to its
table), the server's idle RSS (after one warm-up visit of every page) and its peak RSS: the
kernel's high-water mark (``VmHWM``, reset after the idle reading), so no transient is missed
between samples. Then it closes every tab and reports when the server got back within 300 MB
of idle and its RSS once the janitor's window has passed (disconnected sessions closed, their
uploads dropped). The benchmark's servers close disconnected sessions after ``--grace``
seconds (``LORARANK_DISCONNECTED_GRACE_SECONDS``; deployed: 60), looked at every second: the
same mechanism as deployed, without waiting a minute per N.
Bounded: at most 8 sessions, every wait has a timeout, and the server and browser are stopped
by their handles. Report ``uptime`` with the figures: on a shared 2-core machine latencies
mostly measure load; memory does not depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from apphelpers import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402
from benchmarks.bench_upload_memory import adapter_bytes  # noqa: E402

MAX_SESSIONS = 8
JANITOR_INTERVAL = 1.0


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` now, MiB (the server starts no child processes)."""
    return _status_mb(pid, "VmRSS")


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of ``pid`` to its current RSS (``clear_refs`` 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Peak RSS of a process: its kernel high-water mark when that could be reset, and the
    largest of samples taken every ``every`` seconds (a fallback)."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.sampled, self.stop = pid, every, 0.0, threading.Event()
        self.hwm = reset_peak(pid)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sampled = max(self.sampled, rss_mb(self.pid))
            time.sleep(self.every)

    @property
    def peak(self) -> float:
        return max(self.sampled, _status_mb(self.pid, "VmHWM") if self.hwm else 0.0)


async def wait_idle(page, timeout_ms: float) -> None:
    await page.wait_for_timeout(200)
    await page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                                 timeout=timeout_ms)


async def wait_for(page, selector: str, timeout_ms: float) -> None:
    """Wait until ``selector`` is in the page (tabs and expanders hide their content, so
    "attached", not "visible"), then until the script run finished."""
    await page.wait_for_selector(selector, state="attached", timeout=timeout_ms)
    await wait_idle(page, timeout_ms)


async def session(browser, url: str, files: list[str], timeout_ms: float) -> dict[str, float]:
    """One user: sweep, stability, audit; seconds until each shows its results."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    out: dict[str, float] = {"_context": context}  # type: ignore[dict-item]
    # Each page's first result (the pages draw it as a markdown table: bench_app.RESULTS).
    for name, path, selector in (
            ("sweep", "Rank_sweep", '[data-testid="stMain"] .st-key-sweep_table table'),
            ("stability", "Alpha_r_stability", '[data-testid="stMain"] .st-key-stability_summary table')):
        start = time.perf_counter()
        await page.goto(f"{url}/{path}", timeout=timeout_ms)
        await wait_for(page, selector, timeout_ms)
        out[name] = time.perf_counter() - start
    await page.goto(f"{url}/Adapter_audit", timeout=timeout_ms)
    await wait_idle(page, timeout_ms)
    start = time.perf_counter()
    # The adapter uploader by its key (the page also has a series-run uploader).
    await page.locator(".st-key-audit_upload").get_by_test_id(
        "stFileUploaderDropzoneInput").set_input_files(files=files)
    await wait_for(page, '[data-testid="stDataFrame"], [data-testid="stMain"] .st-key-audit_table, '
                         '[data-testid="stAlertContentError"]', timeout_ms)
    if await page.get_by_test_id("stAlertContentError").count():
        raise RuntimeError("audit error: " + " | ".join(
            await page.get_by_test_id("stAlertContentError").all_inner_texts()))
    out["audit"] = time.perf_counter() - start
    return out


async def run_n(n: int, files: list[str], timeout: float, grace: float, log_dir: Path) -> None:
    from playwright.async_api import async_playwright

    server = AppServer(log_dir / f"stress-{n}.log",
                       env={"LORARANK_DISCONNECTED_GRACE_SECONDS": str(grace),
                            "LORARANK_JANITOR_INTERVAL_SECONDS": str(JANITOR_INTERVAL)})
    release_timeout = grace + JANITOR_INTERVAL + 10
    try:
        pid = server.proc.pid
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=CHROMIUM_ARGS)
            contexts = []
            try:
                # Warm the server with every page so idle RSS includes the imports.
                warm = await browser.new_context()
                page = await warm.new_page()
                for path in ("Rank_sweep", "Alpha_r_stability", "Adapter_audit"):
                    await page.goto(f"{server.url}/{path}", timeout=timeout * 1000)
                    await wait_idle(page, timeout * 1000)
                await warm.close()
                await asyncio.sleep(grace + 2 * JANITOR_INTERVAL)  # the warm-up session closed
                idle = rss_mb(pid)
                sampler = Sampler(pid)
                sampler.start()
                start = time.perf_counter()
                results = await asyncio.gather(
                    *[session(browser, server.url, files, timeout * 1000) for _ in range(n)],
                    return_exceptions=True)
                wall = time.perf_counter() - start
                sampler.stop.set()
                sampler.join()
                failed = [r for r in results if isinstance(r, BaseException)]
                ok = [r for r in results if not isinstance(r, BaseException)]
                contexts = [r["_context"] for r in ok]
                print(f"N = {n}: {len(ok)} sessions done, {len(failed)} failed, wall {wall:.1f} s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                for f in failed[:3]:
                    print(f"  failure: {type(f).__name__}: {str(f)[:200]}")
                for step in ("sweep", "stability", "audit"):
                    times = [r[step] for r in ok if step in r]
                    if times:
                        print(f"  {step:9} median {statistics.median(times):6.1f} s  max "
                              f"{max(times):6.1f} s")
                peak = sampler.peak
                print(f"  server RSS: idle {idle:.0f} MiB, peak {peak:.0f} MiB "
                      f"(+{peak - idle:.0f} MiB, {(peak - idle) / max(n, 1):.0f} MiB per session"
                      f"{'' if sampler.hwm else '; sampled every 0.1 s'})", flush=True)
                for context in contexts:
                    await context.close()
                contexts = []
                closed = time.perf_counter()
                back = None
                while time.perf_counter() - closed < release_timeout:
                    if rss_mb(pid) - idle <= 300:
                        back = time.perf_counter() - closed
                        break
                    await asyncio.sleep(1)
                if back is None:
                    now = rss_mb(pid)
                    print(f"  after closing every tab: {now:.0f} MiB after {release_timeout:.0f} "
                          f"s (+{now - idle:.0f} MiB over idle): NOT back within 300 MB")
                else:
                    # Stay until the janitor has closed the disconnected sessions too.
                    await asyncio.sleep(max(0.0, release_timeout - (time.perf_counter() - closed)))
                    now = rss_mb(pid)
                    print(f"  after closing every tab: within 300 MB of idle after {back:.0f} s; "
                          f"{now:.0f} MiB (+{now - idle:.0f} MiB) after {release_timeout:.0f} s "
                          f"(janitor window {grace:.0f} + {JANITOR_INTERVAL:.0f} s)", flush=True)
            finally:
                for context in contexts:
                    await context.close()
                await browser.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,4,8", help="comma-separated N (each <= 8)")
    parser.add_argument("--layers", type=int, default=32, help="32 layers: 84 MB bf16 adapter")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per wait")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds before the server closes a disconnected session "
                             "(deployed: 60)")
    args = parser.parse_args()
    # A SIGTERM (``timeout``) unwinds like Ctrl-C, so the server and browser are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    counts = [int(x) for x in args.sessions.split(",")]
    if any(not 1 <= n <= MAX_SESSIONS for n in counts):
        raise SystemExit(f"bench_stress: error: sessions must be 1..{MAX_SESSIONS}")
    if not 0 <= args.grace <= 120:
        raise SystemExit("bench_stress: error: --grace must be 0..120 s")
    weights, config = adapter_bytes(layers=args.layers)
    # Playwright passes buffers over 50 MB only as files: the browser reads them from here
    # (the client's side; the server gets them over HTTP as from any browser).
    folder = Path(tempfile.mkdtemp(prefix="lorarank-stress-"))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "adapter_config.json").write_bytes(config)
    files = [str(folder / "adapter_model.safetensors"), str(folder / "adapter_config.json")]
    print(f"adapter {len(weights) / 2**20:.1f} MB; {os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.1f}; LORARANK_HEAVY_SLOTS="
          f"{os.environ.get('LORARANK_HEAVY_SLOTS', 'default')}; disconnected sessions closed "
          f"after {args.grace:g} s",
          flush=True)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    start = time.perf_counter()
    try:
        for n in counts:
            begun = time.perf_counter()
            asyncio.run(run_n(n, files, args.timeout, args.grace, log_dir))
            print(f"  (N = {n} took {time.perf_counter() - begun:.0f} s with server start, "
                  f"warm-up and release watch)", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
