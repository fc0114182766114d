"""Keeping one shared server usable: work budgets, a queue for heavy work, abandoned work stops.

The hosted app is one process shared by a team, on a couple of cores and about a gigabyte.

Work budget
    Every page estimates its work from the inputs before running it (:mod:`lorarank.cost`).
    Up to :data:`ASK_SECONDS` it runs at once; above, the page shows the estimate and an
    explicit **Run** button; above :data:`MAX_SECONDS` it refuses with one sentence naming the
    limit and the value. A run under way shows **Stop**; long sweeps and grids run rank by
    rank, so the ranks finished before a stop are kept (and reused when Run is pressed again).
Queue
    At most :data:`HEAVY_SLOTS` computations run at once in the whole server (every session,
    every page); the others wait in line and see their position (:func:`heavy_work`).
Abandoned work
    Work whose browser session has gone (tab closed, network lost) stops at the next progress
    tick instead of running to the end for nobody (:func:`check_alive`).

Configuration (environment variables of the server process): ``LORARANK_ASK_SECONDS``
(default 5), ``LORARANK_MAX_SECONDS`` (default 300), ``LORARANK_HEAVY_SLOTS`` (default 2, one
per core of a small host).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

import streamlit as st

from lorarank.documents import format_seconds

from . import compat
from .common import Markdown, md, md_param
from .uploads import trim_memory

__all__ = ["ASK_SECONDS", "MAX_SECONDS", "HEAVY_SLOTS", "WorkQueue", "QUEUE", "session_alive",
           "check_alive", "heavy_work", "mark_done", "is_done", "gate", "stop_button",
           "by_rank", "finished_ranks", "guarded_run"]

T = TypeVar("T")


def _env_float(name: str, default: float, minimum: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= minimum else default


#: Estimated seconds above which a page asks for an explicit Run.
ASK_SECONDS = _env_float("LORARANK_ASK_SECONDS", 5.0, 0.0)
#: Estimated seconds above which a page refuses the work (the server's cap per request).
MAX_SECONDS = max(_env_float("LORARANK_MAX_SECONDS", 300.0, 0.0), ASK_SECONDS)
#: Heavy computations running at once in the whole server.
HEAVY_SLOTS = int(_env_float("LORARANK_HEAVY_SLOTS", 2, 1))


# --------------------------------------------------------------------------------------------
# Is anybody still waiting for this work?
# --------------------------------------------------------------------------------------------

def session_alive() -> bool:
    """False once the browser session of the running script has disconnected.

    Streamlit's runtime keeps a disconnected session for a while (to resume it), but nobody
    sees its output. Outside a server (AppTest, bare mode) this is always True.
    """
    session_id = compat.running_session_id()
    return True if session_id is None else compat.session_is_active(session_id)


def check_alive() -> None:
    """Stop the script run (``st.stop()``) when its session is gone; call from progress ticks."""
    if not session_alive():
        st.stop()


# --------------------------------------------------------------------------------------------
# The server-wide queue
# --------------------------------------------------------------------------------------------

class WorkQueue:
    """At most ``slots`` holders at once, served first come first served.

    Thread-safe; one instance (:data:`QUEUE`) is shared by every session of the process.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots should be at least 1, got {slots}")
        self.slots = slots
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: list[int] = []
        self._tickets = itertools.count()

    @property
    def running(self) -> int:
        """Holders now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Callers in line now."""
        return len(self._waiting)

    @contextmanager
    def slot(self, *, on_wait: Callable[[int], None] | None = None,
             poll: float = 0.5) -> Iterator[None]:
        """Hold a slot for the ``with`` block, waiting in line for it if all are taken.

        ``on_wait(position)`` is called about every ``poll`` seconds while waiting (position
        1 is next); an exception it raises (a rerun, a stop, a closed session) leaves the line.
        """
        ticket = next(self._tickets)
        with self._cond:
            self._waiting.append(ticket)
        try:
            while True:
                with self._cond:
                    if self._running < self.slots and self._waiting[0] == ticket:
                        self._waiting.pop(0)
                        self._running += 1
                        self._cond.notify_all()
                        break
                    position = self._waiting.index(ticket) + 1
                if on_wait is not None:
                    on_wait(position)
                with self._cond:
                    if not (self._running < self.slots and self._waiting[0] == ticket):
                        self._cond.wait(poll)
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


