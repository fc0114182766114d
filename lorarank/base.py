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

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import AdapterError, ConfigError

__all__ = ["BaseWeights", "open_base", "open_base_bytes", "canonical_name", "MAX_INDEX_BYTES"]

#: Largest ``model.safetensors.index.json`` read (real ones are well under 1 MiB).
MAX_INDEX_BYTES = 16 * 2**20

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

    def __init__(self, source: str, entries: Mapping[str, tuple[str, tuple[int, ...]]], reader) -> None:
        # entries: key -> (safetensors dtype name, shape); reader(key) -> ndarray of the stored values
        self.source = source
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
            No or several matching keys, a shape that does not fit, non-finite values.
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
        arr = np.asarray(self._reader(key)).reshape(want).astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise AdapterError(f"base weight {key!r} in {self.source} contains NaN or infinite values")
        return arr.T if transposed else arr


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


def open_base(path: str | os.PathLike) -> BaseWeights:
    """Open base weights lazily: a ``.safetensors`` file or a folder of shards.

    Parameters
    ----------
    path : str or path-like
        A file, or a folder with ``model.safetensors.index.json`` or ``*.safetensors`` files.

    Returns
    -------
    BaseWeights
        Only the file headers are read here; tensors are read by :meth:`BaseWeights.weight`.

    Raises
    ------
    AdapterError
        Missing path, no safetensors file, an invalid file or index.
    """
    from .adapters._tensors import safetensors_from_path

    p = Path(path)
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    handles: dict[str, object] = {}
    if p.is_file():
        _add_file(safetensors_from_path(p), entries, handles)
    elif p.is_dir():
        index = p / "model.safetensors.index.json"
        if index.is_file():
            if index.stat().st_size > MAX_INDEX_BYTES:
                raise AdapterError(f"{index.name} is larger than {MAX_INDEX_BYTES // 2**20} MiB")
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise AdapterError(f"{index.name} in {p.name} is not a valid shard index ({exc})") from exc
            for shard in shards:
                shard_path = (p / str(shard))
                if not isinstance(shard, str) or shard_path.parent.resolve() != p.resolve() or not shard_path.is_file():
                    raise AdapterError(f"{index.name} names shard {shard!r}, which is not a file in {p.name}")
                _add_file(safetensors_from_path(shard_path), entries, handles)
        else:
            files = sorted(f for f in p.glob("*.safetensors") if f.is_file())
            if not files:
                raise AdapterError(f"{p.name} holds no .safetensors base weights")
            for f in files:
                _add_file(safetensors_from_path(f), entries, handles)
    else:
        raise AdapterError(f"base weights {str(path)!r} do not exist")
    return BaseWeights(p.name, entries, _reader_for(handles))


def open_base_bytes(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> BaseWeights:
    """Base weights from uploaded ``.safetensors`` bytes (one file or several shards).

    Each file is validated as the adapter readers validate theirs (bounded header, then
    ``safetensors.deserialize``); tensors are views on the bytes.
    """
    from .adapters._tensors import safetensors_from_bytes

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
