"""Adapters from the Hugging Face Hub: ``hf://owner/name[@revision][/subfolder]``.

Downloads go through ``huggingface_hub`` (its cache layout, its errors, ``HF_ENDPOINT``,
``HF_TOKEN``, ``HF_HUB_OFFLINE``), and only what an audit needs: the repo's file list is read
first (one API call that also resolves the revision to a commit), then the adapter's
``adapter_config.json`` and its one weights file, never a whole model repo. Guards for a
hosted server that must not become a download proxy:

- a repo (or subfolder) that holds no adapter is refused from its file list, before any
  weights are downloaded;
- the bytes of one request are capped (default 2 GB) against the sizes the Hub reports,
  before downloading;
- a download that makes no progress for ``timeout`` seconds is abandoned;
- the cache is a folder of its own (``LORARANK_HF_CACHE``) kept under a byte budget: after
  each fetch the least recently used revisions leave it;
- a token comes from the caller (the app's secrets) or ``HF_TOKEN``, never from a URL and
  never from a login stored on the machine.

Every failure is a :class:`~lorarank.errors.HubError` whose message is one sentence naming
the repo and what to do.

Knobs (keyword arguments, defaults from the environment):

=========================  ==========================  ======================================
argument                   environment                 default
=========================  ==========================  ======================================
``max_bytes``              ``LORARANK_HF_MAX_BYTES``   2 000 000 000 (2 GB per request)
``cache_dir``              ``LORARANK_HF_CACHE``       ``$HF_HOME/lorarank-cache``
``cache_bytes``            ``LORARANK_HF_CACHE_BYTES`` 4 000 000 000
``timeout``                ``LORARANK_HF_TIMEOUT``     30 s without progress
``token``                  ``HF_TOKEN``                none (public repos only)
=========================  ==========================  ======================================
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError, HubError

__all__ = [
    "HubRef", "HubFiles", "HubSettings", "parse_hub_uri", "is_hub_uri", "fetch_adapter_files",
    "load_hub_adapter", "choose_adapter_files", "prune_cache", "DEFAULT_MAX_BYTES",
    "DEFAULT_CACHE_BYTES", "DEFAULT_TIMEOUT", "PREFIX", "download_file",
    "describe_hub_error", "list_repo", "request_token", "endpoint", "format_bytes",
    "HubListing", "list_adapter", "HubHeader", "read_adapter_header", "list_adapter_repos",
    "HEADER_FIRST_BYTES", "ADAPTER_TAGS",
]

PREFIX = "hf://"
DEFAULT_MAX_BYTES = 2_000_000_000
DEFAULT_CACHE_BYTES = 4_000_000_000
DEFAULT_TIMEOUT = 30.0

_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")
_PART_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_CONFIG = "adapter_config.json"


# ------------------------------------------------------------------------------ references
@dataclass(frozen=True)
class HubRef:
    """One adapter on the Hub.

    Attributes
    ----------
    repo_id : str
        ``owner/name`` of a model repo.
    revision : str or None
        Branch, tag or commit; None is the repo's default branch.
    subfolder : str
        Folder inside the repo that holds the adapter (``""``: the repo root).
    """

    repo_id: str
    revision: str | None = None
    subfolder: str = ""

    def __post_init__(self) -> None:
        repo = str(self.repo_id).strip()
        if not _REPO_RE.fullmatch(repo) or ".." in repo or "--" in repo or repo.endswith("."):
            raise ConfigError(f"a Hub repo is `owner/name` (letters, digits, '-', '_', '.'), "
                              f"got {self.repo_id!r}")
        object.__setattr__(self, "repo_id", repo)
        rev = None if self.revision is None else str(self.revision).strip() or None
        if rev is not None and (len(rev) > 200 or rev.startswith("/") or rev.endswith("/") or
                                any(not _PART_RE.fullmatch(p) or p in (".", "..")
                                    for p in rev.split("/"))):
            raise ConfigError(f"a Hub revision is a branch, tag or commit, got {self.revision!r}")
        object.__setattr__(self, "revision", rev)
        sub = str(self.subfolder or "").strip().strip("/")
        if sub and (len(sub) > 500 or any(not _PART_RE.fullmatch(p) or p in (".", "..")
                                          for p in sub.split("/"))):
            raise ConfigError(f"a Hub subfolder is a relative folder path inside the repo, "
                              f"got {self.subfolder!r}")
        object.__setattr__(self, "subfolder", sub)

    @property
    def uri(self) -> str:
        """``hf://owner/name[@revision][/subfolder]`` (a revision holding '/' cannot be
        written this way; the page's ``revision`` field takes it)."""
        text = PREFIX + self.repo_id
        if self.revision:
            text += "@" + self.revision
        return text + ("/" + self.subfolder if self.subfolder else "")

    @property
    def web_url(self) -> str:
        """The repo's page on the Hub this process talks to (``HF_ENDPOINT``)."""
        return f"{_endpoint()}/{self.repo_id}"

    def with_revision(self, revision: str) -> "HubRef":
        """The same adapter at another revision (e.g. the resolved commit)."""
        return replace(self, revision=revision)


