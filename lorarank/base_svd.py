"""The base weight's SVD, computed once per base and shared: bounded memory and disk caches.

Intruder dimensions (:mod:`lorarank.intruders`) compare the top singular vectors of
``W0 + dW`` with *every* left singular vector of ``W0``. The SVD of a 4096 x 14336 base weight
is the one expensive step (a dense LAPACK ``gesdd``, tens of seconds); everything an adapter
adds costs ``O(d^2 r)`` on top of it. A team audits many adapters, checkpoints and sessions
against one base, so the SVD is computed once per weight and kept:

- in memory, in a least-recently-used cache bounded in bytes and shared by every caller of the
  process (every session of a Streamlit server);
- on disk, as two ``.npy`` files per weight (``U`` and ``S``) in a folder bounded in bytes (the
  least recently used entries are removed first), shared by every process.

Entries are keyed by the weight's **content**: a BLAKE2b digest of its dtype, shape and values
(plus the precision of the SVD), never by a file name, so the same base under another name or
path is a hit and a changed file is a miss. Files are written atomically (a temporary name,
then renamed: :func:`lorarank.bounded.write_atomic`) and read back with ``allow_pickle=False``;
an entry that fails its checks is recomputed.

Only ``U`` and ``S`` are kept: the adapter side needs ``W0`` itself anyway (products with the
update's factors), and ``V`` would double the size.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ._validate import check_int
from .bounded import write_atomic
from .errors import ConfigError

__all__ = [
    "BaseSVD",
    "base_svd",
    "weight_digest",
    "BaseSVDCache",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_DISK_BYTES",
    "default_cache_dir",
    "shared_cache",
]

#: Bytes of SVDs kept in memory by a cache unless told otherwise (``LORARANK_CACHE_MEMORY_MB``).
DEFAULT_MEMORY_BYTES = 512 * 2**20
#: Bytes of SVDs kept on disk by a cache unless told otherwise (``LORARANK_CACHE_DISK_MB``).
DEFAULT_DISK_BYTES = 8 * 2**30
_PRECISIONS = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class BaseSVD:
    """Left singular vectors and singular values of a base weight ``W0`` (m x n).

    Attributes
    ----------
    U : ndarray of shape (m, q)
        Orthonormal columns, ``q = min(m, n)``, in the cache's precision (float32 by default,
        PEFT's own; float64 on request).
    S : ndarray of shape (q,)
        Singular values, descending, float64.
    """

    U: np.ndarray
    S: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, q)``."""
        return int(self.U.shape[0]), int(self.U.shape[1])

    @property
    def norm_sq(self) -> float:
        """``||W0||_F^2 = sum S^2``."""
        return float(np.sum(self.S.astype(np.float64) ** 2))

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return int(self.U.nbytes + self.S.nbytes)


def base_svd(W0: np.ndarray, *, precision: str = "float32") -> BaseSVD:
    """Thin SVD of ``W0`` (left vectors and values), by LAPACK ``gesdd``.

    Parameters
    ----------
    W0 : ndarray of shape (m, n)
        The base weight as its layer stores it.
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the decomposition. float32 is what PEFT's ``reduce_intruder_dimension``
        uses (``torch.linalg.svd`` of a float32 weight) and half the time and memory;
        float64 is the exact reference.

    Returns
    -------
    BaseSVD

    Raises
    ------
    ConfigError
        ``W0`` is not a finite 2-D matrix, or LAPACK does not converge (also with ``gesvd``).
    """
    from .spectrum import single_threaded_blas

    with single_threaded_blas():  # LAPACK with spinning threads is 10-30x slower on busy cores
        return _base_svd(W0, precision)


def _base_svd(W0: np.ndarray, precision: str) -> BaseSVD:
    import scipy.linalg  # lazy: scipy is only needed once an SVD is computed

    dtype = _precision(precision)
    W = np.asarray(W0)
    if W.ndim != 2 or W.size == 0:
        raise ConfigError(f"`W0` should be a non-empty 2-D matrix, got shape {W.shape}")
    W = np.array(W, dtype=dtype, order="F", copy=True)
    if not np.all(np.isfinite(W)):
        raise ConfigError("`W0` contains NaN or infinite values")
    try:
        U, S, _ = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesdd",
                                   overwrite_a=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        # gesdd's divide and conquer occasionally fails to converge where gesvd does not.
        W = np.array(W0, dtype=dtype, order="F", copy=True)
        try:
            U, S, _ = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesvd",
                                       overwrite_a=True, check_finite=False)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise ConfigError(f"the SVD of a {W.shape[0]} x {W.shape[1]} base weight did not converge") from exc
    return BaseSVD(np.ascontiguousarray(U), S.astype(np.float64))


