"""App speed in a real browser: a page's first render on a cold server, and a rerun.

For every existing page (home, Rank sweep, ...), with its default settings:

- first render: a freshly started ``streamlit run app.py`` server, headless Chromium opens the
  page's URL as the server's first request; seconds from the browser's navigation start until
  the page's first result is drawn (:data:`RESULTS`: its table's canvas, its chart's marks, its
  first content; the floor's text), and until the script run has finished (the app's
  ``data-test-script-state`` back to ``notRunning``). Repeated on ``--cold`` fresh servers,
  median reported.
- new session on a warm server: after that first visit, a new browser context (a new session,
  as a teammate opening the same link) on the same server; median of ``--warm``.
- rerun: on the same page, the "r" shortcut reruns the script with unchanged inputs (the
  cached engine results are reused); seconds from the key press until the last websocket
  message of the rerun arrived in the browser. Median of ``--reruns``.

Floor: the same measurement, in the same run, of a minimal Streamlit app (one ``st.write``,
same Streamlit, config and browser), printed first; "ours minus floor" is what the app adds.
Beside it, the same minimal app served with the app's socket fix (``ui.serving.no_delay``:
stock Streamlit's server leaves Nagle's algorithm on, ~40 ms per small file on a kept-alive
connection); "ours minus that" is what the pages add over Streamlit's minimum on the same server.

Targets (PRODUCT.md turn 4, issue 22): every page's first result within 0.3 s of the floor for a
new session on a warm server and within 1 s of it on a cold one, measured in the same rounds;
rerun <= 0.3 s. Usage::

    python benchmarks/bench_app.py [--cold 2] [--warm 4] [--reruns 2] [--no-floor] [--compare-preload]
                                   [--page /Rank_sweep] [--json]
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
// When the page's first result is drawn: the first animation frame in which an element matching
// window.__want (set before this script) is in the page with a size.
window.__result = null;
const wantResult = () => {
  if (window.__result === null && window.__want) {
    for (const el of document.querySelectorAll(window.__want)) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) { window.__result = performance.now(); break; }
    }
  }
  if (window.__result === null) requestAnimationFrame(wantResult);
};
requestAnimationFrame(wantResult);
"""

#: What "the page's first result is drawn" means, per URL path: the first element a visitor
#: waits for (a table's canvas, a chart's marks, the page's first content), and the floor's
#: text. The issue's first-render target compares these times with the floor's.
RESULTS = {
    "floor": '[data-testid="stMarkdownContainer"] p',
    "/": '[data-testid="stMain"] [data-testid="stPageLink"]',
    "/Rank_sweep": '[data-testid="stMain"] .st-key-sweep_table table',
    "/Alpha_r_stability": '[data-testid="stMain"] .st-key-stability_summary table',
    "/Adapter_audit": '[data-testid="stMain"] [data-testid="stFileUploaderDropzone"]',
    "/Adapter_audit?demo=true": '[data-testid="stMain"] .st-key-audit_summary table',
    "/Fleet": '[data-testid="stMain"] [data-testid="stFileUploaderDropzone"]',
    "/Glossary": '[data-testid="stMain"] h3',
}
#: Views measured besides each page at its defaults: a page whose default shows no result.
EXTRA_VIEWS = [("Adapter audit, demo", "/Adapter_audit?demo=true")]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def page_urls() -> list[tuple[str, str]]:
    """(label, path) of every existing page, home first."""
    from ui.common import available_pages

    return [(page.label, page.url_path) for page in available_pages()]


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


FLOOR_LABEL = "floor: minimal app"
FLOOR_APP = 'import streamlit as st\n\nst.write("hello")\n'
#: The same minimal app served with the app's socket fix (ui.serving.no_delay: Nagle's algorithm
#: off on the server's connections), measured beside the floor: the app's server is faster than
#: stock Streamlit's at sending the front end's small files, so "ours minus this" is what the
#: pages add over Streamlit's own minimum on the same server.
TUNED_FLOOR_LABEL = "floor, same socket fix"
TUNED_FLOOR_APP = '''import streamlit as st

if __name__ != "__main__":  # the server: st.App with ui.serving's socket fix only
    from contextlib import asynccontextmanager

    from ui.serving import no_delay

    @asynccontextmanager
    async def lifespan(_app):
        no_delay()
        yield

    app = st.App(__file__, lifespan=lifespan)
else:
    st.write("hello")
'''
FLOORS = (FLOOR_LABEL, TUNED_FLOOR_LABEL)


