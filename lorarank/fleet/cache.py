"""Fleet results kept by content: a rerun audits only the adapters whose bytes changed.

A row depends on the adapter's files and the :class:`~lorarank.fleet.rows.FleetOptions`, not
on where the files are. Its key is a SHA-256 of the files' contents (for a Hub adapter, the
content ids the Hub lists: the LFS sha256 of the weights and the git blob id of the config, so
a cached Hub row costs one listing call and no download) and of the options. Rows are JSON files
``DIR/rows/<key[:2]>/<key>.json``, written atomically (a temporary file renamed), so concurrent
runs and an interrupted run leave only whole rows. Failed rows are not cached (a network error
should be retried), nor are screened rows mixed with audited ones (the options differ).

Hashing a large local file costs a read of it; the hash is remembered in ``DIR/stat.json`` by
``(path, size, mtime, inode)``, so an unchanged file is not read again.

The cache folder is input like any other (a shared or corrupted folder, a file edited by hand):
its files are read with the bounded readers (:func:`lorarank.bounded.read_file` under
:data:`MAX_STAT_BYTES` / :data:`MAX_ROW_BYTES`, then :func:`lorarank.bounded.load_json`), and
anything that is not a regular file, too large, too deep, not JSON or not shaped like a row is a
cache miss (the adapter is audited again), never a traceback, a hang or unbounded memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..bounded import MAX_JSON_BYTES, clip, load_json, read_file, write_atomic
from ..errors import ConfigError, LoraRankError
from .rows import FleetOptions, local_files
from .sources import Member

__all__ = ["ResultCache", "member_content", "MAX_STAT_BYTES", "MAX_ROW_BYTES"]

#: Largest file-hash index read (~200 bytes a file: some 80,000 adapters).
MAX_STAT_BYTES = MAX_JSON_BYTES
#: Largest cached row read (its energy curve holds one number per rank: ~100 kB at rank 4096).
MAX_ROW_BYTES = 4 * 2**20

_CHUNK = 4 * 2**20
_GIT = "git:"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path, max_bytes: int) -> object:
    """A cache file's JSON, or None for anything else (missing, not a regular file, too large,
    too deep, not JSON): the bounded readers' checks, then a miss."""
    try:
        return load_json(path.name, read_file(path, max_bytes=max_bytes, what="fleet cache files"),
                         what="fleet cache file")
    except (OSError, LoraRankError):
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _optional(check):
    return lambda value: value is None or check(value)


def _list_of(check):
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _dict_of(check):
    return lambda value: isinstance(value, dict) and all(isinstance(k, str) and check(v)
                                                         for k, v in value.items())


#: The fields of an ``ok`` row (:func:`lorarank.fleet.rows.row_from_report`, without ``source``)
#: and what each must hold; a cached file with other fields or values is a miss.
_ROW_FIELDS = {
    "revision": _optional(_is_text), "ok": lambda v: v is True, "error": lambda v: v is None,
    "format": _is_text, "family": _is_text, "base_model": _optional(_is_text),
    "stored_ranks": _list_of(_is_int), "max_rank": _optional(_is_int),
    "recommended_rank": _dict_of(_optional(_is_number)), "energy_at_cap": _dict_of(_optional(_is_number)),
    "energy_curve": _list_of(_is_number), "modules": _is_int, "params": _is_int,
    "bytes": _optional(_is_int), "dtypes": _list_of(_is_text), "warnings": _list_of(_is_text),
    "screened": lambda v: isinstance(v, bool),
}


def _is_row(row: object) -> bool:
    """Whether ``row`` is shaped as a cached ``ok`` row (every field, nothing else)."""
    return (isinstance(row, dict) and row.keys() == _ROW_FIELDS.keys()
            and all(check(row[k]) for k, check in _ROW_FIELDS.items()))


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class ResultCache:
    """Rows on disk by content key (see the module docstring).

    Parameters
    ----------
    folder : path
        Created if missing.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--cache {folder} is a file; give a folder")
        (self.folder / "rows").mkdir(parents=True, exist_ok=True)
        self._stat_path = self.folder / "stat.json"
        self._lock = threading.Lock()
        stats = _read_json(self._stat_path, MAX_STAT_BYTES)
        self._stats: dict[str, Any] = stats if isinstance(stats, dict) else {}
        self._dirty = False
        #: The first failure to write a row or the index (a full disk, a folder in the way):
        #: the run goes on uncached; the CLI says it in one line.
        self.write_error: str | None = None

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, overwrite=True)
        except OSError as exc:
            if self.write_error is None:
                self.write_error = clip(f"{path}: {exc.strerror or exc}", 300)

    # -------------------------------------------------------------------------- content keys
    def file_hash(self, path: Path) -> str:
        """SHA-256 of a local file, remembered by ``(path, size, mtime_ns, inode)``."""
        st = path.stat()
        ident = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        where = str(path.resolve())
        with self._lock:
            known = self._stats.get(where)
        if (isinstance(known, list) and len(known) == 2 and known[0] == ident
                and isinstance(known[1], str) and _SHA256.fullmatch(known[1])):
            return known[1]
        digest = _sha256_file(path)
        with self._lock:
            self._stats[where] = [ident, digest]
            self._dirty = True
        return digest

    def key(self, member: Member, options: FleetOptions, *, hub_key: str | None = None) -> str | None:
        """The content key of ``member``'s row under ``options``; None when it cannot be known
        without the work itself (a Hub adapter whose listing gave no content ids)."""
        content = member_content(member, file_hash=self.file_hash, hub_key=hub_key)
        if content is None:
            return None
        return hashlib.sha256(f"{content}|{options.key()}".encode()).hexdigest()

    # ---------------------------------------------------------------------------------- rows
    def _row_path(self, key: str) -> Path:
        return self.folder / "rows" / key[:2] / f"{key}.json"

    def get(self, key: str | None) -> dict | None:
        """The cached row (without ``source``), or None."""
        if key is None:
            return None
        row = _read_json(self._row_path(key), MAX_ROW_BYTES)
        return row if _is_row(row) else None

    def put(self, key: str | None, row: dict) -> None:
        """Keep an ``ok`` row (failed rows are recomputed next time)."""
        if key is None or not row.get("ok"):
            return
        data = json.dumps({k: v for k, v in row.items() if k != "source"}, allow_nan=False)
        self._write(self._row_path(key), data.encode("utf-8"))

    def flush(self) -> None:
        """Write the file-hash index (atomically)."""
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps(self._stats)
            self._dirty = False
        self._write(self._stat_path, data.encode("utf-8"))


def member_content(member: Member, *, file_hash=None, hub_key: str | None = None) -> str | None:
    """What ``member``'s bytes are, as text: file names and content hashes.

    Raises the reader's errors for a local member that cannot be resolved (the caller then
    lets the worker produce the error row).
    """
    if member.hub:
        return None if hub_key is None else f"hub|{hub_key}"
    if member.files is not None:
        parts = []
        for name, data in member.files:
            kind = "config" if str(name).lower().endswith(".json") else "weights"
            parts.append(f"{kind}={hashlib.sha256(data).hexdigest()}")
        return "bytes|" + "|".join(sorted(parts))
    hasher = file_hash or (lambda p: _sha256_file(p))
    weights, cfg = local_files(Path(member.path))
    text = f"local|weights={hasher(weights)}|{weights.suffix.lower()}"
    if cfg is not None:
        text += f"|config={_git_blob(read_file(cfg, max_bytes=MAX_JSON_BYTES, what='adapter configs'))}"
    return text
