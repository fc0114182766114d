"""Whole-model weights read tensor by tensor, row block by row block, from safetensors files.

A fine-tuned model and its base are each a ``.safetensors`` file, a folder of shards (with
``model.safetensors.index.json``, or just ``*.safetensors`` files), the uploaded bytes of such
files, or a model repo on the Hugging Face Hub (``hf://owner/name[@revision][/subfolder]``,
read by byte ranges: :mod:`lorarank.hub_ranges`). :class:`ModelWeights` gives one view of all
of them: every tensor's dtype, shape and byte range, read on demand, whole or a block of rows
at a time, so a model of any size costs the memory of the rows being read.

Headers are read with bounds before anything is trusted (size, nesting, tensor count:
:func:`lorarank.adapters._tensors.check_safetensors_header`) and must describe the data
exactly as the format requires (:func:`~lorarank.adapters._tensors.tensor_layout`: known
dtypes, byte counts that match the shapes, offsets covering the data with no gap and no
overlap). Float tensors decode to float32 (float16 and bfloat16 exactly) or float64; any other
dtype (quantised weights, integers) is refused with one sentence when read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np

from .adapters import (check_safetensors_header, decode_bf16, safetensors_from_bytes,
                       safetensors_from_path, tensor_layout)
from .bounded import regular_file
from .base import MAX_INDEX_BYTES  # the one bound on shard indexes (base weights and models)
from .errors import AdapterError, ConfigError

__all__ = ["TensorInfo", "ModelWeights", "open_model", "open_model_bytes", "parse_safetensors_header",
           "MAX_INDEX_BYTES", "MAX_CONFIG_BYTES", "FLOAT_NAMES", "merge_entries"]

#: Largest ``config.json`` read (a model's config is a few kB).
MAX_CONFIG_BYTES = 1 * 2**20
#: Stored dtypes that are floats, with the numpy dtype their bytes are.
FLOAT_NAMES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
#: Stored bytes fetched per row block of :meth:`ModelWeights.blocks` (16 MiB).
BLOCK_BYTES = 16 * 2**20

#: ``fetch(file, begin, end) -> bytes``: the bytes ``[begin, end)`` of one file of the model.
Fetch = Callable[[str, int, int], "bytes | memoryview"]


class TensorInfo(NamedTuple):
    """Where one tensor is: dtype (safetensors name), shape, file, and its byte range there."""

    dtype: str
    shape: tuple[int, ...]
    file: str
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def rows(self) -> int:
        """Leading dimension (1 for a scalar)."""
        return int(self.shape[0]) if self.shape else 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:]) if self.shape else ()


def parse_safetensors_header(source: str, size: int, read_at: Callable[[int, int], bytes],
                             *, file: str = "") -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of one safetensors file of ``size`` bytes, from its header alone.

    Parameters
    ----------
    source : str
        How to name the file in messages.
    size : int
        The file's size in bytes (the data must end exactly there).
    read_at : callable(begin, end) -> bytes
        Reads ``[begin, end)`` of the file; only the 8-byte length and the header are read.
    file : str
        Recorded in each :class:`TensorInfo` (which shard holds the tensor).

    Returns
    -------
    (entries, metadata)
        ``{name: TensorInfo}`` with absolute byte offsets, and the header's ``__metadata__``.

    Raises
    ------
    AdapterError
        Shorter than 8 bytes, a header over the bounds, not JSON, or offsets that do not
        describe the data exactly.
    """
    if size < 8:
        raise AdapterError(f"{source} is not a valid safetensors file (only {size} bytes)")
    head = bytes(read_at(0, 8))
    position = [8]

    def read(n: int) -> bytes:
        chunk = bytes(read_at(position[0], position[0] + n))
        position[0] += n
        return chunk

    metadata, header = check_safetensors_header(source, head, read, size)
    (length,) = struct.unpack("<Q", head)
    start = 8 + length
    layout = tensor_layout(header, size - start) if header else None
    if layout is None:
        raise AdapterError(f"{source} is not a valid safetensors file (its header does not describe "
                           "its data exactly)")
    entries = {name: TensorInfo(dtype, shape, file, start + begin, start + end)
               for name, (dtype, shape, begin, end) in layout.items()}
    return entries, metadata


