"""Where uploaded bytes live on the server, and when they leave.

The library internals this relies on (Starlette's parser, Streamlit's ``UploadedFile`` and
runtime) are reached only through :mod:`ui.compat`, which names the versions each was tested on
and falls back to the library's own behaviour outside them.

Disk
    Streamlit (1.5x+) serves uploads with Starlette, whose multipart parser spools every file
    part over ``MultiPartParser.spool_max_size`` (1 MiB) to a ``SpooledTemporaryFile`` in
    ``$TMPDIR`` (``/tmp``): an adapter upload would touch the disk. :func:`keep_uploads_in_memory`
    raises that threshold to the app's upload limit, so the parser keeps each part in memory
    (the bytes end in Streamlit's in-memory upload store either way). Deployments should still
    point ``TMPDIR`` at memory-backed storage (``/dev/shm``), in case another Streamlit or
    Starlette version parses uploads differently; a browser test
    (``tests/e2e/test_safety_e2e.py``) checks that an upload opens no file on the server.
Memory
    Starlette's parser writes a file part into a ``BytesIO`` (over-allocated as it grows) and
    Streamlit's upload route then takes its bytes with ``UploadFile.read()``, which copies
    them: for a moment the server held every upload about twice (2.1x its size, measured with
    tracemalloc), which set the peak of concurrent uploads. :func:`keep_uploads_in_memory` also
    makes a whole-file ``read()`` of an in-memory part hand over the parser's own buffer
    (``BytesIO.getvalue()`` trims it in place and shares it, no copy), so the upload store's
    bytes are the only copy from the start.
    ``st.file_uploader`` returns a ``copy.deepcopy`` of its ``UploadedFile`` list (Streamlit
    copies every widget value it returns), and deep-copying a ``BytesIO`` writes its bytes into
    a new buffer: every script run that saw the upload made a second copy of it, and the one
    the page kept (its loaded adapter) was that copy, so each session held every upload twice
    (two 80 MiB mappings per 84 MB upload, traced with tracemalloc to this path).
    :func:`keep_uploads_in_memory` gives ``UploadedFile`` a ``__deepcopy__`` that builds the copy
    on the same bytes: still an independent file (its own position; a ``BytesIO`` copies its
    buffer before the first write), without copying what nobody writes to.
    ``UploadedFile.getvalue()`` then returns the very ``bytes`` object the upload store holds
    (a ``BytesIO`` shares its initial buffer until written), so :class:`ui.audit.Upload` holds
    no copy; ``getbuffer()`` would copy it (CPython unshares the buffer for a writable view).
    The engine reads factors as ``np.frombuffer`` views of those bytes.
Release
    Streamlit keeps a closed tab's session (and its uploads) for reconnection, and drops
    expired sessions from that store without shutting them down, so their uploads stayed in
    memory until an unrelated event. :func:`start_janitor` runs one daemon thread per server
    that closes sessions disconnected for more than :data:`DISCONNECTED_GRACE_SECONDS` (their
    uploads, session state and running script go with them: the state is emptied, since
    Streamlit's runtime loop keeps the last session it served referenced) and drops upload
    files of sessions the runtime no longer knows.
Freed memory
    glibc's malloc keeps freed blocks in per-thread arenas (every script run has its own
    thread) instead of returning them to the system, so a server that audited an 84 MB upload
    kept its ~400 MB high-water mark per session long after the arrays were gone.
    A closed session's page globals (its upload among them) are also held in a reference cycle
    until Python's cyclic collector runs, so the janitor runs it when it closes sessions.
    :func:`trim_memory` (``malloc_trim(0)``) hands the freed memory back: every heavy computation
    calls it when it gets its slot and when it ends, and the janitor on every pass.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import os
import threading
import time
from typing import Any

from . import compat

__all__ = ["DISCONNECTED_GRACE_SECONDS", "JANITOR_INTERVAL_SECONDS", "keep_uploads_in_memory",
           "start_janitor", "sweep_sessions", "trim_memory"]

_LOGGER = logging.getLogger(__name__)


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


#: A disconnected session (closed tab, lost network) is closed after this many seconds.
DISCONNECTED_GRACE_SECONDS = _env_seconds("LORARANK_DISCONNECTED_GRACE_SECONDS", 60.0)
#: How often the janitor looks.
JANITOR_INTERVAL_SECONDS = _env_seconds("LORARANK_JANITOR_INTERVAL_SECONDS", 10.0)

# Starlette's margin for the multipart framing around one file part.
_MULTIPART_MARGIN = 1 << 20


def keep_uploads_in_memory() -> None:
    """Make Starlette's multipart parser keep file parts up to the upload limit in memory, a
    whole-file ``UploadFile.read()`` of such a part return its buffer without a copy, and a
    deep copy of Streamlit's ``UploadedFile`` share its bytes until written
    (:func:`ui.compat.spool_in_memory`, :func:`~ui.compat.share_whole_reads`,
    :func:`~ui.compat.share_deep_copies`; each only within its tested versions).

    Idempotent; every page calls it.
    """
    from streamlit import config

    limit = int(config.get_option("server.maxUploadSize")) * (1 << 20) + _MULTIPART_MARGIN
    compat.spool_in_memory(limit)
    compat.share_whole_reads()
    compat.share_deep_copies()


def _libc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_trim()


def trim_memory() -> bool:
    """Return freed heap memory of every malloc arena to the system (glibc ``malloc_trim``).

    Cheap when there is little to give back; a no-op (False) where libc has no malloc_trim.
    """
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


# --------------------------------------------------------------------------------------------
# Closing sessions nobody will come back to
# --------------------------------------------------------------------------------------------

_JANITOR_LOCK = threading.Lock()
_JANITOR: threading.Thread | None = None
_DISCONNECTED_SINCE: dict[str, float] = {}


def sweep_sessions(*, grace: float | None = None, now: float | None = None) -> list[str]:
    """One janitor pass; must run on the runtime's event loop thread. Returns closed ids.

    Sessions disconnected for more than ``grace`` seconds are closed (``Runtime.close_session``:
    the script stops, uploads and state are dropped); upload files of sessions the runtime no
    longer lists are removed.
    """
    runtime = compat.runtime()
    sessions = None if runtime is None else compat.runtime_sessions(runtime)
    if sessions is None:
        return []
    grace = DISCONNECTED_GRACE_SECONDS if grace is None else grace
    now = time.monotonic() if now is None else now
    known = set(sessions)
    closed = []
    for session_id, session in sessions.items():
        if runtime.is_active_session(session_id):
            _DISCONNECTED_SINCE.pop(session_id, None)
            continue
        since = _DISCONNECTED_SINCE.setdefault(session_id, now)
        if now - since >= grace:
            runtime.close_session(session_id)
            _forget_state(session)
            _DISCONNECTED_SINCE.pop(session_id, None)
            closed.append(session_id)
    for session_id in list(_DISCONNECTED_SINCE):
        if session_id not in known:
            del _DISCONNECTED_SINCE[session_id]
    for session_id in compat.upload_store_session_ids(runtime):
        if session_id not in known:
            runtime.uploaded_file_mgr.remove_session_files(session_id)
            closed.append(session_id)
    if closed:
        # A page script's globals (its upload, its report) sit in a reference cycle with the
        # functions it defines, so they wait for the cyclic collector, which used to run only
        # when another session's script allocated enough: collect now.
        gc.collect()
    trim_memory()  # what finished work and closed sessions freed goes back to the system
    if closed:
        _LOGGER.info("lorarank janitor: closed %d disconnected session(s)", len(closed))
    return closed


def _forget_state(session: Any) -> None:
    """Empty a closed session's state (its loaded upload, page callbacks and their globals).

    Streamlit's runtime loop keeps the last session it sent messages to in a local variable
    (``Runtime._loop_coroutine``'s ``active_session_info``) until it sends to another one, so
    the last closed session object, and with it its state, outlived its closing: one upload
    stayed in memory until somebody else used the server. The closed session never runs
    again, so nothing reads its state.
    """
    state = getattr(session, "session_state", None)
    clear = getattr(state, "clear", None)
    if callable(clear):
        try:
            clear()
        except Exception:  # a script still stopping may hold it; the next pass is too late
            _LOGGER.debug("lorarank janitor: could not clear a closed session's state",
                          exc_info=True)


def _janitor_loop() -> None:
    while True:
        time.sleep(JANITOR_INTERVAL_SECONDS)
        try:
            runtime = compat.runtime()
            if runtime is None:
                continue
            loop = compat.runtime_event_loop(runtime)
            if loop is None or loop.is_closed():
                return
            loop.call_soon_threadsafe(_safe_sweep)
        except Exception:  # never let the janitor die silently of a Streamlit change
            _LOGGER.exception("lorarank janitor pass failed")


def _safe_sweep() -> None:
    try:
        sweep_sessions()
    except Exception:
        _LOGGER.exception("lorarank janitor pass failed")


def start_janitor() -> None:
    """Start the server's janitor thread once (idempotent; no-op outside a server)."""
    global _JANITOR
    if compat.runtime() is None or not compat.usable("session_registry"):
        return
    with _JANITOR_LOCK:
        if _JANITOR is None or not _JANITOR.is_alive():
            _JANITOR = threading.Thread(target=_janitor_loop, name="lorarank-janitor",
                                        daemon=True)
            _JANITOR.start()
