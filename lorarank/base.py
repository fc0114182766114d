"""Base weights ``W0`` of the adapted modules, read lazily from the base model's safetensors.

Some numbers need the frozen weight the adapter sits on: DoRA's true update
``dW = diag(m / ||W0 + s B A||_row) (W0 + s B A) - W0`` and, for every family, the relative
size ``||dW||_F / ||W0||_F``. A base model is large (16 GB for 8B parameters in bf16), so
:class:`BaseWeights` opens the file(s) with ``safetensors.safe_open`` and reads only the
tensors of the adapted modules, one at a time, when asked.

A base is a ``.safetensors`` file, or a folder holding ``model.safetensors.index.json``
(sharded checkpoints; its ``weight_map`` says which shard holds which key) or one or more
``.safetensors`` files.

Adapter module names are mapped to base keys by a canonical form: the known adapter prefixes
are dropped (PEFT ``base_model.model.``, diffusers ``unet.`` / ``transformer.`` /
``text_encoder.``, kohya ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_``), the
``.weight`` suffix too, and ``.`` becomes ``_`` (kohya's flattening). A base key matches when its
canonical form equals the module's, or one ends the other at a ``_`` boundary (a checkpoint
saved without its ``model.`` prefix); more than one candidate is an error naming two of them,
never a guess. Shapes are checked against the update's ``(d_out, d_in)`` (conv kernels
flattened, ``fan_in_fan_out`` transposed).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .bounded import clip, load_json, read_file, regular_file
from .errors import AdapterError, ConfigError

__all__ = ["BaseWeights", "open_base", "open_base_bytes", "canonical_name", "shard_paths", "MAX_INDEX_BYTES",
           "MAX_BASE_SHARDS", "MAX_BASE_TENSORS", "MAX_BASE_HEADER_BYTES"]

#: Largest ``model.safetensors.index.json`` read (real ones are well under 1 MiB).
MAX_INDEX_BYTES = 16 * 2**20
#: Bounds on a folder of shards (the largest public checkpoints: ~200 shards, ~100,000 tensors; each tensor kept costs ~0.5 kB).
MAX_BASE_SHARDS = 4096
MAX_BASE_TENSORS = 300_000
MAX_BASE_HEADER_BYTES = 128 * 2**20

_ADAPTER_PREFIXES = (
    "base_model.model.", "unet.", "transformer.", "text_encoder_2.", "text_encoder.",
    "lora_unet_", "lora_te1_", "lora_te2_", "lora_te_", "lora_transformer_",
)
_BASE_PREFIXES = ("model.diffusion_model.",)
_SUFFIXES = (".base_layer.weight", ".weight")


def canonical_name(name: str, *, base: bool = False) -> str:
    """Canonical form of an adapter module name (or, with ``base``, of a base weight key).

    ``base_model.model.model.layers.0.self_attn.q_proj`` and the base key
    ``model.layers.0.self_attn.q_proj.weight`` both give ``model_layers_0_self_attn_q_proj``;
    kohya's ``lora_unet_down_blocks_0_attentions_0_proj_in`` gives
    ``down_blocks_0_attentions_0_proj_in``, as does the base key
    ``down_blocks.0.attentions.0.proj_in.weight``.
    """
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for prefix in _BASE_PREFIXES if base else _ADAPTER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.replace(".", "_")


class BaseWeights:
    """Lazily read base weights, looked up by adapter module name.

    Build it with :func:`open_base` (a path) or :func:`open_base_bytes` (uploaded bytes).

    Attributes
    ----------
    source : str
        What was opened (file or folder name).
    keys : list of str
        Every ``*.weight`` key the base holds.
    """

    def __init__(self, source: str, entries: Mapping[str, tuple[str, tuple[int, ...]]], reader, *,
                 nbytes=None) -> None:
        # entries: key -> (safetensors dtype name, shape); reader(key) -> ndarray of the stored values;
        # nbytes(key) -> stored bytes of the tensor (default: from dtype and shape)
        self.source = source
        self._nbytes = nbytes
        self._entries = dict(entries)
        self._reader = reader
        self.keys = [k for k in self._entries if k.endswith(".weight")]
        self._by_canon: dict[str, list[str]] = {}
        for key in self.keys:
            self._by_canon.setdefault(canonical_name(key, base=True), []).append(key)

    def key_for(self, name: str) -> str:
        """The base key of adapter module ``name``.

        Raises
        ------
        AdapterError
            When no key matches, or more than one does (naming two).
        """
        canon = canonical_name(name)
        exact = self._by_canon.get(canon, [])
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise AdapterError(f"base weights in {self.source} are ambiguous for module {name!r}: "
                               f"{exact[0]!r} and {exact[1]!r}")
        found = [k for c, ks in self._by_canon.items() for k in ks
                 if canon.endswith("_" + c) or c.endswith("_" + canon)]
        if len(found) == 1:
            return found[0]
        if found:
            raise AdapterError(f"base weights in {self.source} are ambiguous for module {name!r}: "
                               f"{found[0]!r} and {found[1]!r}")
        raise AdapterError(f"base weights in {self.source} have no weight for module {name!r} "
                           f"(looked for {canon.replace('_', '.')}.weight among {len(self.keys)} keys)")

    def nbytes(self, name: str) -> int:
        """Stored bytes of module ``name``'s base weight (what reading it fetches)."""
        key = self.key_for(name)
        if self._nbytes is not None:
            return int(self._nbytes(key))
        from .adapters import ITEMSIZE

        dtype_name, stored = self._entries[key]
        return int(np.prod(stored)) * ITEMSIZE.get(dtype_name, 0) if stored else ITEMSIZE.get(dtype_name, 0)

    def weight(self, name: str, shape: tuple[int, int], *, transposed: bool = False) -> np.ndarray:
        """``W0`` of module ``name`` as float64 of shape ``shape`` = (d_out, d_in) of the update.

        Parameters
        ----------
        name : str
            Adapter module name.
        shape : (int, int)
            ``(d_out, d_in)`` the update has; conv kernels (out, in, kh, kw) are flattened to
            (out, in * kh * kw).
        transposed : bool, default=False
            The layer stores its weight as (in, out) (GPT-2 ``Conv1D``, PEFT ``fan_in_fan_out``).

        Returns
        -------
        ndarray of shape ``shape``, float64

        Raises
        ------
        AdapterError
            No or several matching keys, a shape that does not fit, non-finite values, or a
            squared Frobenius norm that overflows float64.
        """
        arr = self.stored(name, shape, transposed=transposed).astype(np.float64)
        flat = arr.ravel()
        with np.errstate(over="ignore"):
            overflows = not np.isfinite(np.dot(flat, flat))
        if overflows:
            key = self.key_for(name)
            peak = float(np.max(np.abs(flat)))
            raise AdapterError(f"base weight {key!r} in {self.source}: its squared Frobenius norm overflows "
                               f"float64 (entries up to {peak:.3g}), so ||dW|| / ||W0|| and DoRA's row norms "
                               "cannot be computed; a result that overflows float64 is an error")
        return arr.T if transposed else arr

    def stored(self, name: str, shape: tuple[int, int], *, transposed: bool = False) -> np.ndarray:
        """``W0`` of module ``name`` as the layer stores it, in its stored dtype.

        The orientation is the layer's own: (d_in, d_out) when ``transposed``, else
        (d_out, d_in), conv kernels flattened; float64, float32 and float16 as stored (a view
        of the file where it allows), bfloat16 decoded exactly to float32. Checked as
        :meth:`weight` checks it.

        Returns
        -------
        ndarray of shape (d_in, d_out) if ``transposed`` else ``shape``
        """
        key = self.key_for(name)
        dtype_name, stored = self._entries[key]
        if dtype_name not in ("F64", "F32", "F16", "BF16"):
            raise AdapterError(f"base weight {key!r} in {self.source} has dtype {dtype_name}, not a float "
                               "(quantised bases are not supported)")
        size = int(np.prod(stored)) if stored else 1
        d_out, d_in = shape
        want = (d_in, d_out) if transposed else (d_out, d_in)
        if len(stored) < 2 or stored[0] != want[0] or size != want[0] * want[1]:
            raise AdapterError(f"base weight {key!r} in {self.source} has shape {list(stored)}, but module "
                               f"{name!r} updates a {d_out} x {d_in} matrix")
        arr = np.asarray(self._reader(key)).reshape(want)
        if not np.all(np.isfinite(arr)):
            raise AdapterError(f"base weight {key!r} in {self.source} contains NaN or infinite values")
        return arr

    def dtype_of(self, name: str) -> str:
        """The safetensors dtype name (``F32``, ``BF16``, ...) of module ``name``'s base weight."""
        return self._entries[self.key_for(name)][0]