def is_hub_uri(text: str) -> bool:
    """True for ``hf://...`` (a CLI PATH that names a Hub adapter)."""
    return str(text).startswith(PREFIX)


def parse_hub_uri(text: str) -> HubRef:
    """``hf://owner/name[@revision][/subfolder]`` (or without ``hf://``) -> :class:`HubRef`.

    The revision ends at the first ``/`` after ``@``: everything after it is the subfolder.

    Raises
    ------
    ConfigError
        Not a repo id, a bad revision or subfolder; or credentials in the text
        (``hf://user:token@...``): tokens come from ``HF_TOKEN`` or the app's secrets only.
    """
    raw = str(text).strip()
    body = raw[len(PREFIX):] if raw.startswith(PREFIX) else raw
    if ":" in body or "?" in body or "#" in body:
        raise ConfigError(f"{raw!r} is not hf://owner/name[@revision][/subfolder]; a token never "
                          "goes in the link (set HF_TOKEN instead)")
    parts = body.split("/")
    if len(parts) < 2:
        raise ConfigError(f"{raw!r} is not hf://owner/name[@revision][/subfolder]")
    owner, rest = parts[0], "/".join(parts[1:])
    name, _, after = rest.partition("/")
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
    elif "@" in owner:
        raise ConfigError(f"{raw!r} is not hf://owner/name[@revision][/subfolder]")
    if "@" in after:
        raise ConfigError(f"{raw!r}: put the revision right after the repo name "
                          "(hf://owner/name@revision/subfolder)")
    return HubRef(f"{owner}/{name}", revision or None, after)


