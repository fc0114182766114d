"""Every use of Streamlit's and Starlette's internals, in one place.

In the manner of scikit-learn's ``utils/fixes.py``: the app relies on a few things these libraries
do not promise (a parser's class attribute, a private runtime accessor, how a widget value is
copied). Each is a :class:`Fix` below naming the versions it was tested on, why it exists and when
it can go. :func:`usable` checks the installed version against that range: inside it the fix is
applied; outside it the fix logs one warning (once per process) and the library's own behaviour
stays, so a new Streamlit or Starlette costs the fix's benefit, never a page. ``requirements.in``
caps both libraries below their next minor release for the same reason, and
``tests/test_compat.py`` pins both sides (applied in range, the page works out of range) and that
the locked versions are in every fix's range.

Moving a bound (docs/dependencies.md): raise the cap, re-lock, run the suite; a fix whose range
no longer holds the new version says so in the log and in ``tests/test_compat.py``. Check the fix
on the new version (its test module is named below), then widen its ``tested`` range.

The fixes
---------
``spool_in_memory`` (Starlette)
    ``MultiPartParser.spool_max_size``: Starlette spools every file part over 1 MiB to a temp
    file in ``$TMPDIR``; raised to the upload limit, parts stay in memory. Fallback: Starlette's
    spooling (deployments point ``TMPDIR`` at memory, docs/deploy.md).
``sharing_read`` (Starlette)
    ``UploadFile.read``: a whole-file read of an in-memory part hands over the parser's buffer
    instead of copying it (2.13x the file while receiving, 1.13x with the fix). Fallback: the copy.
``sharing_deepcopy`` (Streamlit)
    ``UploadedFile.__deepcopy__``: Streamlit deep-copies widget values on every run, and a deep
    copy of a ``BytesIO`` copies its bytes; the fix builds the copy on the same bytes
    (copy-on-write). Fallback: a second copy of every upload per session.
``session_registry`` (Streamlit)
    ``Runtime._session_mgr``, ``Runtime._get_async_objs()``, ``UploadedFileManager.file_storage``:
    what the janitor (:mod:`ui.uploads`) needs to close sessions disconnected for a while.
    Fallback: no janitor (Streamlit's own session expiry).
``script_session`` (Streamlit)
    ``get_script_run_ctx`` (``streamlit.runtime.scriptrunner_utils``) and
    ``Runtime.is_active_session``: whether the browser of the running script is still there, so
    abandoned work stops. Fallback: work runs to its end.
``deep_link_base`` (Streamlit's front end)
    ``window.__streamlit.BACKEND_BASE_URL`` (:data:`BASE_SCRIPT`), the front end's setting for
    hosts that embed it, read before its first request: the index page served at a page's own
    address names the app's base address, so the first health probe is the right one
    (:class:`ui.serving.DeepLinkBase`). Fallback: no middleware; the front end probes the page's
    address first (a 404 and 100 ms more for a new visitor opening a page link).
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import tempfile
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["Fix", "FIXES", "BASE_SCRIPT", "installed_version", "usable", "spool_in_memory", "share_whole_reads",
           "share_deep_copies", "running_session_id", "session_is_active", "runtime",
           "runtime_sessions", "runtime_event_loop", "upload_store_session_ids"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fix:
    """One reliance on a library's internals.

    Attributes
    ----------
    name : str
        The fix's key in :data:`FIXES`.
    library : str
        The distribution whose internals it uses (``"streamlit"`` or ``"starlette"``).
    tested : str
        The versions it was tested on, as a PEP 440 specifier (``">=1.67.0,<1.68"``).
    uses : str
        The internals it touches.
    remove_when : str
        When it can go.
    """

    name: str
    library: str
    tested: str
    uses: str
    remove_when: str


#: Every fix, by name.
FIXES: dict[str, Fix] = {fix.name: fix for fix in (
    Fix("spool_in_memory", "starlette", ">=1.10.0,<1.11", "MultiPartParser.spool_max_size",
        "when Streamlit's upload route keeps parts in memory itself (it passes no spool size to "
        "Starlette up to 1.67)"),
    Fix("sharing_read", "starlette", ">=1.10.0,<1.11",
        "UploadFile.read, UploadFile.file (a SpooledTemporaryFile's _file and _rolled)",
        "when Streamlit reads an upload's part without copying it (1.67 calls read())"),
    Fix("sharing_deepcopy", "streamlit", ">=1.67.0,<1.68",
        "UploadedFile's constructor, its attributes and _file_urls; UploadedFileRec",
        "when Streamlit stops deep-copying file_uploader values, or UploadedFile shares its bytes "
        "when copied"),
    Fix("session_registry", "streamlit", ">=1.67.0,<1.68",
        "Runtime._session_mgr.list_sessions(), Runtime._get_async_objs().eventloop, "
        "Runtime.close_session, UploadedFileManager.file_storage and remove_session_files, "
        "AppSession.session_state",
        "when Streamlit shuts down expired disconnected sessions itself, or offers a public "
        "session list"),
    Fix("deep_link_base", "streamlit", ">=1.67.0,<1.68",
        "the front end's window.__streamlit.BACKEND_BASE_URL, read before its first health probe",
        "when Streamlit's front end, opened at a page's address, asks the app's own health "
        "address first"),
    Fix("script_session", "streamlit", ">=1.67.0,<1.68",
        "streamlit.runtime.scriptrunner_utils.script_run_context.get_script_run_ctx, "
        "Runtime.is_active_session",
        "when Streamlit stops a script run whose browser session has gone"),
)}

_WARNED: set[str] = set()


@functools.lru_cache(maxsize=None)
def _specifier(text: str) -> SpecifierSet:
    return SpecifierSet(text)


@functools.lru_cache(maxsize=None)
def installed_version(library: str) -> Version | None:
    """The installed version of ``library`` (``"streamlit"`` or ``"starlette"``), or None."""
    try:
        module = __import__(library)
    except ImportError:
        return None
    try:
        return Version(str(module.__version__))
    except Exception:  # noqa: BLE001 - an unparsable version is an untested one
        return None


def usable(name: str, *, version: Version | None = None) -> bool:
    """Whether the fix ``name`` may be applied to the installed library (or to ``version``).

    Outside the fix's tested range this logs one warning per fix and process, naming the fix, the
    version found and the range tested, and returns False: the caller keeps the library's own
    behaviour.
    """
    fix = FIXES[name]
    found = installed_version(fix.library) if version is None else version
    if found is not None and found in _specifier(fix.tested):
        return True
    if name not in _WARNED:
        _WARNED.add(name)
        _LOGGER.warning("lorarank: %s %s is outside the range the '%s' fix was tested on (%s); "
                        "using the library's own behaviour (%s). See ui/compat.py.",
                        fix.library, found, name, fix.tested, fix.remove_when)
    return False


# --------------------------------------------------------------------------------------------
# A page link's base address (Streamlit's front end; used by ui.serving.DeepLinkBase)
# --------------------------------------------------------------------------------------------

#: Put into the index page served at a page's address: the app's base address is the parent
#: of that address. Our own constant markup; a host that already set ``window.__streamlit``
#: keeps its own. Served only where :func:`usable` says ``deep_link_base`` holds.
BASE_SCRIPT = (b'<script>if(!window.__streamlit){const p=location.pathname.replace(/\\/+$/,"");'
               b'window.__streamlit={BACKEND_BASE_URL:location.origin+p.slice(0,p.lastIndexOf("/")+1)}}'
               b'</script>')


# --------------------------------------------------------------------------------------------
# Uploads (Starlette's parser, Streamlit's UploadedFile)
# --------------------------------------------------------------------------------------------

def spool_in_memory(limit: int) -> bool:
    """Raise Starlette's multipart spool threshold to ``limit`` bytes; True when applied."""
    if not usable("spool_in_memory"):
        return False
    from starlette.formparsers import MultiPartParser

    if getattr(MultiPartParser, "spool_max_size", 0) < limit:
        MultiPartParser.spool_max_size = limit
    return True