def _add_file(tensors, entries: dict, owners: dict) -> None:
    for key, spec in tensors.entries.items():
        if key in entries:
            raise AdapterError(f"base weight {key!r} appears in two files ({tensors.source} and another shard)")
        entries[key] = spec
        owners[key] = tensors


def _reader_for(owners: dict):
    def read(key: str) -> np.ndarray:
        return owners[key].get(key)

    return read


class _Shards:
    """The shards of a folder base, opened when one of their weights is read (a few at a time).

    Holding every shard open kept a file handle, a memory map and the whole parsed header of
    each (every key of every shard) for the life of the base; weights are read in layer order,
    so a small cache of open shards serves a whole audit.
    """

    _OPEN = 2

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._open: "OrderedDict[int, object]" = OrderedDict()

    def read(self, index: int, key: str) -> np.ndarray:
        from .adapters import safetensors_from_path

        tensors = self._open.pop(index, None)
        if tensors is None:
            tensors = safetensors_from_path(self.paths[index])
            while len(self._open) >= self._OPEN:
                self._open.popitem(last=False)
        self._open[index] = tensors
        return tensors.get(key)  # type: ignore[attr-defined]


def _shard_entries(paths: list[Path], folder: str) -> tuple[dict, dict]:
    """``(entries, owner)`` of the ``*.weight`` keys of every shard, from their headers only.

    Each header is read within the adapter readers' bounds (16 MiB, 50,000 tensors); in all,
    at most :data:`MAX_BASE_SHARDS` shards, :data:`MAX_BASE_TENSORS` tensors and
    :data:`MAX_BASE_HEADER_BYTES` of headers. Only ``*.weight`` keys are kept (their dtype and
    shape): biases, norms and buffers are never looked up.
    """
    import struct

    from .adapters import check_safetensors_header

    if len(paths) > MAX_BASE_SHARDS:
        raise AdapterError(f"base weights in {folder} are split into {len(paths):,} files; lorarank reads "
                           f"at most {MAX_BASE_SHARDS:,} shards")
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    owner: dict[str, int] = {}
    tensors = header_bytes = 0
    for index, path in enumerate(paths):
        regular_file(path, what="base weights")
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise AdapterError(f"{path.name} is not a valid safetensors file (only {len(head)} bytes)")
            header_bytes += min(struct.unpack("<Q", head)[0], size)
            if header_bytes > MAX_BASE_HEADER_BYTES:
                raise AdapterError(f"base weights in {folder} have over {MAX_BASE_HEADER_BYTES // 2**20} MiB "
                                   "of safetensors headers; lorarank reads at most that")
            _, header = check_safetensors_header(path.name, head, fh.read, size)
        if not header:
            from .adapters import safetensors_from_path

            safetensors_from_path(path)  # the library names what is wrong with it
        tensors += len(header) - ("__metadata__" in header)
        if tensors > MAX_BASE_TENSORS:
            raise AdapterError(f"base weights in {folder} hold over {MAX_BASE_TENSORS:,} tensors; lorarank "
                               f"reads at most {MAX_BASE_TENSORS:,}")
        for key, info in header.items():
            if key == "__metadata__" or not key.endswith(".weight"):
                continue
            if key in entries:
                raise AdapterError(f"base weight {key!r} appears in two files ({path.name} and "
                                   f"{paths[owner[key]].name})")
            try:
                dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            except (TypeError, KeyError, ValueError) as exc:
                raise AdapterError(f"{path.name} is not a valid safetensors file (tensor {key!r}: {exc})") from exc
            entries[key] = (dtype, shape)
            owner[key] = index
    return entries, owner