# -------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class HubSettings:
    """Limits of one process's Hub downloads (see the module docstring's table)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    cache_dir: Path | None = None
    cache_bytes: int = DEFAULT_CACHE_BYTES
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "HubSettings":
        """From ``LORARANK_HF_*`` variables; ConfigError naming a bad one."""
        env = os.environ if env is None else env

        def number(key: str, default: float, cast: type) -> Any:
            raw = env.get(key, "").strip()
            if not raw:
                return default
            try:
                value = cast(float(raw))
            except ValueError:
                raise ConfigError(f"{key} should be a number, got {raw!r}") from None
            if not value > 0:
                raise ConfigError(f"{key} should be positive, got {raw!r}")
            return value

        cache = env.get("LORARANK_HF_CACHE", "").strip()
        return cls(max_bytes=number("LORARANK_HF_MAX_BYTES", DEFAULT_MAX_BYTES, int),
                   cache_dir=Path(cache) if cache else None,
                   cache_bytes=number("LORARANK_HF_CACHE_BYTES", DEFAULT_CACHE_BYTES, int),
                   timeout=number("LORARANK_HF_TIMEOUT", DEFAULT_TIMEOUT, float))

    def resolved_cache_dir(self) -> Path:
        """The cache folder: ``cache_dir``, or ``$HF_HOME/lorarank-cache`` (a folder of its
        own, so pruning it never touches the machine's main Hugging Face cache)."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        from huggingface_hub import constants

        return Path(constants.HF_HOME) / "lorarank-cache"


# ----------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class HubFiles:
    """What :func:`fetch_adapter_files` downloaded.

    Attributes
    ----------
    ref : HubRef
        As asked (revision as given, possibly None).
    commit : str
        The 40-hex commit the revision resolved to; every file comes from it.
    files : tuple of (str, Path)
        ``(file name, local path in the cache)``: the weights file, then the config if any.
    sizes : tuple of int
        Bytes of each file.
    """

    ref: HubRef
    commit: str
    files: tuple[tuple[str, Path], ...]
    sizes: tuple[int, ...]

    @property
    def pinned(self) -> HubRef:
        """The same adapter pinned to its commit: a link that shows the same numbers later."""
        return self.ref.with_revision(self.commit)

    @property
    def weights(self) -> Path:
        """Local path of the weights file."""
        return self.files[0][1]

    @property
    def config(self) -> Path | None:
        """Local path of ``adapter_config.json``, if the adapter has one."""
        return self.files[1][1] if len(self.files) > 1 else None

    @property
    def total_bytes(self) -> int:
        return int(sum(self.sizes))


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def choose_adapter_files(ref: HubRef, listing: Mapping[str, int | None]) -> list[str]:
    """The repo paths an audit of ``ref`` needs, from the repo's file list; weights first.

    Parameters
    ----------
    listing : mapping of str to int or None
        Every file of the repo at the revision (path -> size in bytes as the Hub reports it).

    Returns
    -------
    list of str
        ``[weights]`` or ``[weights, subfolder/adapter_config.json]``.

    Raises
    ------
    HubError
        The folder holds no adapter (no ``adapter_config.json`` and no weights file named like
        an adapter), only a pickled ``adapter_model.bin``, or several candidate weights files.
        Checked before anything is downloaded.
    """
    prefix = ref.subfolder + "/" if ref.subfolder else ""
    here = {path[len(prefix):]: path for path in listing
            if path.startswith(prefix) and "/" not in path[len(prefix):]}
    where = f"{ref.uri} (folder {ref.subfolder!r})" if ref.subfolder else ref.uri
    if not here and ref.subfolder:
        raise HubError(f"{where} has no such folder at this revision; check the subfolder "
                       "(it is a path inside the repo, e.g. hf://owner/name/checkpoint-500)")
    from .adapters import choose_weights

    has_config = _CONFIG in here
    # Without a config only files named like an adapter: a model's weights are never fetched.
    chosen, weights = choose_weights(here, adapter_names_only=not has_config)
    if chosen is None and len(weights) > 1:
        raise HubError(f"{where} holds several adapter weights files ({', '.join(weights[:5])}); "
                       "lorarank audits one: put it in its own subfolder, or name the one to use "
                       "adapter_model.safetensors")
    elif chosen is None:
        if has_config:
            raise HubError(f"{where} has an {_CONFIG} but no .safetensors weights beside it; "
                           "lorarank reads adapter_model.safetensors")
        if "adapter_model.bin" in here:
            raise HubError(f"{where} holds only adapter_model.bin, a pickle that lorarank does "
                           "not load (it can run code); convert it to adapter_model.safetensors")
        nested = sorted({p[len(prefix):].rsplit("/", 1)[0] for p in listing
                         if p.startswith(prefix) and p.endswith("/" + _CONFIG)})
        hint = (f"; adapters in its subfolders: {', '.join(nested[:5])}" if nested else
                "; give a LoRA adapter repo (adapter_config.json + adapter_model.safetensors, "
                "or a *lora*.safetensors file), not a model repo")
        raise HubError(f"{where} holds no LoRA adapter (no {_CONFIG} and no .safetensors named "
                       f"like an adapter){hint}")
    paths = [here[chosen]]
    if has_config:
        paths.append(here[_CONFIG])
    return paths


def _hub_error(exc: BaseException, ref: HubRef, filename: str | None = None) -> HubError:
    """One sentence for an exception raised by huggingface_hub while fetching ``ref``."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo = ref.uri
    if isinstance(exc, GatedRepoError):
        return HubError(f"{repo} is a gated repo: accept its conditions at {ref.web_url} with the "
                        "account whose read token this server uses (HF_TOKEN or the app's secrets)")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{repo} was not found on {_endpoint()}, or it is private: check the name, "
                        "or give this server a read token that can see it (HF_TOKEN or the app's "
                        "secrets; never in the link)")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{repo}: the repo has no revision {ref.revision!r} (a branch, tag or "
                        "commit); drop it to use the default branch")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"{repo}: the file {filename or '?'} is listed but the Hub does not serve "
                        "it at this revision; try again or pin another revision")
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError)
                                                 and constants.HF_HUB_OFFLINE):
        return HubError(f"{repo} cannot be downloaded: this server is offline (HF_HUB_OFFLINE is "
                        "set); upload the adapter's files instead")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return HubError(f"{repo}: the Hub refused access (HTTP {status}); give this server a "
                            "read token that can see it (HF_TOKEN or the app's secrets)")
        return HubError(f"{repo}: the Hub at {_endpoint()} answered HTTP {status or '?'}; try "
                        "again later")
    name = type(exc).__name__
    if isinstance(exc, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name \
            or isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"{repo} cannot be downloaded: the Hub at {_endpoint()} cannot be reached "
                        "from this server (offline?); upload the adapter's files instead")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return HubError(f"{repo}: {filename or 'a file'} arrived with another size than the Hub "
                        "announced; try again")
    return HubError(f"{repo} could not be fetched from {_endpoint()} ({name}); try again later")


class _Activity:
    """Bytes received so far and when the last ones came, shared with the worker thread."""

    def __init__(self) -> None:
        self.done = 0
        self.last = time.monotonic()

    def touch(self, n: int = 0) -> None:
        self.done += n
        self.last = time.monotonic()


def _tqdm_class(activity: _Activity, cap: int):
    """A huggingface_hub progress bar that reports bytes to ``activity`` (no console output)
    and stops a download that grows past ``cap`` bytes (a server sending more than it said)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Progress(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            activity.touch(int(n or 0))
            if activity.done > cap:
                raise HubError(f"the download grew past the announced {_fmt_bytes(cap)}; stopped")
            return None

    return _Progress


def _list_siblings(api: Any, ref: HubRef, settings: HubSettings,
                   activity: _Activity) -> tuple[str, dict[str, tuple[int | None, str | None]]]:
    """``(commit, {path: (size, content id)})`` of the repo at ``ref.revision``: one API call.

    The content id is ``sha256:<hex>`` for an LFS file (the hash of its bytes) and
    ``git:<blob id>`` for a small one, so a cache can tell whether a file changed without
    downloading it.
    """
    try:
        info = api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True,
                              timeout=settings.timeout)
    except Exception as exc:  # noqa: BLE001 - mapped to one sentence
        raise _hub_error(exc, ref) from exc
    activity.touch()
    commit = str(info.sha or "")
    if not _SHA_RE.fullmatch(commit):
        raise HubError(f"{ref.uri}: the Hub did not say which commit the revision is; try again")
    listing = {}
    for s in info.siblings or []:
        lfs = s.lfs
        size = s.size if s.size is not None else (lfs.size if lfs else None)
        ident = (f"sha256:{lfs.sha256}" if lfs and getattr(lfs, "sha256", None) else
                 f"git:{s.blob_id}" if getattr(s, "blob_id", None) else None)
        listing[s.rfilename] = (size, ident)
    return commit, listing


def _list_files(api: Any, ref: HubRef, settings: HubSettings,
                activity: _Activity) -> tuple[str, dict[str, int | None]]:
    """``(commit, {path: size})`` of the repo at ``ref.revision``: one API call."""
    commit, listing = _list_siblings(api, ref, settings, activity)
    return commit, {path: size for path, (size, _) in listing.items()}


def _fetch(ref: HubRef, settings: HubSettings, token: str | bool, activity: _Activity,
           state: dict) -> HubFiles:
    """The work of :func:`fetch_adapter_files`, run in a worker thread."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    cache_dir = settings.resolved_cache_dir()
    commit, listing = _list_files(api, ref, settings, activity)
    paths = choose_adapter_files(ref, listing)
    sizes = [listing[p] for p in paths]
    if any(s is None for s in sizes):
        raise HubError(f"{ref.uri}: the Hub did not report the size of "
                       f"{', '.join(p for p, s in zip(paths, sizes) if s is None)}, so the "
                       "download limit cannot be checked; not downloaded")
    total = int(sum(sizes))  # type: ignore[arg-type]
    if total > settings.max_bytes:
        big = max(zip(sizes, paths))
        raise HubError(f"{ref.uri}: {big[1]} is {_fmt_bytes(big[0])}, over this server's limit of "
                       f"{_fmt_bytes(settings.max_bytes)} per request (LORARANK_HF_MAX_BYTES); "
                       "run lorarank locally for it")
    state["total"] = total
    tqdm_class = _tqdm_class(activity, total)
    local = []
    for path in paths:
        try:
            local.append(Path(hf_hub_download(ref.repo_id, path, revision=commit,
                                              cache_dir=cache_dir, token=token,
                                              endpoint=endpoint,
                                              etag_timeout=settings.timeout,
                                              tqdm_class=tqdm_class)))
        except HubError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to one sentence
            raise _hub_error(exc, ref, path) from exc
        activity.touch()
    actual = [p.stat().st_size for p in local]
    for path, got, said in zip(paths, actual, sizes):
        if got != said:
            raise HubError(f"{ref.uri}: {path} is {got:,} bytes, the Hub announced {said:,}; "
                           "not audited")
    try:
        prune_cache(cache_dir, max_bytes=settings.cache_bytes, keep=(commit,))
    except OSError:
        pass  # a cache that cannot be pruned never fails an audit
    return HubFiles(ref=ref, commit=commit,
                    files=tuple((p.rsplit("/", 1)[-1], lp) for p, lp in zip(paths, local)),
                    sizes=tuple(actual))


def fetch_adapter_files(ref: HubRef | str, *, token: str | None = None,
                        settings: HubSettings | None = None,
                        progress: Callable[[int, int], None] | None = None) -> HubFiles:
    """Download an adapter's config and weights from the Hub into the bounded cache.

    Parameters
    ----------
    ref : HubRef or str
        The adapter; a string is parsed by :func:`parse_hub_uri`.
    token : str, optional
        A read token (from the app's secrets); default ``HF_TOKEN`` from the environment, else
        anonymous. A token stored by ``hf auth login`` is deliberately not used.
    settings : HubSettings, optional
        Limits; default :meth:`HubSettings.from_env`.
    progress : callable, optional
        ``progress(bytes_done, bytes_total)``, called from the calling thread about every 0.1 s
        while downloading (``bytes_total`` is 0 until the file list is read).

    Returns
    -------
    HubFiles
        The resolved commit and the local paths (weights first).

    Raises
    ------
    HubError
        One sentence: no such repo or revision, private or gated without a token, no adapter
        in the folder, over ``max_bytes``, unreachable or offline, or no progress for
        ``settings.timeout`` seconds.
    ConfigError
        A malformed reference or environment setting.
    """
    ref = parse_hub_uri(ref) if isinstance(ref, str) else ref
    settings = HubSettings.from_env() if settings is None else settings
    return _watched(ref, settings, lambda activity, state: _fetch(ref, settings, _token(token),
                                                                   activity, state), progress)


def _token(token: str | None) -> str | bool:
    """The token a request uses: the caller's, else ``HF_TOKEN``, else anonymous (never a
    login stored on the machine)."""
    return token or os.environ.get("HF_TOKEN", "").strip() or False


def _watched(ref: HubRef, settings: HubSettings, work: Callable[[_Activity, dict], Any],
             progress: Callable[[int, int], None] | None) -> Any:
    """Run ``work(activity, state)`` in a worker thread; abandon it when ``activity`` shows no
    progress for ``settings.timeout`` seconds; report ``(activity.done, state["total"])``."""
    # Import before the clock starts: on a busy machine the import alone can take seconds.
    from huggingface_hub import HfApi, hf_hub_download  # noqa: F401 - the big modules, now
    from huggingface_hub.utils import tqdm  # noqa: F401

    activity = _Activity()
    state: dict = {"total": 0}
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work(activity, state)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"lorarank-hub-{ref.repo_id}", daemon=True)
    worker.start()
    shown = (-1, -1)
    while worker.is_alive():
        worker.join(0.1)
        if progress is not None and (activity.done, state["total"]) != shown:
            shown = (activity.done, state["total"])
            progress(*shown)
        if worker.is_alive() and time.monotonic() - activity.last > settings.timeout:
            # The worker is left to the library's own timeouts; it holds no lock of ours.
            raise HubError(f"{ref.uri}: the Hub at {_endpoint()} sent nothing for "
                           f"{settings.timeout:g} s, so the download was abandoned; try again "
                           "later")
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, (HubError, ConfigError)):
            raise exc
        raise _hub_error(exc, ref) from exc
    if progress is not None:
        progress(state["total"], state["total"])
    return outcome["value"]


def load_hub_adapter(ref: HubRef | str, *, token: str | None = None,
                     settings: HubSettings | None = None, alpha: float | None = None,
                     scale: float | None = None):
    """Fetch with :func:`fetch_adapter_files` and read with :func:`lorarank.adapters.load_adapter`.

    The adapter's ``source`` is the pinned reference ``hf://owner/name@commit[/subfolder]``, so
    an audit document says exactly what it read (a local folder's is the folder's name).

    Returns
    -------
    (Adapter, HubFiles)
    """
    from dataclasses import replace as _replace

    from .adapters import load_adapter

    fetched = fetch_adapter_files(ref, token=token, settings=settings)
    adapter = load_adapter(fetched.weights, config=fetched.config, alpha=alpha, scale=scale)
    return _replace(adapter, source=fetched.pinned.uri), fetched


# ----------------------------------------------------------------------------------- fleets
#: Bytes fetched first for a safetensors header (one range request covers most adapters'
#: headers; a larger header costs a second request, bounded by ``MAX_HEADER_BYTES``).
HEADER_FIRST_BYTES = 65_536


@dataclass(frozen=True)
class HubListing:
    """What one listing call says about an adapter: its commit, files, sizes and content ids."""

    ref: HubRef
    commit: str
    paths: tuple[str, ...]
    sizes: tuple[int, ...]
    ids: tuple[str | None, ...]

    @property
    def pinned(self) -> HubRef:
        return self.ref.with_revision(self.commit)

    @property
    def total_bytes(self) -> int:
        return int(sum(self.sizes))

    @property
    def content_key(self) -> str | None:
        """The adapter's files by content (None when the Hub gave no id for one of them)."""
        if any(i is None for i in self.ids):
            return None
        return "|".join(f"{p.rsplit('/', 1)[-1]}={i}" for p, i in zip(self.paths, self.ids))


def list_adapter(ref: HubRef | str, *, token: str | None = None,
                 settings: HubSettings | None = None) -> HubListing:
    """List an adapter's files (one API call, nothing downloaded): which files an audit reads,
    their sizes and content ids, and the commit the revision resolves to.

    Raises
    ------
    HubError
        As :func:`fetch_adapter_files` before it downloads.
    """
    from huggingface_hub import HfApi

    ref = parse_hub_uri(ref) if isinstance(ref, str) else ref
    settings = HubSettings.from_env() if settings is None else settings

    def work(activity: _Activity, state: dict) -> HubListing:
        api = HfApi(endpoint=_endpoint(), token=_token(token))
        commit, listing = _list_siblings(api, ref, settings, activity)
        paths = choose_adapter_files(ref, {p: size for p, (size, _) in listing.items()})
        sizes = [listing[p][0] for p in paths]
        if any(size is None for size in sizes):
            raise HubError(f"{ref.uri}: the Hub did not report the size of "
                           f"{', '.join(p for p, n in zip(paths, sizes) if n is None)}; not read")
        return HubListing(ref, commit, tuple(paths), tuple(int(n) for n in sizes),
                          tuple(listing[p][1] for p in paths))

    return _watched(ref, settings, work, None)


@dataclass(frozen=True)
class HubHeader:
    """A Hub adapter's safetensors header and config, read without its weights.

    Attributes
    ----------
    listing : HubListing
    name : str
        The weights file's name.
    entries : dict of str to (str, tuple of int)
        Tensor name -> (safetensors dtype, shape).
    metadata : dict of str to str
    config : bytes or None
        ``adapter_config.json`` as downloaded.
    fetched : int
        Bytes of the weights file actually transferred (the header's range).
    """

    listing: HubListing
    name: str
    entries: dict
    metadata: dict
    config: bytes | None
    fetched: int

    @property
    def commit(self) -> str:
        return self.listing.commit

    @property
    def total_bytes(self) -> int:
        return self.listing.total_bytes


def _read_range(url: str, headers: dict, start: int, end: int, timeout: float,
                activity: _Activity) -> bytes:
    """Bytes ``start..end`` (inclusive) of ``url``; at most ``end - start + 1`` bytes are kept
    even when a server ignores the range and sends the whole file."""
    from huggingface_hub.utils import get_session

    want = end - start + 1
    out = bytearray()
    with get_session().stream("GET", url, headers={**headers, "Range": f"bytes={start}-{end}"},
                              timeout=timeout, follow_redirects=True) as response:
        if response.status_code >= 400:
            response.read()
            from huggingface_hub.utils import hf_raise_for_status

            hf_raise_for_status(response)
        skip = start if response.status_code == 200 else 0   # the server ignored the range
        for chunk in response.iter_bytes():
            activity.touch(len(chunk))
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            out += chunk[: want - len(out)]
            if len(out) >= want:
                break
    return bytes(out)


def read_adapter_header(ref: HubRef | str, *, token: str | None = None,
                        settings: HubSettings | None = None) -> HubHeader:
    """The safetensors header of a Hub adapter by HTTP range requests, plus its small config.

    One listing call, then the first :data:`HEADER_FIRST_BYTES` bytes of the weights file
    (and, for a larger header, the rest of it, bounded by
    :data:`lorarank.adapters._tensors.MAX_HEADER_BYTES`); no weights are downloaded. The header
    is checked as a local one is (:func:`lorarank.adapters.headers.parse_header`).

    Raises
    ------
    HubError
        As :func:`list_adapter`; a weights file that is not safetensors (npz, gguf), which
        needs a full download.
    AdapterError
        A header over the bounds or not describing the file's data.
    """
    from huggingface_hub import hf_hub_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    from .adapters.headers import parse_header

    ref = parse_hub_uri(ref) if isinstance(ref, str) else ref
    settings = HubSettings.from_env() if settings is None else settings
    listing = list_adapter(ref, token=token, settings=settings)
    weights = listing.paths[0]
    name = weights.rsplit("/", 1)[-1]
    if not name.lower().endswith(".safetensors"):
        raise HubError(f"{ref.uri}: {name} is not a safetensors file, so its ranks cannot be read "
                       "from a header; audit it without --screen")
    size = listing.sizes[0]

    def work(activity: _Activity, state: dict) -> HubHeader:
        endpoint = _endpoint()
        tok = _token(token)
        url = hf_hub_url(ref.repo_id, weights, revision=listing.commit, endpoint=endpoint)
        headers = build_hf_headers(token=tok)
        got = [0]
        try:
            first = _read_range(url, headers, 0, min(HEADER_FIRST_BYTES, size) - 1, settings.timeout,
                                activity)
            got[0] += len(first)
            pos = [8]

            def read(n: int) -> bytes:
                have = first[pos[0]:pos[0] + n]
                if len(have) < n:
                    more = _read_range(url, headers, pos[0] + len(have), pos[0] + n - 1,
                                       settings.timeout, activity)
                    got[0] += len(more)
                    have += more
                pos[0] += n
                return have

            entries, metadata = parse_header(name, first[:8], read, size)
        except (HubError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - AdapterError passes, the rest is one sentence
            from .errors import AdapterError

            if isinstance(exc, AdapterError):
                raise
            raise _hub_error(exc, ref, weights) from exc
        config = None
        if len(listing.paths) > 1:
            try:
                local = hf_hub_download(ref.repo_id, listing.paths[1], revision=listing.commit,
                                        cache_dir=settings.resolved_cache_dir(), token=tok,
                                        endpoint=endpoint, etag_timeout=settings.timeout)
            except Exception as exc:  # noqa: BLE001 - mapped to one sentence
                raise _hub_error(exc, ref, listing.paths[1]) from exc
            config = Path(local).read_bytes()
        return HubHeader(listing, name, entries, metadata, config, got[0])

    return _watched(ref, settings, work, None)


#: Tags that mark a Hub repo as an adapter (PEFT's library tag, LoRA tags, an adapter's
#: base_model relation).
ADAPTER_TAGS = ("peft", "lora")


def list_adapter_repos(*, author: str | None = None, base_model: str | None = None,
                       search: str | None = None, limit: int = 1000, token: str | None = None,
                       settings: HubSettings | None = None) -> tuple[list[str], int]:
    """Adapter repos of a user or organisation, or of a base model, from the Hub's model list.

    Uses ``HfApi.list_models`` (``author``, ``search``, and for a base model the tag
    ``base_model:adapter:<base_model>`` the Hub gives adapters that declare it). A repo counts
    as an adapter when its tags say so (``peft``, ``lora``, a ``base_model:adapter:...`` tag,
    or library ``peft``); the others (full models, datasets' scripts) are skipped and counted.

    Returns
    -------
    repos : list of str
        ``owner/name``, in the Hub's order, at most ``limit``.
    skipped : int
        Repos listed that are not tagged as adapters.
    """
    from huggingface_hub import HfApi

    settings = HubSettings.from_env() if settings is None else settings
    where = HubRef(base_model or f"{author or 'hub'}/listing")   # names the query in a stall message

    def work(activity: _Activity, state: dict) -> tuple[list[str], int]:
        api = HfApi(endpoint=_endpoint(), token=_token(token))
        filters = [f"base_model:adapter:{base_model}"] if base_model else None
        repos, skipped = [], 0
        try:
            for info in api.list_models(author=author, search=search, filter=filters, limit=limit):
                activity.touch(1)
                tags = [str(t) for t in (getattr(info, "tags", None) or [])]
                library = str(getattr(info, "library_name", None) or "")
                if (base_model or library == "peft" or any(t in ADAPTER_TAGS for t in tags)
                        or any(t.startswith("base_model:adapter:") for t in tags)):
                    repos.append(str(info.id))
                else:
                    skipped += 1
        except HubError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to one sentence
            what = ", ".join(f"{k} {v}" for k, v in (("author", author), ("base model", base_model),
                                                     ("search", search)) if v)
            name = type(exc).__name__
            if isinstance(exc, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
                raise HubError(f"the Hub at {_endpoint()} cannot be reached from here to list "
                               f"models ({what}); try again, or give local files") from exc
            raise HubError(f"the Hub at {_endpoint()} could not list models ({what}): {name}; "
                           "try again later") from exc
        return repos, skipped

    return _watched(where, settings, work, None)


# ----------------------------------------------------------------------------------- cache
def prune_cache(cache_dir: str | os.PathLike, *, max_bytes: int, keep: tuple[str, ...] = (),
                stale_incomplete: float = 3600.0) -> int:
    """Delete least recently used revisions until the cache holds at most ``max_bytes``.

    Parameters
    ----------
    cache_dir : path
        A huggingface_hub cache folder (``models--owner--name/...``).
    max_bytes : int
        Budget for the blobs on disk.
    keep : tuple of str
        Commits never deleted (the one just fetched).
    stale_incomplete : float
        Partial downloads (``*.incomplete``) older than this many seconds are removed too.

    Returns
    -------
    int
        Bytes freed.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    root = Path(cache_dir)
    freed = 0
    now = time.time()
    for partial in root.glob("*/blobs/*.incomplete"):
        try:
            stat = partial.stat()
            if now - stat.st_mtime > stale_incomplete:
                partial.unlink()
                freed += stat.st_size
        except OSError:
            pass
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return freed
    total = info.size_on_disk
    if total <= max_bytes:
        return freed
    revisions = []
    for repo in info.repos:
        for rev in repo.revisions:
            used = max((f.blob_last_accessed for f in rev.files), default=rev.last_modified)
            revisions.append((used, rev.commit_hash, rev.size_on_disk))
    doomed = []
    for used, commit, size in sorted(revisions):
        if total <= max_bytes:
            break
        if commit in keep:
            continue
        doomed.append(commit)
        total -= size
    if doomed:
        strategy = info.delete_revisions(*doomed)
        freed += strategy.expected_freed_size
        strategy.execute()
    return freed


# ------------------------------------------------------- seams for readers by byte range
def describe_hub_error(exc: BaseException, ref: HubRef, filename: str | None = None) -> HubError:
    """One sentence for an exception raised by ``huggingface_hub`` while reading ``ref``."""
    return _hub_error(exc, ref, filename)


def list_repo(ref: HubRef, *, token: str | None = None,
              settings: HubSettings | None = None) -> tuple[str, dict[str, int | None]]:
    """``(commit, {path: size})`` of the repo at ``ref.revision``: one API call, which also
    resolves the revision to a commit (HubError as one sentence)."""
    from huggingface_hub import HfApi

    settings = HubSettings.from_env() if settings is None else settings
    api = HfApi(endpoint=_endpoint(), token=_token(token))
    return _list_files(api, ref, settings, _Activity())


def download_file(ref: HubRef, path: str, *, token: str | None = None,
                  settings: HubSettings | None = None) -> bytes:
    """The bytes of one (small) file of the repo at ``ref.revision``, through the bounded cache,
    abandoned after ``settings.timeout`` seconds without progress.

    For files whose size was checked from :func:`list_repo` first (a ``trainer_state.json``);
    adapter weights go through :func:`fetch_adapter_files`.
    """
    settings = HubSettings.from_env() if settings is None else settings

    def work(activity: _Activity, state: dict) -> bytes:
        from huggingface_hub import hf_hub_download

        try:
            local = hf_hub_download(ref.repo_id, path, revision=ref.revision,
                                    cache_dir=settings.resolved_cache_dir(), token=_token(token),
                                    endpoint=_endpoint(), etag_timeout=settings.timeout)
        except Exception as exc:  # noqa: BLE001 - mapped to one sentence
            raise _hub_error(exc, ref, path) from exc
        activity.touch(1)
        return Path(local).read_bytes()

    return _watched(ref, settings, work, None)


def request_token(token: str | None) -> str | bool:
    """The token a request uses: the caller's, else ``HF_TOKEN``, else anonymous."""
    return _token(token)


def endpoint() -> str:
    """The Hub this process talks to (``HF_ENDPOINT``)."""
    return _endpoint()


def format_bytes(n: float) -> str:
    """``"1.2 GB"``, ``"340 kB"``, ``"12 bytes"``."""
    return _fmt_bytes(n)
