"""App speed in a real browser: a page's first render on a cold server, and a rerun.

For every existing page (home, Rank sweep, ...), with its default settings:

- first render: a freshly started ``streamlit run app.py`` server, headless Chromium opens the
  page's URL as the server's first request; seconds from the browser's navigation start until
  the script run has finished (the app's ``data-test-script-state`` back to ``notRunning``).
  Repeated on ``--cold`` fresh servers, median reported.
- new session on a warm server: after that first visit, a new browser context (a new session,
  as a teammate opening the same link) on the same server; median of ``--warm``.
- rerun: on the same page, the "r" shortcut reruns the script with unchanged inputs (the
  cached engine results are reused); seconds from the key press until the last websocket
  message of the rerun arrived in the browser. Median of ``--reruns``.

Targets (PRODUCT.md, issue 10): first render <= 2 s on a cold server and <= 1 s for a new
session on a warm server, rerun <= 0.3 s. Usage::

    python benchmarks/bench_app.py [--cold 3] [--warm 3] [--reruns 5] [--page /Rank_sweep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from apphelpers import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

# Records every change of the app's script state with its time since navigation start.
OBSERVER = """
window.__runs = [];
const watch = () => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) { requestAnimationFrame(watch); return; }
  const log = () => window.__runs.push([performance.now(), app.getAttribute('data-test-script-state')]);
  log();
  new MutationObserver(log).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
};
watch();
// Arrival time of every websocket message (a rerun ends with the script-finished message).
window.__wsIn = [];
const NativeWebSocket = window.WebSocket;
class TimedWebSocket extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', () => window.__wsIn.push(performance.now()));
  }
}
window.WebSocket = TimedWebSocket;
"""


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def page_urls() -> list[tuple[str, str]]:
    """(label, path) of every existing page, home first."""
    from ui.common import available_pages

    out = []
    for page in available_pages():
        if page.path == "app.py":
            out.append((page.label, "/"))
        else:
            out.append((page.label, "/" + Path(page.path).stem.split("_", 1)[1]))
    return out


def _finished_after(page, since_ms: float, timeout: float = 60.0) -> float:
    """Time (ms since navigation start) of the first running -> notRunning after ``since_ms``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = page.evaluate("window.__runs")
        seen_running = False
        for t, state in runs:
            if t < since_ms:
                continue
            if state == "running":
                seen_running = True
            elif seen_running and state == "notRunning":
                if page.get_by_test_id("stSkeleton").count() == 0:
                    return t
        time.sleep(0.01)
    raise TimeoutError("the script run did not finish")


def _last_message_after(page, since_ms: float, *, quiet_ms: float = 600.0,
                        timeout: float = 30.0) -> float:
    """Time of the last websocket message of the burst that follows ``since_ms``.

    A fast rerun may never show ``running`` in the DOM (React batches the two states), so the
    rerun is timed by its messages: it is over when no message arrived for ``quiet_ms``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(quiet_ms / 3)
        times = [t for t in page.evaluate("window.__wsIn") if t > since_ms]
        now = page.evaluate("performance.now()")
        if times and now - times[-1] >= quiet_ms:
            return times[-1]
    raise TimeoutError("no rerun messages arrived")


def measure(browser, url_path: str, *, cold: int, warm: int, reruns: int, tmp: Path) -> dict:
    """First-render (cold server, then new sessions on the warm server) and rerun seconds for one page."""
    firsts, warms, again = [], [], []
    for i in range(cold):
        server = AppServer(tmp / f"server-{url_path.strip('/') or 'home'}-{i}.log")
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(OBSERVER)
            page = context.new_page()
            page.goto(server.url + url_path)
            done = _finished_after(page, 0.0)
            firsts.append(done / 1000.0)
            if page.get_by_test_id("stException").count():
                context.close()
                return {"error": "exception on the page at its defaults"}
            if i == 0:
                # A teammate opening the same link on the now warm server: a new session.
                for _ in range(warm):
                    other = browser.new_context(viewport={"width": 1400, "height": 1000})
                    other.add_init_script(OBSERVER)
                    fresh = other.new_page()
                    fresh.goto(server.url + url_path)
                    warms.append(_finished_after(fresh, 0.0) / 1000.0)
                    other.close()
                for _ in range(reruns):
                    page.wait_for_timeout(300)
                    page.evaluate("document.activeElement && document.activeElement.blur()")
                    start = page.evaluate("performance.now()")
                    page.keyboard.press("r")
                    end = _last_message_after(page, start)
                    again.append((end - start) / 1000.0)
            context.close()
        finally:
            server.stop()
    return {"first_render_s": statistics.median(firsts), "first_render_all_s": firsts,
            "warm_session_s": statistics.median(warms) if warms else None, "warm_session_all_s": warms,
            "rerun_s": statistics.median(again) if again else None, "rerun_all_s": again}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=3, help="fresh servers per page")
    parser.add_argument("--warm", type=int, default=3, help="new sessions per page on the warm server")
    parser.add_argument("--reruns", type=int, default=5, help="reruns per page")
    parser.add_argument("--page", action="append", default=None,
                        help="only this page's URL path (e.g. / or /Rank_sweep); repeatable")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for label, path in page_urls():
                if args.page and path not in args.page:
                    continue
                results[label] = {"url": path, **measure(browser, path, cold=args.cold, warm=args.warm,
                                                         reruns=args.reruns, tmp=Path(tmp))}
        finally:
            browser.close()

    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "pages": results}, indent=2))
        return 0
    print(f"App speed in headless Chromium ({machine}); medians, defaults of each page; {load()}")
    print(f"{'page':<20} {'first render (cold server)':>28} {'new session (warm server)':>27} "
          f"{'rerun, same inputs':>20}")
    for label, r in results.items():
        if "error" in r:
            print(f"{label:<20} {r['error']}")
            continue
        rerun = f"{r['rerun_s']:.3f} s" if r["rerun_s"] is not None else "-"
        warm = f"{r['warm_session_s']:.2f} s" if r["warm_session_s"] is not None else "-"
        print(f"{label:<20} {r['first_render_s']:>26.2f} s {warm:>27} {rerun:>20}")
    print("targets: first render <= 2 s on a cold server, <= 1 s for a new session on a warm one; "
          "rerun <= 0.3 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