def share_whole_reads() -> bool:
    """Wrap ``UploadFile.read`` once so a whole-file read of an in-memory part shares its
    buffer; True when applied."""
    if not usable("sharing_read"):
        return False
    from starlette.datastructures import UploadFile

    if not getattr(UploadFile.read, "_lorarank_shares", False):
        UploadFile.read = _sharing_read(UploadFile.read)
    return True


def share_deep_copies() -> bool:
    """Give Streamlit's ``UploadedFile`` a copy-on-write ``__deepcopy__``; True when applied."""
    if not usable("sharing_deepcopy"):
        return False
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    if "__deepcopy__" not in UploadedFile.__dict__:
        UploadedFile.__deepcopy__ = _sharing_deepcopy(UploadedFileRec)
    return True


def _sharing_deepcopy(record: type) -> Callable[[Any, dict], Any]:
    """``UploadedFile.__deepcopy__``: a new file on the same bytes (copy-on-write)."""

    def __deepcopy__(self: Any, memo: dict) -> Any:
        data = self.getvalue()  # the shared bytes (a copy only if the file was written to)
        attrs = copy.deepcopy({k: v for k, v in vars(self).items()}, memo)
        new = type(self)(record(file_id=attrs.get("file_id", ""), name=attrs.get("name", ""),
                                type=attrs.get("type", ""), data=data),
                         attrs.get("_file_urls"))
        vars(new).update(attrs)
        new.seek(self.tell())
        memo[id(self)] = new
        return new

    __deepcopy__._lorarank_shares = True  # type: ignore[attr-defined]
    return __deepcopy__