@dataclass
class _Counter:
    bytes: int = 0
    requests: int = 0


class ModelWeights:
    """The tensors of a model, read on demand (``remote`` False: reading is cheap).

    Build it with :func:`open_model` (a path or ``hf://``) or :func:`open_model_bytes`.

    Attributes
    ----------
    source : str
        What was opened (file or folder name, or the pinned ``hf://owner/name@commit``).
    entries : dict of str to TensorInfo
        Every tensor of every file.
    config : dict or None
        The model's ``config.json`` when there is one beside the weights.
    files : dict of str to int
        File name -> size in bytes.
    """

    remote = False

    def __init__(self, source: str, entries: Mapping[str, TensorInfo], fetch: Fetch, *,
                 files: Mapping[str, int], config: dict | None = None) -> None:
        self.source = source
        self.entries = dict(entries)
        self.files = dict(files)
        self.config = config
        self._fetch = fetch
        self._counter = _Counter()

    # ---------------------------------------------------------------------------- facts
    def keys(self) -> list[str]:
        return list(self.entries)

    def info(self, key: str) -> TensorInfo:
        return self.entries[key]

    @property
    def bytes_read(self) -> int:
        """Tensor bytes read so far (headers not included)."""
        return self._counter.bytes

    @property
    def model_type(self) -> str:
        """``config.json``'s ``model_type`` (``""`` when unknown)."""
        value = (self.config or {}).get("model_type")
        return value if isinstance(value, str) else ""

    # ---------------------------------------------------------------------------- reads
    def _decode(self, key: str, info: TensorInfo, data: bytes | memoryview, rows: int) -> np.ndarray:
        code = FLOAT_NAMES.get(info.dtype)
        if code is None:
            raise AdapterError(f"tensor {key!r} in {self.source} has dtype {info.dtype}, not a float "
                               "(quantised or integer weights are not supported)")
        shape = (rows,) + info.row_shape if info.shape else ()
        if info.dtype == "BF16":
            return decode_bf16(data, shape)
        arr = np.frombuffer(data, dtype=code).reshape(shape)
        return arr.astype(np.float32) if info.dtype == "F16" else arr

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of tensor ``key`` as float32 (float64 if stored so).

        float16 and bfloat16 decode exactly to float32. A 1-D tensor's rows are its entries.

        Raises
        ------
        AdapterError
            Not a float tensor; the bytes could not be read (see the source's own errors).
        """
        info = self.entries[key]
        rows = info.rows
        stop = rows if stop is None else min(int(stop), rows)
        start = max(0, min(int(start), stop))
        row_bytes = (info.nbytes // rows) if rows else 0
        begin, end = info.begin + start * row_bytes, info.begin + stop * row_bytes
        if info.dtype not in FLOAT_NAMES:
            self._decode(key, info, b"", 0)  # raises the sentence
        data = self._fetch(info.file, begin, end)
        if len(data) != end - begin:
            raise AdapterError(f"{self.source}: tensor {key!r} was cut short ({len(data):,} of "
                               f"{end - begin:,} bytes)")
        self._counter.bytes += end - begin
        self._counter.requests += 1
        if not info.shape:
            return self._decode(key, info, data, 1)
        return self._decode(key, info, data, stop - start)

    def blocks(self, key: str, *, block_bytes: int = BLOCK_BYTES) -> Iterable[tuple[int, np.ndarray]]:
        """``(start_row, rows)`` blocks of tensor ``key``, about ``block_bytes`` stored bytes each."""
        info = self.entries[key]
        row_bytes = max(1, info.nbytes // max(1, info.rows))
        step = max(1, block_bytes // row_bytes)
        for start in range(0, info.rows, step):
            yield start, self.read(key, start, start + step)

    def base_weights(self):
        """The same tensors as :class:`lorarank.base.BaseWeights` (the adapter audit's ``--base``)."""
        from .base import BaseWeights

        weights = BaseWeights(self.source, {k: (v.dtype, v.shape) for k, v in self.entries.items()},
                              lambda key: self.read(key), nbytes=lambda key: self.entries[key].nbytes)
        weights.model = self  # what it reads from (a model on the Hub checks its byte plan)
        return weights


# ------------------------------------------------------------------------------- local files
def _file_fetch(paths: Mapping[str, Path]) -> Fetch:
    def fetch(file: str, begin: int, end: int) -> bytes:
        with open(paths[file], "rb") as fh:
            fh.seek(begin)
            return fh.read(end - begin)

    return fetch


def _open_file(path: Path, name: str) -> tuple[dict[str, TensorInfo], int]:
    safetensors_from_path(path)  # the library's own validation (bounded header first)
    size = path.stat().st_size

    def read_at(begin: int, end: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(begin)
            return fh.read(end - begin)

    entries, _ = parse_safetensors_header(path.name, size, read_at, file=name)
    return entries, size


def _read_json(path: Path, limit: int, what: str) -> object:
    from .bounded import load_json, read_file

    return load_json(path.name, read_file(path, max_bytes=limit, what=f"a {what}"), what=what)


def check_counts(shards: int, source: str, *, tensors: int = 0, header_bytes: int = 0) -> None:
    """A model's bounds, those of base weights (:data:`lorarank.base.MAX_BASE_SHARDS` shards,
    :data:`~lorarank.base.MAX_BASE_TENSORS` tensors, :data:`~lorarank.base.MAX_BASE_HEADER_BYTES`
    of headers in all): one sentence past them."""
    from .base import MAX_BASE_HEADER_BYTES, MAX_BASE_SHARDS, MAX_BASE_TENSORS

    if shards > MAX_BASE_SHARDS:
        raise AdapterError(f"{source} is split into {shards:,} files; lorarank reads at most "
                           f"{MAX_BASE_SHARDS:,} shards")
    if tensors > MAX_BASE_TENSORS:
        raise AdapterError(f"{source} holds over {MAX_BASE_TENSORS:,} tensors; lorarank reads at most "
                           f"{MAX_BASE_TENSORS:,}")
    if header_bytes > MAX_BASE_HEADER_BYTES:
        raise AdapterError(f"{source} has over {MAX_BASE_HEADER_BYTES // 2**20} MiB of safetensors "
                           "headers; lorarank reads at most that")


_check_counts = check_counts


def merge_entries(entries: dict[str, TensorInfo], more: Mapping[str, TensorInfo], source: str) -> None:
    """Add one shard's tensors ``more`` to ``entries`` (in place); a tensor named in two shards
    of ``source`` is one sentence naming both files."""
    for key, info in more.items():
        if key in entries:
            raise AdapterError(f"tensor {key!r} appears in two files of {source} "
                               f"({entries[key].file} and {info.file})")
        entries[key] = info


def shard_names(index: object, source: str) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` document names (checked)."""
    try:
        weight_map = index["weight_map"]  # type: ignore[index]
        shards = sorted(set(weight_map.values()))
    except (KeyError, TypeError, AttributeError) as exc:
        raise AdapterError(f"model.safetensors.index.json of {source} is not a valid shard index "
                           f"(no weight_map of file names)") from exc
    for shard in shards:
        if (not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", "..")
                or not shard.endswith(".safetensors")):
            raise AdapterError(f"model.safetensors.index.json of {source} names shard {shard!r}, "
                               "which is not a .safetensors file beside it")
    return shards


def open_model(source: str | os.PathLike, *, token: str | None = None, settings=None) -> ModelWeights:
    """Open a model's weights lazily: a ``.safetensors`` file, a folder of shards, or ``hf://``.

    Parameters
    ----------
    source : str or path-like
        A file; a folder with ``model.safetensors.index.json`` or ``*.safetensors`` files (and
        optionally ``config.json``); or ``hf://owner/name[@revision][/subfolder]``.
    token, settings
        For ``hf://`` only: as in :func:`lorarank.hub.fetch_adapter_files`.

    Returns
    -------
    ModelWeights
        Only headers (and ``config.json``) are read here.

    Raises
    ------
    AdapterError
        Missing path, no safetensors file, an invalid file or index.
    HubError
        ``hf://`` that cannot be listed or read (one sentence).
    """
    from .hub import is_hub_uri

    if is_hub_uri(str(source)):
        from .hub_ranges import open_hub_model

        return open_hub_model(str(source), token=token, settings=settings)
    p = Path(source)
    entries: dict[str, TensorInfo] = {}
    paths: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    config = None
    if p.exists() and not p.is_dir():
        files = [regular_file(p, what="model weights")]
    elif p.is_dir():
        from .base import shard_paths

        files = shard_paths(p, what="weights")
        if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
            raise AdapterError(f"{p.name} is a LoRA adapter (it has adapter_config.json), not a model; "
                               "audit it with `lorarank audit`")
        cfg = p / "config.json"
        if cfg.is_file():
            doc = _read_json(cfg, MAX_CONFIG_BYTES, "model config")
            config = doc if isinstance(doc, dict) else None
    else:
        raise AdapterError(f"model weights {str(source)!r} do not exist")
    _check_counts(len(files), p.name)
    headers = 0
    for f in files:
        with open(regular_file(f, what="model weights"), "rb") as fh:  # a FIFO would block here
            head = fh.read(8)
        headers += min(int.from_bytes(head, "little"), f.stat().st_size) if len(head) == 8 else 0
        _check_counts(len(files), p.name, header_bytes=headers)
        found, size = _open_file(f, f.name)
        merge_entries(entries, found, p.name)
        _check_counts(len(files), p.name, tensors=len(entries))
        paths[f.name] = f
        sizes[f.name] = size
    return ModelWeights(p.name, entries, _file_fetch(paths), files=sizes, config=config)


def open_model_bytes(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]], *,
                     label: str = "") -> ModelWeights:
    """A model from uploaded bytes: one ``.safetensors`` file or its shards (a ``config.json``
    among them is read too). Tensors are read as views of the bytes (nothing is copied)."""
    items = list(files.items()) if isinstance(files, Mapping) else list(files)
    if not items:
        raise ConfigError("no model weights file given")
    entries: dict[str, TensorInfo] = {}
    views: dict[str, memoryview] = {}
    config = None
    for name, data in items:
        name = str(name)
        if name.endswith(".safetensors"):
            safetensors_from_bytes(name, data)  # bounded header, exact layout, library verdict
            view = memoryview(data)
            found, _ = parse_safetensors_header(name, len(data), lambda b, e, v=view: v[b:e], file=name)
            merge_entries(entries, found, label or name)
            views[name] = view
        elif name.rsplit("/", 1)[-1] == "config.json":  # not generation_config.json, adapter_config.json
            from .bounded import load_json

            if len(data) > MAX_CONFIG_BYTES:
                raise AdapterError(f"{name} is larger than {MAX_CONFIG_BYTES / 2**20:g} MiB")
            doc = load_json(name, data, what="model config")
            config = doc if isinstance(doc, dict) else None
    if not views:
        raise AdapterError("the upload holds no .safetensors weights")
    names = [str(n).rsplit("/", 1)[-1] for n, _ in items]
    if "adapter_config.json" in names or any(".lora_A." in k or ".lora_down." in k for k in entries):
        raise AdapterError(f"{label or ', '.join(views)} is a LoRA adapter, not a model: give the full "
                           "model's weights (audit an adapter in the other tabs)")
    return ModelWeights(label or ", ".join(views), entries, lambda f, b, e: views[f][b:e],
                        files={k: len(v) for k, v in views.items()}, config=config)
