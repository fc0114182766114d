"""Server-start warm-up: import what the pages need before the first visitor asks.

``streamlit run app.py`` finds ``app = st.App(...)`` in ``app.py`` and serves it with
:func:`lifespan` (entered by :func:`ui.serving.lifespan`), which starts :func:`preload` in a daemon thread when the server starts. A
page's first script run on a fresh server otherwise spends seconds importing pandas, Altair
(with jsonschema) and the engine before it computes anything (benchmarks/bench_app.py). The
thread only imports modules: it computes nothing, holds no session's data, and a page that
arrives while it is still running waits on Python's import locks for the module being
imported instead of importing it a second time. ``LORARANK_PRELOAD=0`` in the server's
environment turns it off (``benchmarks/bench_app.py --compare-preload`` measures both).

It yields to visitors: a module is only started while no page's script is running and none ran
for :data:`YIELD_SECONDS` (:func:`wait_for_quiet`), counted from the server's start too. On a
2-core host two threads importing at once halve each other's speed, and a module in progress
cannot be paused: a cold server's first visitor, who usually arrives within a second of the
start (often the one who woke it), waited for the warm-up's imports on top of its own
(Glossary, cold: +1.2 s over the floor with a warm-up that started at once, +0.3 s without;
the audit page +1.2 s and +0.9 s), as did the new sessions right after it. So the first visit
imports what it needs itself, and the warm-up fills the idle time after it, for the next pages.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from .navigation import preload_modules

__all__ = ["MODULES", "YIELD_SECONDS", "lifespan", "preload", "visiting", "wait_for_quiet", "pages_running"]

_LOGGER = logging.getLogger(__name__)

#: Imported at server start, in the order a first visit needs them: what every page imports
#: before its first element (``ui.common``, the layout, numpy and the engine's metrics), the
#: Rank sweep's engine (its table needs no more), then the slow libraries the later tables and
#: charts use (pandas, pyarrow, Altair) and every registered page's modules
#: (:func:`ui.navigation.preload_modules`). A visit that arrives while this runs waits on the
#: import lock of a module being imported instead of importing it twice, so what it needs
#: first comes first, and the slowest come last.
MODULES = tuple(dict.fromkeys((
    "ui.common", "ui.layout", "ui.glossary", "ui.auth", "ui.uploads", "numpy", "lorarank.spectrum",
    "lorarank.fit", "lorarank.data", "lorarank.cost", "lorarank.stability",
    "ui.guard", "ui.sweep", "ui.datamode",
    "pandas", "pyarrow", "altair", "lorarank.charts", *preload_modules(), "ui.report",
)))


#: The warm-up starts a module only when no page has been running for this long: on a 2-core
#: host the visitors' own imports and renders then never share the CPU with the warm-up's (a
#: cold Home visit waited on pandas and Altair it never uses; new sessions right after a cold
#: visit waited on the rest). Longer than the gap between one visit's end and the next one's
#: script start when a teammate opens a link right after another (~1-1.5 s here: a new tab
#: loads Streamlit's front end first); at 1.5 s the warm-up slipped into that gap.
YIELD_SECONDS = 3.0
_LAST_VISIT = [float("-inf")]

#: The thread Streamlit runs a session's script in (``ScriptRunner.start``); it ends with the run.
SCRIPT_THREAD = "ScriptRunner.scriptThread"


def visiting() -> None:
    """A page's script run starts (``ui.common.setup_page``): hold the warm-up back."""
    _LAST_VISIT[0] = time.monotonic()


def pages_running() -> bool:
    """Whether some session's script is running now (its Streamlit script thread is alive)."""
    return any(thread.name == SCRIPT_THREAD and thread.is_alive() for thread in threading.enumerate())


def wait_for_quiet(*, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep,
                   running: Callable[[], bool] = pages_running) -> float:
    """Wait until no page run started, and none was running, for :data:`YIELD_SECONDS`;
    returns the seconds waited (by ``clock``). ``running()``: whether a page runs now."""
    began = clock()
    while True:
        now = clock()
        if running():
            _LAST_VISIT[0] = now  # the quiet period starts when the run ends
        elif now - _LAST_VISIT[0] >= YIELD_SECONDS:
            return now - began
        sleep(0.05)


def preload(modules: tuple[str, ...] | None = None) -> float:
    """Import ``modules`` (default :data:`MODULES`; a failure is logged, never raised), each
    once no page has run for a moment (:func:`wait_for_quiet`); returns the seconds spent."""
    modules = MODULES if modules is None else modules
    start = time.perf_counter()
    for name in modules:
        wait_for_quiet()
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a warm-up must never stop the server
            _LOGGER.warning("preload: importing %s failed", name, exc_info=True)
    seconds = time.perf_counter() - start
    _LOGGER.info("preload: %d modules imported in %.2f s", len(modules), seconds)
    return seconds


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """``st.App`` lifespan: start :func:`preload` in a daemon thread (unless the environment
    sets ``LORARANK_PRELOAD=0``), which waits :data:`YIELD_SECONDS` before its first import
    (and while pages run); the server starts at once."""
    if os.environ.get("LORARANK_PRELOAD", "1").strip() != "0":
        visiting()  # the server starts: its first visitor is usually on the way
        threading.Thread(target=preload, name="lorarank-preload", daemon=True).start()
    yield