def _in_memory_buffer(file: Any) -> io.BytesIO | None:
    """The ``BytesIO`` behind an in-memory ``SpooledTemporaryFile`` (or a ``BytesIO``), else None."""
    if isinstance(file, io.BytesIO):
        return file
    if isinstance(file, tempfile.SpooledTemporaryFile) and not getattr(file, "_rolled", True):
        inner = getattr(file, "_file", None)
        return inner if isinstance(inner, io.BytesIO) else None
    return None


def _sharing_read(read: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[bytes]]:
    """``UploadFile.read`` that returns an in-memory file's whole buffer, shared, when asked for
    everything from the start (what Streamlit's upload route does); otherwise ``read``."""

    @functools.wraps(read)
    async def sharing_read(self: Any, size: int = -1) -> bytes:
        buffer = _in_memory_buffer(self.file)
        if buffer is not None and (size is None or size < 0) and buffer.tell() == 0:
            data = buffer.getvalue()  # trims the buffer to its length and shares it
            buffer.seek(0, io.SEEK_END)
            return data
        return await read(self, size)

    sharing_read._lorarank_shares = True  # type: ignore[attr-defined]
    return sharing_read


# --------------------------------------------------------------------------------------------
# The runtime's sessions (Streamlit)
# --------------------------------------------------------------------------------------------

def runtime() -> Any | None:
    """Streamlit's ``Runtime`` of this server, or None outside a server (AppTest, bare mode)."""
    try:
        from streamlit.runtime import Runtime
    except ImportError:  # pragma: no cover - a Streamlit without a runtime module
        return None
    return Runtime.instance() if Runtime.exists() else None


def running_session_id() -> str | None:
    """The browser session id of the script running in this thread, or None (no server, or
    outside the tested versions)."""
    if not usable("script_session"):
        return None
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return None if ctx is None else ctx.session_id


def session_is_active(session_id: str) -> bool:
    """Whether the browser of ``session_id`` is still connected (True when it cannot be told)."""
    rt = runtime()
    if rt is None or not usable("script_session"):
        return True
    return bool(rt.is_active_session(session_id))


def runtime_sessions(rt: Any) -> dict[str, Any] | None:
    """The runtime's sessions by id (connected or not), or None outside the tested versions."""
    if not usable("session_registry"):
        return None
    manager = rt._session_mgr  # noqa: SLF001 - no public accessor up to Streamlit 1.67
    return {info.session.id: info.session for info in manager.list_sessions()}


def runtime_event_loop(rt: Any) -> Any | None:
    """The asyncio loop the runtime serves sessions on, or None outside the tested versions."""
    if not usable("session_registry"):
        return None
    return rt._get_async_objs().eventloop  # noqa: SLF001 - no public accessor up to 1.67


def upload_store_session_ids(rt: Any) -> Iterable[str]:
    """Ids of the sessions the upload store holds files for (empty outside the tested versions
    or when the store is not the in-memory one)."""
    if not usable("session_registry"):
        return ()
    store = getattr(rt.uploaded_file_mgr, "file_storage", None)
    return list(store) if isinstance(store, dict) else ()
