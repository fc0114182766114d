"""Models on the Hugging Face Hub read by the bytes they need, never downloaded whole.

A base model (``--base hf://owner/name[@revision]``, or the one an adapter's config names) or a
fine-tuned model on the Hub is opened in four steps, all through ``huggingface_hub`` (its
endpoint, token handling, HTTP session and errors):

1. one API call lists the repo's files and their sizes and pins the revision to a commit;
2. the weights are chosen from the list: ``model.safetensors.index.json`` and the shards it
   names, else ``model.safetensors``, else the folder's ``*.safetensors`` files (a folder
   holding an adapter, or only pickled ``*.bin`` weights, is refused before anything else);
3. each file's safetensors header is read by byte range (the 8-byte length and the JSON,
   bounded as every header is: :func:`lorarank.weights.parse_safetensors_header`), and must
   describe the file's announced size exactly;
4. tensors are then read on demand, each (or each block of its rows) by one HTTP range request
   for exactly its bytes.

Every byte fetched counts against the request's limit (``max_bytes`` of
:class:`lorarank.hub.HubSettings`, the Hub input's byte cap; the page sets it to the upload
limit): :meth:`RemoteModel.check_plan` refuses, before reading, a set of tensors that would go
over it, and a read that would pass it is refused too. A server that answers a range request
with the whole file (HTTP 200), or with more bytes than asked, is stopped at the bytes asked.
Failures are one sentence (:func:`lorarank.hub.describe_hub_error`).
"""

from __future__ import annotations

import re
import threading
from typing import Iterable, Mapping

from .errors import AdapterError, ConfigError, HubError
from .hub import (HubRef, HubSettings, describe_hub_error, endpoint, format_bytes, is_hub_uri,
                  list_repo, parse_hub_uri, request_token)
from .weights import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, ModelWeights, TensorInfo, check_counts, \
    merge_entries, parse_safetensors_header, shard_names

__all__ = ["RemoteModel", "open_hub_model", "base_from_config", "HEADER_PREFETCH", "choose_model_files"]

#: Bytes asked for first from each file: the 8-byte length and, usually, the whole header.
HEADER_PREFETCH = 32 * 2**10
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")


def choose_model_files(ref: HubRef, listing: Mapping[str, int | None]) -> tuple[str | None, list[str]]:
    """``(index path or None, [weights paths])`` of the model in ``ref``'s folder, from the
    repo's file list; HubError (one sentence) when the folder holds no safetensors model."""
    prefix = ref.subfolder + "/" if ref.subfolder else ""
    here = {p[len(prefix):]: p for p in listing if p.startswith(prefix) and "/" not in p[len(prefix):]}
    where = f"{ref.uri} (folder {ref.subfolder!r})" if ref.subfolder else ref.uri
    if "adapter_config.json" in here and "config.json" not in here:
        raise HubError(f"{where} is a LoRA adapter (it has adapter_config.json), not a model; give "
                       "the model it was trained on, or audit the adapter itself")
    if _INDEX in here:
        return here[_INDEX], []
    if _SINGLE in here:
        return None, [here[_SINGLE]]
    files = sorted(p for n, p in here.items() if n.endswith(".safetensors")
                   and not re.search(r"adapter|lora", n, re.IGNORECASE))
    if files:
        return None, files
    if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in here):
        raise HubError(f"{where} holds its weights only as pickles (.bin / .pt), which lorarank "
                       "does not load (they can run code); use a repo with .safetensors weights")
    raise HubError(f"{where} holds no .safetensors weights (no {_INDEX}, no {_SINGLE})")


