"""Writers: an :class:`Adapter` to PEFT, kohya or npz files (bytes, or a path)."""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

import ml_dtypes
import numpy as np

from .._validate import check_choice
from ..errors import ConfigError
from ._model import Adapter
from .names import PEFT_PREFIX, parse_module_name

__all__ = ["WRITE_FORMATS", "adapter_files", "save_adapter"]

#: Formats lorarank writes.
WRITE_FORMATS: tuple[str, ...] = ("peft", "kohya", "npz")
_WRITE_DTYPES = {
    "float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# (format, A-suffix, B-suffix, layout). Layout "ab": A (r, in), B (out, r); "ab_t": the same


def _alpha_for(scale: float, r: int, rslora: bool) -> float:
    """The alpha that gives ``scale`` at rank ``r``; an int when it is one to round-off."""
    value = scale * math.sqrt(r) if rslora else scale * r
    nearest = round(value)
    return int(nearest) if nearest and abs(value - nearest) <= 1e-9 * abs(value) else value


def _cast(arr: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    return np.ascontiguousarray(arr if dtype is None else arr.astype(dtype, copy=False))


def _peft_files(adapter: Adapter, dtype: np.dtype | None) -> dict[str, bytes]:
    from safetensors.numpy import save

    config = dict(adapter.config or {})
    rslora = bool(config.get("use_rslora", False)) if adapter.format == "peft" else False
    tensors: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for m in adapter.modules:
        name = m.name if adapter.format == "peft" else PEFT_PREFIX + m.name
        embedding = m.transposed and not config.get("fan_in_fan_out", False)
        a_key, b_key = (".lora_embedding_A", ".lora_embedding_B") if embedding else (".lora_A.weight", ".lora_B.weight")
        a = m.A.reshape((m.rank,) + m.kernel) if m.kernel else m.A
        b = m.B.reshape(m.B.shape + (1,) * (len(m.kernel) - 1)) if m.kernel else m.B
        tensors[name + a_key] = _cast(a, dtype)
        tensors[name + b_key] = _cast(b, dtype)
        inner = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        ranks[inner] = m.rank
        alphas[inner] = _alpha_for(m.scale, m.rank, rslora)
    # The most common (r, alpha) is the default; every other module gets an exact pattern.
    pairs = [(ranks[k], alphas[k]) for k in ranks]
    r0, a0 = max(set(pairs), key=lambda p: (pairs.count(p), -p[0]))
    rank_pattern = {re.escape(k): r for k, r in ranks.items() if r != r0}
    alpha_pattern = {re.escape(k): a for k, a in alphas.items() if a != a0}
    types = sorted({parse_module_name(k)[1] for k in ranks})
    config.setdefault("peft_type", "LORA")
    config.setdefault("target_modules", types)
    config.setdefault("bias", "none")
    config.setdefault("task_type", None)
    config.setdefault("base_model_name_or_path", None)
    config.setdefault("fan_in_fan_out", False)
    config.update({"r": r0, "lora_alpha": a0, "rank_pattern": rank_pattern,
                   "alpha_pattern": alpha_pattern, "use_rslora": rslora, "use_dora": False})
    return {
        "adapter_model.safetensors": save(tensors, metadata={"format": "pt"}),
        "adapter_config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }


def _kohya_file(adapter: Adapter, dtype: np.dtype | None) -> dict[str, bytes]:
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    for m in adapter.modules:
        if m.transposed:
            raise ConfigError(f"module {m.name!r} adds (B @ A)^T, which the kohya format cannot express; "
                              "write peft or npz instead")
        a = m.A.reshape((m.rank,) + m.kernel) if m.kernel else m.A
        b = m.B.reshape(m.B.shape + (1,) * (len(m.kernel) - 1)) if m.kernel else m.B
        tensors[m.name + ".lora_down.weight"] = _cast(a, dtype)
        tensors[m.name + ".lora_up.weight"] = _cast(b, dtype)
        tensors[m.name + ".alpha"] = np.array(m.scale * m.rank, dtype=np.float32)
    return {"adapter.safetensors": save(tensors)}


def _npz_file(adapter: Adapter, dtype: np.dtype | None) -> dict[str, bytes]:
    arrays: dict[str, np.ndarray] = {}
    for m in adapter.modules:
        if m.transposed:
            raise ConfigError(f"module {m.name!r} adds (B @ A)^T, which the simple npz format cannot "
                              "express; write peft instead")
        # .npy has no bfloat16: such factors are written as float32 (exact).
        target = dtype if dtype is not None else m.A.dtype
        if target == np.dtype(ml_dtypes.bfloat16):
            target = np.dtype(np.float32)
        prefix = f"{m.name}." if m.name else ""
        arrays[prefix + "A"] = _cast(m.A, target)
        arrays[prefix + "B"] = _cast(m.B, target)
        arrays[prefix + "alpha"] = np.array(m.scale * m.rank, dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return {"adapter.npz": buf.getvalue()}


def _default_write_format(adapter: Adapter) -> str:
    if adapter.format in ("peft", "kohya"):
        return adapter.format
    if any(m.transposed for m in adapter.modules):
        return "peft"
    return "npz"


def _check_writable(adapter: Adapter) -> None:
    """Refuse what a plain-LoRA file cannot hold exactly, with one sentence."""
    if adapter.format == "gguf":
        raise ConfigError("adapters read from GGUF are not written back: llama.cpp permuted the rows of their "
                          "q / k factors, so a PEFT or kohya file would not match the model")
    for m in adapter.modules:
        if m.kron_left is not None:
            raise ConfigError(f"module {m.name!r} is LoKr (a Kronecker product), which the writers do not store "
                              "as such; resize it first (the result is plain LoRA of the same update)")
        if m.magnitude is not None:
            raise ConfigError(f"module {m.name!r} is DoRA: its magnitude vector rescales W0 + s*B@A, so plain "
                              "LoRA factors cannot express it; lorarank does not write DoRA adapters")


def adapter_files(adapter: Adapter, *, format: str | None = None,
                  dtype: str | None = None) -> dict[str, bytes]:
    """Serialise an adapter to files, as bytes (for downloads).

    Parameters
    ----------
    adapter : Adapter
    format : {"peft", "kohya", "npz"}, optional
        Default: the adapter's own family (PEFT -> peft, kohya -> kohya, others -> npz).
        ``peft`` gives ``adapter_model.safetensors`` + ``adapter_config.json`` whose ``r``,
        ``lora_alpha``, ``rank_pattern`` and ``alpha_pattern`` reproduce every module's rank
        and scale (patterns are the escaped module names); ``kohya`` gives one safetensors
        file with an ``alpha`` per module (``alpha = scale * r``); ``npz`` gives
        ``<mod>.A``, ``<mod>.B`` and ``<mod>.alpha``.
    dtype : {"float64", "float32", "float16", "bfloat16"}, optional
        Storage dtype; default: each module's own (npz stores bfloat16 as float32).

    Returns
    -------
    dict of str to bytes
        File name -> content.
    """
    fmt = _default_write_format(adapter) if format is None else check_choice("format", format, WRITE_FORMATS)
    target = None if dtype is None else _WRITE_DTYPES[check_choice("dtype", dtype, tuple(_WRITE_DTYPES))]
    if not adapter.modules:
        raise ConfigError("the adapter has no modules to write")
    _check_writable(adapter)
    writer = {"peft": _peft_files, "kohya": _kohya_file, "npz": _npz_file}[fmt]
    return writer(adapter, target)


def save_adapter(adapter: Adapter, path: str | os.PathLike, *, format: str | None = None,
                 dtype: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write an adapter to ``path`` (the path twin of :func:`adapter_files`).

    ``peft`` writes a folder (``path`` is created); ``kohya`` and ``npz`` write one file,
    named ``path`` itself unless ``path`` is an existing folder.

    Parameters
    ----------
    adapter : Adapter
    path : path-like
    format : {"peft", "kohya", "npz"}, optional
        Default: the input's family.
    dtype : str, optional
        Storage dtype of the factors; default: as read.
    overwrite : bool, default=False
        Replace files that already exist. Without it an existing file is an error, so that a
        resize cannot silently replace the adapter it was made from.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ConfigError
        A file to write exists and ``overwrite`` is False.
    """
    files = adapter_files(adapter, format=format, dtype=dtype)
    path = Path(path)
    if "adapter_config.json" in files:
        targets = {path / name: data for name, data in files.items()}
    else:
        (name, data), = files.items()
        targets = {path / name if path.is_dir() else path: data}
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; choose another output (or overwrite "
                          f"it on purpose with --force)")
    for target, data in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return list(targets)