def _precision(precision: str):
    if precision not in _PRECISIONS:
        raise ConfigError(f"`precision` should be one of {', '.join(_PRECISIONS)}; got {precision!r}")
    return _PRECISIONS[precision]


def weight_digest(W0: np.ndarray, *, precision: str = "float32") -> str:
    """The cache key of ``W0``: BLAKE2b (160 bits) of its dtype, shape and values, and the
    precision of the SVD kept for it."""
    _precision(precision)
    arr = np.ascontiguousarray(W0)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{arr.dtype.str}|{arr.shape}|{precision}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$LORARANK_CACHE_DIR``, else ``$XDG_CACHE_HOME/lorarank``, else ``~/.cache/lorarank``;
    base SVDs go to its ``base-svd`` folder."""
    root = os.environ.get("LORARANK_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "lorarank") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "lorarank")
    return Path(root) / "base-svd"


#: Largest .npy header of a cached S (numpy writes 128 bytes; version 2+ headers may be longer).
_NPY_HEADER_MAX = 4096


class BaseSVDCache:
    """SVDs of base weights, by content, in memory (LRU, bounded) and on disk (bounded).

    Parameters
    ----------
    memory_bytes : int, default=DEFAULT_MEMORY_BYTES
        Largest total size of the SVDs held in memory (an SVD larger than this is not held).
    directory : str or path-like, optional
        Folder of the disk cache; None keeps SVDs in memory only.
    disk_bytes : int, default=DEFAULT_DISK_BYTES
        Largest total size of the disk cache; the least recently used entries go first.
    precision : {"float32", "float64"}, default="float32"
        Precision of the SVDs computed and kept (:func:`base_svd`).

    Notes
    -----
    Thread-safe: two sessions asking for the same weight at once compute it once (the second
    waits for the first). ``stats`` counts memory hits, disk hits and computations.
    """

    def __init__(self, *, memory_bytes: int = DEFAULT_MEMORY_BYTES, directory: str | os.PathLike | None = None,
                 disk_bytes: int = DEFAULT_DISK_BYTES, precision: str = "float32") -> None:
        self.memory_bytes = check_int("memory_bytes", memory_bytes, minimum=0)
        self.disk_bytes = check_int("disk_bytes", disk_bytes, minimum=0)
        self.precision = precision
        _precision(precision)
        self.directory = Path(directory) if directory is not None else None
        self._memory: OrderedDict[str, BaseSVD] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self.stats = {"memory": 0, "disk": 0, "computed": 0}

    # -------------------------------------------------------------------------------- public
    def get(self, W0: np.ndarray, *, digest: str | None = None) -> BaseSVD:
        """The SVD of ``W0`` (from memory, else disk, else computed and stored in both).

        Parameters
        ----------
        W0 : ndarray of shape (m, n)
            The base weight as stored (any float dtype).
        digest : str, optional
            :func:`weight_digest` of ``W0`` when the caller already has it.
        """
        key = digest or weight_digest(W0, precision=self.precision)
        while True:
            with self._lock:
                hit = self._memory.get(key)
                if hit is not None:
                    self._memory.move_to_end(key)
                    self.stats["memory"] += 1
                    return hit
                waiting = self._inflight.get(key)
                if waiting is None:
                    self._inflight[key] = threading.Event()
                    break
            waiting.wait()
        try:
            svd = self._read(key, np.shape(W0))
            if svd is not None:
                self.stats["disk"] += 1
            else:
                svd = base_svd(W0, precision=self.precision)
                self.stats["computed"] += 1
                self._write(key, svd)
            self._remember(key, svd)
            return svd
        finally:
            with self._lock:
                self._inflight.pop(key).set()

    def contains(self, W0: np.ndarray, *, digest: str | None = None) -> bool:
        """Whether ``W0``'s SVD is cached (memory or disk), without computing it."""
        key = digest or weight_digest(W0, precision=self.precision)
        with self._lock:
            if key in self._memory:
                return True
        return self.directory is not None and (self.directory / f"{key}.U.npy").is_file()

    def clear_memory(self) -> None:
        """Drop every SVD held in memory (the disk cache stays)."""
        with self._lock:
            self._memory.clear()
            self._held = 0

    @property
    def memory_held(self) -> int:
        """Bytes of SVDs held in memory now."""
        return self._held

    # ------------------------------------------------------------------------------- memory
    def _remember(self, key: str, svd: BaseSVD) -> None:
        size = svd.nbytes
        with self._lock:
            if size > self.memory_bytes or key in self._memory:
                return
            self._memory[key] = svd
            self._held += size
            while self._held > self.memory_bytes and self._memory:
                _, old = self._memory.popitem(last=False)
                self._held -= old.nbytes

    # --------------------------------------------------------------------------------- disk
    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / f"{key}.U.npy", self.directory / f"{key}.S.npy"

    def _read(self, key: str, shape: tuple[int, ...]) -> BaseSVD | None:
        if self.directory is None:
            return None
        path_u, path_s = self._paths(key)
        if not (path_u.is_file() and path_s.is_file()):
            return None
        m, n = int(shape[0]), int(shape[1])
        q = min(m, n)
        try:  # a damaged or foreign file: a miss, never a read of its declared size (S is read whole)
            if path_s.stat().st_size > _NPY_HEADER_MAX + 8 * q:
                return None
            S = np.load(path_s, allow_pickle=False)
            U = np.load(path_u, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None
        want = _PRECISIONS[self.precision]
        if (U.ndim != 2 or U.shape != (m, q) or U.dtype != want or S.shape != (q,) or S.dtype != np.float64
                or not np.all(np.isfinite(S)) or np.any(S < 0) or np.any(np.diff(S) > 0)
                or not _finite_rows(U)):
            return None
        try:
            os.utime(path_u)  # least recently *used*: a hit is a use
        except OSError:
            pass
        return BaseSVD(U, S)

    def _write(self, key: str, svd: BaseSVD) -> None:
        if self.directory is None or svd.nbytes > self.disk_bytes:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path_u, path_s = self._paths(key)
            for path, arr in ((path_s, svd.S), (path_u, svd.U)):
                write_atomic(path, partial(_save_npy, np.ascontiguousarray(arr)), overwrite=True)
            self._evict()
        except OSError:
            return  # a full or read-only disk costs the cache, never the audit

    def _evict(self) -> None:
        entries = []
        for path_u in self.directory.glob("*.U.npy"):
            path_s = path_u.with_name(path_u.name[:-len(".U.npy")] + ".S.npy")
            try:
                stat = path_u.stat()
                size = stat.st_size + (path_s.stat().st_size if path_s.exists() else 0)
            except OSError:
                continue
            entries.append((stat.st_mtime, size, path_u, path_s))
        total = sum(e[1] for e in entries)
        for _, size, path_u, path_s in sorted(entries):
            if total <= self.disk_bytes:
                break
            for p in (path_u, path_s):
                try:
                    p.unlink()
                except OSError:
                    pass
            total -= size


def _finite_rows(U: np.ndarray, block: int = 4096) -> bool:
    for i in range(0, U.shape[0], block):
        if not np.all(np.isfinite(U[i:i + block])):
            return False
    return True


_SHARED: dict[str, BaseSVDCache] = {}
_SHARED_LOCK = threading.Lock()


def shared_cache(*, directory: str | os.PathLike | None = None, disk: bool = False) -> BaseSVDCache:
    """The process-wide cache (one per disk folder), shared by every session and call.

    Parameters
    ----------
    directory : str or path-like, optional
        Disk folder; with ``disk`` and no folder, :func:`default_cache_dir`.
    disk : bool, default=False
        Also keep SVDs on disk. The app keeps them in memory only unless the operator sets
        ``LORARANK_CACHE_DIR``; the CLI uses the disk by default.

    Notes
    -----
    Sizes come from ``LORARANK_CACHE_MEMORY_MB`` and ``LORARANK_CACHE_DISK_MB`` when set.
    """
    if directory is None and (disk or os.environ.get("LORARANK_CACHE_DIR")):
        directory = default_cache_dir()
    key = str(Path(directory).resolve()) if directory is not None else ""
    with _SHARED_LOCK:
        cache = _SHARED.get(key)
        if cache is None:
            cache = BaseSVDCache(memory_bytes=_env_bytes("LORARANK_CACHE_MEMORY_MB", DEFAULT_MEMORY_BYTES),
                                 directory=directory,
                                 disk_bytes=_env_bytes("LORARANK_CACHE_DISK_MB", DEFAULT_DISK_BYTES))
            _SHARED[key] = cache
        return cache


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        mb = float(raw)
    except ValueError:
        raise ConfigError(f"{name} should be a number of megabytes, got {raw!r}") from None
    if not (mb >= 0 and mb < 2**40):
        raise ConfigError(f"{name} should be a number of megabytes >= 0, got {raw!r}")
    return int(mb * 2**20)


def _save_npy(arr: np.ndarray, fh) -> None:
    np.save(fh, arr, allow_pickle=False)
