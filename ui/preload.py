"""Server-start warm-up: import what the pages need before the first visitor asks.

``streamlit run app.py`` finds ``app = st.App(...)`` in ``app.py`` and serves it with
:func:`lifespan`, which starts :func:`preload` in a daemon thread when the server starts. A
page's first script run on a fresh server otherwise spends seconds importing pandas, Altair
(with jsonschema) and the engine before it computes anything (benchmarks/bench_app.py). The
thread only imports modules: it computes nothing, holds no session's data, and a page that
arrives while it is still running waits on Python's import locks for the module being
imported instead of importing it a second time. ``LORARANK_PRELOAD=0`` in the server's
environment turns it off (``benchmarks/bench_app.py --compare-preload`` measures both).
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

__all__ = ["MODULES", "YIELD_SECONDS", "lifespan", "preload", "visiting", "wait_for_quiet"]

_LOGGER = logging.getLogger(__name__)

#: Imported at server start, in the order a first visit needs them: the engine and the helpers
#: a page uses before its first result, then pandas / pyarrow / Altair (its later tables and
#: charts) and each registered page's modules (:func:`ui.navigation.preload_modules`). A
#: visit that arrives while this runs waits on the import lock of a module being imported
#: instead of importing it twice, so what it needs first should come first.
MODULES = tuple(dict.fromkeys((
    # first what a page needs before its first result (the Rank sweep's table needs no more),
    "numpy", "lorarank.fit", "lorarank.data", "lorarank.cost", "lorarank.stability",
    "ui.common", "ui.layout", "ui.guard", "ui.uploads", "ui.sweep", "ui.datamode",
    # then the slow libraries the tables and charts after it use, and every page's modules
    "pandas", "pyarrow", "altair", "lorarank.charts", *preload_modules(), "ui.report",
)))


#: A page run that starts holds the warm-up back this long: on a 2-core host the visitor's own
#: imports (what its first result needs, see :data:`MODULES`) then do not share the CPU with
#: the warm-up's (a cold Home visit waited on pandas and Altair it never uses).
YIELD_SECONDS = 1.5
_LAST_VISIT = [float("-inf")]


def visiting() -> None:
    """A page's script run starts (``ui.common.setup_page``): hold the warm-up back."""
    _LAST_VISIT[0] = time.monotonic()


def wait_for_quiet(*, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until no page run started for :data:`YIELD_SECONDS`; returns the seconds waited
    (by ``clock``)."""
    began = clock()
    while clock() - _LAST_VISIT[0] < YIELD_SECONDS:
        sleep(0.05)
    return clock() - began


def preload(modules: tuple[str, ...] | None = None) -> float:
    """Import ``modules`` (default :data:`MODULES`; a failure is logged, never raised), each
    once no visitor's page run started for a moment (:func:`wait_for_quiet`); returns the
    seconds spent."""
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
    sets ``LORARANK_PRELOAD=0``); the server starts at once."""
    if os.environ.get("LORARANK_PRELOAD", "1").strip() != "0":
        threading.Thread(target=preload, name="lorarank-preload", daemon=True).start()
    yield