def shard_paths(p: Path, *, what: str = "base weights") -> list[Path]:
    """The safetensors files of a folder: the shards its ``model.safetensors.index.json`` names
    (each a file in the folder itself), else its ``*.safetensors`` files (the model readers'
    one rule, :mod:`lorarank.weights` too). AdapterError (one sentence) otherwise."""
    index = p / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = load_json(index.name, read_file(index, max_bytes=MAX_INDEX_BYTES,
                                                         what="shard indexes"),
                                   what="shard index")["weight_map"]  # type: ignore[index]
            shards = sorted(set(weight_map.values()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise AdapterError(f"{index.name} in {p.name} is not a valid shard index ({exc})") from exc
        paths = []
        for shard in shards:
            shard_path = (p / str(shard))
            if not isinstance(shard, str) or shard_path.parent.resolve() != p.resolve() or not shard_path.is_file():
                raise AdapterError(f"{index.name} names shard {clip(repr(shard), 200)}, which is not a file "
                                   f"in {p.name}")
            paths.append(shard_path)
        return paths
    paths = sorted(f for f in p.glob("*.safetensors") if f.is_file())
    if not paths:
        raise AdapterError(f"{p.name} holds no .safetensors {what}")
    return paths


def open_base(path: str | os.PathLike) -> BaseWeights:
    """Open base weights lazily: a ``.safetensors`` file, a folder of shards, or ``hf://``.

    Parameters
    ----------
    path : str or path-like
        A file, or a folder with ``model.safetensors.index.json`` or ``*.safetensors`` files, or
        a model on the Hub, ``hf://owner/name[@revision]``: its safetensors headers are read,
        then only the tensors asked for, by byte ranges (:mod:`lorarank.hub_ranges`).

    Returns
    -------
    BaseWeights
        Only the file headers are read here; tensors are read by :meth:`BaseWeights.weight`,
        a folder's shards opened when one of their weights is read.

    Raises
    ------
    AdapterError
        Missing path, no safetensors file, an invalid file or index, more shards, tensors or
        header bytes than the bounds above.
    """
    from .adapters import safetensors_from_path
    from .hub import is_hub_uri

    if is_hub_uri(str(path)):  # read by byte ranges: the headers, then only the tensors asked for
        from .weights import open_model

        return open_model(str(path)).base_weights()
    p = Path(path)
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    if not p.exists():
        raise AdapterError(f"base weights {clip(str(path), 300)!r} do not exist")
    if p.is_dir():
        paths = shard_paths(p, what="base weights")
        entries, owner = _shard_entries(paths, p.name)
        shards = _Shards(paths)
        return BaseWeights(p.name, entries, lambda key: shards.read(owner[key], key))
    handles: dict[str, object] = {}
    _add_file(safetensors_from_path(regular_file(p, what="base weights")), entries, handles)
    return BaseWeights(p.name, entries, _reader_for(handles))


def open_base_bytes(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> BaseWeights:
    """Base weights from uploaded ``.safetensors`` bytes (one file or several shards).

    Each file is validated as the adapter readers validate theirs (bounded header, then
    ``safetensors.deserialize``); tensors are views on the bytes.
    """
    from .adapters import safetensors_from_bytes

    items = list(files.items()) if isinstance(files, Mapping) else list(files)
    if not items:
        raise ConfigError("no base weights file given")
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    owners: dict[str, object] = {}
    for name, data in items:
        if str(name).endswith(".safetensors"):
            _add_file(safetensors_from_bytes(str(name), data), entries, owners)
    if not entries:
        raise AdapterError("the base weights upload holds no .safetensors file")
    source = ", ".join(str(n) for n, _ in items)
    return BaseWeights(source, entries, _reader_for(owners))