#: The process-wide queue of heavy work.
QUEUE = WorkQueue(HEAVY_SLOTS)


@contextmanager
def heavy_work(what: str) -> Iterator[None]:
    """Run the ``with`` block in one of the server's :data:`HEAVY_SLOTS`, in line if needed.

    Use it inside the ``st.cache_data`` function that does the work, so a cache hit never
    waits. While in line, the page shows the position; a closed session leaves the line.
    """
    notice = st.empty()

    def on_wait(position: int) -> None:
        check_alive()
        notice.info(md("Waiting for a free slot to start {what}: number {position} in line "
                       "({running} of {slots} computations running on this shared server).",
                       what=what, position=position, running=QUEUE.running, slots=QUEUE.slots),
                    icon=":material/hourglass_top:")

    try:
        with QUEUE.slot(on_wait=on_wait):
            notice.empty()
            trim_memory()  # what earlier work freed, before this work allocates
            try:
                yield
            finally:
                # The work's arrays are gone: give their memory back to the system, not to
                # this thread's malloc arena (see ui.uploads.trim_memory).
                trim_memory()
    finally:
        notice.empty()


# --------------------------------------------------------------------------------------------
# Work already done (server-wide): no need to ask again
# --------------------------------------------------------------------------------------------

_DONE: "OrderedDict[Hashable, None]" = OrderedDict()
_DONE_LOCK = threading.Lock()
_DONE_MAX = 4096


def mark_done(ident: Hashable) -> None:
    """Remember that the work ``ident`` finished on this server (bounded, oldest forgotten)."""
    with _DONE_LOCK:
        _DONE[ident] = None
        _DONE.move_to_end(ident)
        while len(_DONE) > _DONE_MAX:
            _DONE.popitem(last=False)


def is_done(ident: Hashable) -> bool:
    """Whether :func:`mark_done` was called for ``ident`` (and not forgotten since)."""
    with _DONE_LOCK:
        return ident in _DONE


# --------------------------------------------------------------------------------------------
# The budget gate and the Stop button
# --------------------------------------------------------------------------------------------

def _approve(key: str, ident: Hashable) -> None:
    st.session_state[f"{key}_approved"] = ident
    st.session_state.pop(f"{key}_stopped", None)


def _stop(key: str, ident: Hashable) -> None:
    st.session_state.pop(f"{key}_approved", None)
    st.session_state[f"{key}_stopped"] = ident


def gate(seconds: float, *, key: str, what: str, ident: Hashable, hint: Markdown = Markdown(""),
         kept: bool = True, item: str = "ranks") -> bool:
    """Whether work estimated at ``seconds`` may run now; otherwise say why and offer Run.

    Parameters
    ----------
    seconds : float
        The estimate (:attr:`lorarank.cost.WorkEstimate.seconds`).
    key : str
        Session-state prefix of this page's gate (``"sweep_gate"``).
    what : str
        The work in words, completing "This ... is estimated at ..." (``"sweep"``).
    ident : hashable
        The work's identity (its config): approval holds for this work only, and work that
        already finished on the server (:func:`mark_done`) runs without asking (a cache hit)
        unless this session stopped it: then it waits for Run again.
    hint : str
        What makes it cheaper, appended to a refusal (markdown written by the app).
    kept : bool
        Whether a stopped run keeps what finished (rank by rank), as the Run box says.
    item : str
        What the work is done one by one over, plural (``"ranks"``, ``"sample sizes"``).

    Returns
    -------
    bool
        True to run. False after drawing a refusal (above :data:`MAX_SECONDS`) or the estimate
        with a Run button (above :data:`ASK_SECONDS`).
    """
    stopped = st.session_state.get(f"{key}_stopped") == ident
    if seconds <= ASK_SECONDS or (is_done(ident) and not stopped):
        return True
    if seconds > MAX_SECONDS:
        st.error(md("This {what} is estimated at {estimate} of computing; this shared server runs "
                    "at most {cap:.0f} s per request.{hint}", what=what, estimate=format_seconds(seconds),
                    cap=MAX_SECONDS, hint=Markdown(" ") + md_param(hint) if hint else Markdown("")),
                 icon=":material/block:")
        return False
    if st.session_state.get(f"{key}_approved") == ident:
        return True
    with st.container(border=True, key=f"{key}_ask"):
        st.markdown(md(
            "{stopped}This {what} is estimated at **{estimate}** on this server, so it waits for you: "
            "press Run to start it. A run under way can be stopped{kept}",
            stopped=Markdown("**Stopped.** ") if stopped else Markdown(""), what=what,
            estimate=format_seconds(seconds), kept=md("; {} that finished are kept.", item) if kept else "."))
        st.button("Run", key=f"{key}_run", type="primary", icon=":material/play_arrow:",
                  on_click=_approve, args=(key, ident))
    return False


