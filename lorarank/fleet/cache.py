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
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..bounded import write_atomic
from ..errors import ConfigError
from .rows import FleetOptions, local_files
from .sources import Member

__all__ = ["ResultCache", "member_content"]

_CHUNK = 4 * 2**20
_GIT = "git:"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
        try:
            self._stats: dict[str, Any] = json.loads(self._stat_path.read_text())
            if not isinstance(self._stats, dict):
                self._stats = {}
        except (OSError, ValueError):
            self._stats = {}
        self._dirty = False

    # -------------------------------------------------------------------------- content keys
    def file_hash(self, path: Path) -> str:
        """SHA-256 of a local file, remembered by ``(path, size, mtime_ns, inode)``."""
        st = path.stat()
        ident = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        where = str(path.resolve())
        with self._lock:
            known = self._stats.get(where)
        if isinstance(known, list) and len(known) == 2 and known[0] == ident:
            return str(known[1])
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
        try:
            row = json.loads(self._row_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) and row.get("ok") else None

    def put(self, key: str | None, row: dict) -> None:
        """Keep an ``ok`` row (failed rows are recomputed next time)."""
        if key is None or not row.get("ok"):
            return
        path = self._row_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({k: v for k, v in row.items() if k != "source"}, allow_nan=False)
        write_atomic(path, data.encode("utf-8"), overwrite=True)

    def flush(self) -> None:
        """Write the file-hash index (atomically)."""
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps(self._stats)
            self._dirty = False
        write_atomic(self._stat_path, data.encode("utf-8"), overwrite=True)


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
        text += f"|config={_git_blob(cfg.read_bytes())}"
    return text