class _Link:
    """HTTP range reads of one repo at one commit, with the byte accounting of a request."""

    def __init__(self, ref: HubRef, commit: str, token: str | bool, settings: HubSettings) -> None:
        self.ref = ref
        self.commit = commit
        self.token = token
        self.settings = settings
        self.fetched = 0
        self.requests = 0
        self._lock = threading.Lock()

    def _charge(self, n: int, path: str) -> None:
        with self._lock:
            if self.fetched + n > self.settings.max_bytes:
                raise HubError(f"{self.ref.uri}: reading {path} would bring this request to "
                               f"{format_bytes(self.fetched + n)}, over the limit of "
                               f"{format_bytes(self.settings.max_bytes)} (LORARANK_HF_MAX_BYTES); run "
                               "lorarank locally for it")
            self.fetched += n
            self.requests += 1

    def get(self, path: str, begin: int, end: int, *, whole: bool = False) -> bytes:
        """Bytes ``[begin, end)`` of ``path`` (``whole``: a small file, asked for entirely)."""
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

        n = end - begin
        if n <= 0:
            return b""
        self._charge(n, path)
        url = hf_hub_url(self.ref.repo_id, path, revision=self.commit, endpoint=endpoint())
        headers = build_hf_headers(token=self.token)
        if not whole:
            headers["Range"] = f"bytes={begin}-{end - 1}"
        try:
            with get_session().stream("GET", url, headers=headers, timeout=self.settings.timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    hf_raise_for_status(r)
                if not whole and r.status_code != 206:
                    raise HubError(f"{self.ref.uri}: the Hub answered a byte-range request for {path} "
                                   f"with HTTP {r.status_code} instead of 206, so only whole files "
                                   "could be read; not downloaded")
                chunks, got = [], 0
                for chunk in r.iter_bytes():
                    chunks.append(chunk)
                    got += len(chunk)
                    if got > n:
                        raise HubError(f"{self.ref.uri}: the Hub sent more than the {n:,} bytes asked "
                                       f"for from {path}; stopped")
        except (HubError, ConfigError, AdapterError):
            raise
        except Exception as exc:  # noqa: BLE001 - one sentence for every library error
            if "ReadTimeout" in type(exc).__name__:
                raise HubError(f"{self.ref.uri}: the Hub sent nothing for {self.settings.timeout:g} s "
                               f"while {path} was read, so the read was abandoned; try again later "
                               "(LORARANK_HF_TIMEOUT)") from exc
            raise describe_hub_error(exc, self.ref, path) from exc
        data = b"".join(chunks)
        if len(data) != n:
            raise HubError(f"{self.ref.uri}: {path} ended after {len(data):,} of the {n:,} bytes asked "
                           "for; try again")
        return data


class RemoteModel(ModelWeights):
    """:class:`~lorarank.weights.ModelWeights` of a Hub repo read by byte ranges.

    Attributes
    ----------
    remote : bool
        True: readers avoid optional reads (e.g. comparing large unchanged tensors).
    commit : str
        The commit every byte comes from.
    """

    remote = True

    def __init__(self, ref: HubRef, link: _Link, entries: Mapping[str, TensorInfo],
                 files: Mapping[str, int], config: dict | None) -> None:
        self.ref = ref
        self.commit = link.commit
        self.link = link
        super().__init__(ref.with_revision(link.commit).uri, entries,
                         lambda f, b, e: link.get(f, b, e), files=files, config=config)

    def fresh(self, settings: HubSettings | None = None) -> "RemoteModel":
        """The same model (headers already read) with a byte count of its own starting at 0: one
        request's reads against ``settings.max_bytes`` (default: this model's settings)."""
        link = _Link(self.ref, self.commit, self.link.token, settings or self.link.settings)
        return RemoteModel(self.ref, link, self.entries, self.files, self.config)

    @property
    def bytes_fetched(self) -> int:
        """Every byte fetched from the Hub so far: headers, configs and tensors."""
        return self.link.fetched

    def check_plan(self, keys: Iterable[str]) -> None:
        """Refuse, before reading any, tensors whose bytes would go over the request's limit."""
        keys = list(keys)
        need = sum(self.entries[k].nbytes for k in keys)
        total = self.link.fetched + need
        if total > self.link.settings.max_bytes:
            embed = sum(self.entries[k].nbytes for k in keys if "embed" in k or k.startswith(("wte", "wpe")))
            hint = (f" ({format_bytes(embed)} of it embeddings: leave them out with --no-embeddings)"
                    if embed else "")
            raise HubError(f"{self.ref.uri}: the {len(keys):,} tensors to read are {format_bytes(need)}"
                           f"{hint}, over this request's limit of {format_bytes(self.link.settings.max_bytes)} "
                           "(LORARANK_HF_MAX_BYTES); run lorarank locally for it")


def open_hub_model(source: str | HubRef, *, token: str | None = None,
                   settings: HubSettings | None = None) -> RemoteModel:
    """Open a model on the Hub: list it, read its headers (and config), nothing else.

    Parameters
    ----------
    source : str or HubRef
        ``hf://owner/name[@revision][/subfolder]``.
    token : str, optional
        A read token (the app's secrets); default ``HF_TOKEN``, else anonymous.
    settings : HubSettings, optional
        ``max_bytes`` (every byte of this model's reads counts) and ``timeout``.

    Returns
    -------
    RemoteModel

    Raises
    ------
    HubError
        Not found, private or gated without a token, offline, no safetensors model in the
        folder, a header over the bounds or not describing the file, over the byte limit.
    ConfigError
        A malformed reference.
    """
    ref = parse_hub_uri(source) if isinstance(source, str) else source
    settings = HubSettings.from_env() if settings is None else settings
    commit, listing = list_repo(ref, token=token, settings=settings)
    link = _Link(ref, commit, request_token(token), settings)
    index_path, paths = choose_model_files(ref, listing)
    pinned = ref.with_revision(commit).uri
    if index_path is not None:
        size = _size(listing, index_path, ref)
        if size > MAX_INDEX_BYTES:
            raise HubError(f"{ref.uri}: {index_path} is {format_bytes(size)}; a shard index is under "
                           f"{format_bytes(MAX_INDEX_BYTES)}")
        from .bounded import load_json

        index = load_json(index_path, link.get(index_path, 0, size, whole=True), what="shard index")
        folder = index_path.rsplit("/", 1)[0] + "/" if "/" in index_path else ""
        paths = [folder + name for name in shard_names(index, pinned)]
        missing = [p for p in paths if p not in listing]
        if missing:
            raise HubError(f"{ref.uri}: {index_path} names {missing[0]}, which the repo does not hold")
    check_counts(len(paths), pinned)
    config = _config(ref, listing, link)
    entries: dict[str, TensorInfo] = {}
    sizes: dict[str, int] = {}
    for path in paths:
        size = _size(listing, path, ref)
        found, _ = parse_safetensors_header(f"{pinned} {path}", size, _header_reader(link, path, size),
                                            file=path)
        merge_entries(entries, found, pinned)
        check_counts(len(paths), pinned, tensors=len(entries))
        sizes[path] = size
    return RemoteModel(ref, link, entries, sizes, config)


def _size(listing: Mapping[str, int | None], path: str, ref: HubRef) -> int:
    size = listing.get(path)
    if size is None:
        raise HubError(f"{ref.uri}: the Hub did not report the size of {path}, so its header cannot be "
                       "checked against it; not read")
    return int(size)


def _header_reader(link: _Link, path: str, size: int):
    """``read_at(begin, end)`` for a header: the first :data:`HEADER_PREFETCH` bytes in one
    request, anything beyond in another (headers are bounded before they are read)."""
    first: dict[str, bytes] = {}

    def read_at(begin: int, end: int) -> bytes:
        if "head" not in first:
            first["head"] = link.get(path, 0, min(size, HEADER_PREFETCH))
        head = first["head"]
        if end <= len(head):
            return head[begin:end]
        return head[begin:] + link.get(path, max(begin, len(head)), end) if begin < len(head) \
            else link.get(path, begin, end)

    return read_at


def _config(ref: HubRef, listing: Mapping[str, int | None], link: _Link) -> dict | None:
    path = f"{ref.subfolder}/config.json" if ref.subfolder else "config.json"
    size = listing.get(path)
    if size is None or size > MAX_CONFIG_BYTES:
        return None
    from .bounded import load_json

    doc = load_json(path, link.get(path, 0, int(size), whole=True), what="model config")
    return doc if isinstance(doc, dict) else None


def base_from_config(config: Mapping | None, *, source: str = "the adapter") -> str:
    """``hf://owner/name[@revision]`` of the base an adapter's config names.

    PEFT writes ``base_model_name_or_path`` (a Hub repo id or a local path) and, when the base
    was loaded at one, ``revision``.

    Raises
    ------
    ConfigError
        The config names no base, or a local path rather than a Hub repo.
    """
    config = config or {}
    name = config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}'s adapter_config.json names no base model "
                          "(base_model_name_or_path); give the base as --base")
    name = name.strip()
    if is_hub_uri(name):
        name = name[len("hf://"):]
    if not _REPO_ID.fullmatch(name) or ".." in name:
        raise ConfigError(f"{source}'s adapter_config.json names its base as {name[:200]!r}, a local "
                          "path rather than a Hub repo (owner/name); give the base as --base")
    revision = config.get("revision")
    uri = f"hf://{name}"
    if isinstance(revision, str) and revision.strip() and revision.strip() != "main":
        uri += f"@{revision.strip()}"
    parse_hub_uri(uri)  # checks the revision
    return uri