def stop_button(key: str, ident: Hashable, *, kept: str = "finished ranks are kept"
                ) -> Callable[[], None]:
    """Draw a Stop button for the approved run ``ident``; returns a function that removes it.

    Pressing it interrupts the run at its next progress tick (Streamlit reruns the page) and
    withdraws the approval, so the rerun shows what finished and the Run button again.
    ``kept`` completes the button's tooltip "Stop this run; ...".
    """
    slot = st.empty()
    slot.button("Stop", key=f"{key}_stop", icon=":material/stop:", on_click=_stop,
                args=(key, ident), help=f"Stop this run; {kept}.")
    return slot.empty


# --------------------------------------------------------------------------------------------
# Guarded runs, rank by rank (Rank sweep, alpha/r stability)
# --------------------------------------------------------------------------------------------

def by_rank(seconds: float, ranks: Sequence[int], rank_ident: Callable[[int], Hashable]) -> bool:
    """Whether work estimated at ``seconds`` over ``ranks`` runs one rank at a time.

    Long work (above :data:`ASK_SECONDS`) does, so a stop keeps the ranks that finished; so
    does work whose every rank already finished that way (``rank_ident(r)`` marked done: the
    ranks are then cache hits). Short work runs every rank in one batched call.
    """
    return seconds > ASK_SECONDS or all(is_done(rank_ident(r)) for r in ranks)


def finished_ranks(ranks: Sequence[int], rank_ident: Callable[[int], Hashable]) -> tuple[int, ...]:
    """The entries of ``ranks`` whose one-rank work (``rank_ident(r)``) finished on this server."""
    return tuple(r for r in ranks if is_done(rank_ident(r)))


def guarded_run(seconds: float, *, key: str, what: str, ident: Hashable, hint: Markdown,
                run: Callable[[], T], ranks: Sequence[int] = (),
                rank_ident: Callable[[int], Hashable] | None = None,
                partial: Callable[[tuple[int, ...]], T] | None = None,
                kept: bool = True, item: str = "ranks", symbol: str = "r",
                done_word: str = "fitted") -> T | None:
    """Run work within the server's budget (:func:`gate`), with Stop, or show what finished.

    Short work runs. Long work asks for Run (showing the estimate), then runs with a Stop
    button. Past the server's cap: one sentence. When the work does not run and it is done
    rank by rank (``ranks``, ``rank_ident``), the ranks that finished before a stop are
    returned as ``partial(finished)`` (a caption says which), else None.

    Parameters
    ----------
    seconds : float
        The work's estimate (:attr:`lorarank.cost.WorkEstimate.seconds`).
    key, what, ident, hint
        As in :func:`gate`.
    run : callable
        Does the work (a cached function), returns its result.
    ranks : sequence of int, optional
        The ranks the work covers.
    rank_ident : callable, optional
        The identity :func:`mark_done` gets for one rank of the work.
    partial : callable, optional
        The result for a subset of ``ranks`` (all finished: cache hits).
    kept : bool
        As in :func:`gate`: False for work that is not done rank by rank.
    item, symbol, done_word : str
        How the caption names what finished: "Showing the {item} already {done_word}:
        {symbol} = ..." (``"sample sizes"``, ``"n"``, ``"trained on"`` for the data mode).
    """
    if gate(seconds, key=key, what=what, ident=ident, hint=hint, kept=kept, item=item):
        asked = seconds > ASK_SECONDS and not is_done(ident)
        said = f"finished {item} are kept" if kept else "nothing of it is kept"
        remove = stop_button(key, ident, kept=said) if asked else (lambda: None)
        result = run()
        remove()
        return result
    if rank_ident is None or partial is None:
        return None
    done = finished_ranks(ranks, rank_ident)
    if not done:
        return None
    st.caption(md("Showing the {item} already {done_word}: {symbol} = {done} of {ranks}.", item=item,
                  done_word=done_word, symbol=symbol, done=", ".join(map(str, done)),
                  ranks=", ".join(map(str, ranks))))
    return partial(done)