def _first_render(browser, url: str, want: str) -> tuple[float, float, object, object]:
    """Open ``url`` in a new browser context (a new session): (seconds until the first result
    matching ``want`` is drawn, seconds until the script run finished, context, page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(f"window.__want = {json.dumps(want)};")
    context.add_init_script(OBSERVER)
    page = context.new_page()
    page.goto(url)
    finished = _finished_after(page, 0.0) / 1000.0
    deadline = time.monotonic() + 30
    while (result := page.evaluate("window.__result")) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if result is None:
        raise TimeoutError(f"{url}: no element matching {want} was drawn")
    return result / 1000.0, finished, context, page


def one_server(browser, url_path: str, *, script: str, warm: int, reruns: int, log: Path,
               env: dict[str, str] | None = None, want: str = RESULTS["floor"]) -> dict:
    """One fresh server: its start, the first render (cold), then ``warm`` new sessions and
    ``reruns`` reruns on it (warm). Each render is timed twice: until the first result
    (``want``) is drawn, and until the script run finished."""
    server = AppServer(log, script=script, env=env)
    out: dict = {"start_s": server.healthy_after, "warm": [], "warm_done": [], "rerun": []}
    try:
        out["first"], out["first_done"], context, page = _first_render(
            browser, server.url + url_path, want)
        if page.get_by_test_id("stException").count():
            context.close()
            return {"error": "exception on the page at its defaults"}
        # A teammate opening the same link on the now warm server: a new session.
        for _ in range(warm):
            seconds, done, other, _ = _first_render(browser, server.url + url_path, want)
            out["warm"].append(seconds)
            out["warm_done"].append(done)
            other.close()
        for _ in range(reruns):
            page.wait_for_timeout(300)
            page.evaluate("document.activeElement && document.activeElement.blur()")
            start = page.evaluate("performance.now()")
            page.keyboard.press("r")
            end = _last_message_after(page, start)
            out["rerun"].append((end - start) / 1000.0)
        context.close()
    finally:
        server.stop()
    return out


def measure_all(browser, targets: list[tuple], *, cold: int, warm: int,
                reruns: int, tmp: Path) -> dict:
    """``targets``: (label, script, url path[, server environment]). Round-robin: each round starts one fresh server
    per target in turn, so the floor and the pages see the same machine load; warm sessions
    and reruns are measured on every round's server (``warm`` and ``reruns`` per round split
    over the rounds, at least one each)."""
    runs: dict[str, list[dict]] = {target[0]: [] for target in targets}
    per_round_warm = max(1, -(-warm // cold)) if warm else 0
    per_round_rerun = max(1, -(-reruns // cold)) if reruns else 0
    for i in range(cold):
        for k, (label, script, url_path, *env) in enumerate(targets):
            if runs[label] and "error" in runs[label][-1]:
                continue
            want = RESULTS["floor"] if label in FLOORS else RESULTS[url_path]
            runs[label].append(one_server(browser, url_path, script=script, warm=per_round_warm,
                                          reruns=per_round_rerun, log=tmp / f"server-{k}-{i}.log",
                                          env=env[0] if env else None, want=want))
    results = {}
    for label, script, url_path, *_ in targets:
        done = runs[label]
        if done and "error" in done[-1]:
            results[label] = {"url": url_path, "error": done[-1]["error"]}
            continue
        firsts = [r["first"] for r in done]
        firsts_done = [r["first_done"] for r in done]
        warms = [w for r in done for w in r["warm"]]
        warms_done = [w for r in done for w in r["warm_done"]]
        again = [w for r in done for w in r["rerun"]]
        starts = [r["start_s"] for r in done]
        results[label] = {
            "url": url_path, "server_start_s": statistics.median(starts),
            "first_render_s": statistics.median(firsts), "first_render_all_s": firsts,
            "first_render_done_s": statistics.median(firsts_done),
            "warm_session_s": statistics.median(warms) if warms else None, "warm_session_all_s": warms,
            "warm_session_done_s": statistics.median(warms_done) if warms_done else None,
            "rerun_s": statistics.median(again) if again else None, "rerun_all_s": again}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=2, help="fresh servers per page (rounds)")
    parser.add_argument("--warm", type=int, default=4, help="new sessions per page on warm servers")
    parser.add_argument("--reruns", type=int, default=2, help="reruns per page")
    parser.add_argument("--page", action="append", default=None,
                        help="only this page's URL path (e.g. / or /Rank_sweep); repeatable")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the minimal-app baseline (the floor)")
    parser.add_argument("--compare-preload", action="store_true",
                        help="also measure every page with the server-start preload off "
                             "(LORARANK_PRELOAD=0), in the same rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    load_before = load()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        targets = [(label, "app.py", path) for label, path in page_urls() + EXTRA_VIEWS
                   if not args.page or path in args.page]
        if args.compare_preload:
            targets += [(f"{label}, no preload", script, path, {"LORARANK_PRELOAD": "0"})
                        for label, script, path in list(targets)]
        if not args.no_floor:
            # Run from the repository like the app (same .streamlit/config.toml, same server).
            floor_script = Path(tmp) / "floor_app.py"
            floor_script.write_text(FLOOR_APP)
            tuned_script = Path(tmp) / "floor_tuned_app.py"
            tuned_script.write_text(TUNED_FLOOR_APP)
            targets[:0] = [(FLOOR_LABEL, str(floor_script), "/"),
                           (TUNED_FLOOR_LABEL, str(tuned_script), "/", {"PYTHONPATH": str(REPO)})]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            results = measure_all(browser, targets, cold=args.cold, warm=args.warm,
                                  reruns=args.reruns, tmp=Path(tmp))
        finally:
            browser.close()
    floor = results.pop(FLOOR_LABEL, None)
    tuned = results.pop(TUNED_FLOOR_LABEL, None)

    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "load_before": load_before, "load_after": load(),
                          "seconds": time.perf_counter() - began, "floor": floor, "tuned_floor": tuned,
                          "pages": results}, indent=2))
        return 0
    print(f"App speed in headless Chromium ({machine}); medians over {args.cold} fresh servers "
          f"per page (round-robin), defaults of each page")
    print(f"{load_before} before, {load()} after; {time.perf_counter() - began:.0f} s in all")
    print(f"{'page':<28} {'server start':>12} {'first result, cold':>20} {'first result, warm':>20} "
          f"{'script done, cold':>18} {'script done, warm':>18} {'rerun':>8}")

    def gap(value: float | None, base: float | None) -> str:
        return "" if value is None or base is None else f" ({value - base:+.2f})"

    def cell(r: dict, key: str, base: dict) -> str:
        return "-" if r.get(key) is None else f"{r[key]:.2f} s" + gap(r[key], base.get(key))

    rows = ([(FLOOR_LABEL, floor)] if floor else []) + ([(TUNED_FLOOR_LABEL, tuned)] if tuned else []) \
        + list(results.items())
    verdicts = []
    for label, r in rows:
        if "error" in r:
            print(f"{label:<28} {r['error']}")
            continue
        base = floor if floor and r is not floor and "error" not in floor else {}
        rerun = "-" if r["rerun_s"] is None else f"{r['rerun_s']:.3f} s"
        print(f"{label:<28} {r['server_start_s']:>10.2f} s {cell(r, 'first_render_s', base):>20} "
              f"{cell(r, 'warm_session_s', base):>20} {cell(r, 'first_render_done_s', base):>18} "
              f"{cell(r, 'warm_session_done_s', base):>18} {rerun:>8}")
        if base and r is not tuned and r.get("warm_session_s") is not None:
            warm_ok = r["warm_session_s"] - base["warm_session_s"] <= 0.3
            cold_ok = r["first_render_s"] - base["first_render_s"] <= 1.0
            verdicts.append(f"{label}: warm {'ok' if warm_ok else 'OVER'}, cold "
                            f"{'ok' if cold_ok else 'OVER'}")
    if floor:
        print("(+x): ours minus the floor, a one-st.write app measured the same way in the same "
              "rounds (same Streamlit, config, browser). first result: the page's first table, "
              "chart or content drawn (RESULTS); script done: its script run finished.")
        print("targets (issue 22): first result within floor + 0.3 s for a new session on a warm "
              "server, floor + 1 s on a cold one; rerun <= 0.3 s")
        print("; ".join(verdicts))
    if tuned and "error" not in tuned:
        print("against the floor served with the app's socket fix (ui.serving.no_delay), same "
              "rounds: " + "; ".join(
                  f"{label}: warm {r['warm_session_s'] - tuned['warm_session_s']:+.2f}, cold "
                  f"{r['first_render_s'] - tuned['first_render_s']:+.2f}"
                  for label, r in results.items()
                  if "error" not in r and r.get("warm_session_s") is not None))
    print("server start: `streamlit run` to a healthy /_stcore/health (the app's preload of its "
          "imports runs in the background after that)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
