"""Writers: an :class:`Adapter` to PEFT, kohya, mlx-lm or npz files (bytes, or a path).

Tensors are serialised with ``safetensors.serialize`` from raw buffers, so bfloat16 is written
without ml_dtypes (rounded to nearest even from float32; exact for factors read as bfloat16),
and the tensors that are not LoRA factors (:attr:`Adapter.extras`: ``modules_to_save`` heads,
trainable-token deltas, ``embed_tokens.base_layer``, ...) are written back byte-identical, with
the config's ``modules_to_save`` / ``trainable_token_indices`` kept, so the library that wrote
the input loads the output. Modules of another family (LoHa, LoKr, AdaLoRA, LoCon Tucker) are
written as plain LoRA of the same update (PEFT config ``peft_type: LORA``). DoRA modules are
written with their magnitude vector in PEFT (``lora_magnitude_vector``, ``use_dora``) and mlx-lm
(``.m``) files, refused in the others; LoKr Kronecker factors are refused (resize converts
them). A kohya file keeps the input's ``__metadata__`` (``ss_*``, ``modelspec.*``) with the
``sshs_*`` hashes recomputed as kohya does; modules a resize left out get no keys (PEFT:
``exclude_modules``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .._validate import check_choice
from ..bounded import clip, write_atomic
from ..errors import ConfigError
from ..spectrum import single_threaded_blas
from ._model import Adapter
from ._tensors import Bf16Array, LazyArray, encode_bf16
from .names import PEFT_PREFIX, parse_module_name

__all__ = ["WRITE_FORMATS", "adapter_files", "save_adapter", "default_write_format", "writable", "held_as"]

#: Formats lorarank writes.
WRITE_FORMATS: tuple[str, ...] = ("peft", "kohya", "mlx", "npz")
_WRITE_DTYPES = ("float64", "float32", "float16", "bfloat16")
# safetensors header dtype name -> safetensors.serialize dtype name
_ST_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
             "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
             "C64": "complex64"}
# LoRA config fields that stay meaningful when another family is written as plain LoRA.
_LORA_KEEP = ("base_model_name_or_path", "revision", "task_type", "target_modules", "exclude_modules",
              "modules_to_save", "trainable_token_indices", "layers_to_transform", "layers_pattern",
              "fan_in_fan_out", "inference_mode", "bias", "auto_mapping", "peft_version", "use_rslora")

# (format, A-suffix, B-suffix, layout). Layout "ab": A (r, in), B (out, r); "ab_t": the same


def _alpha_for(scale: float, r: int, rslora: bool) -> float:
    """The alpha that gives ``scale`` at rank ``r`` exactly as PEFT computes it
    (``lora_alpha / r``, or ``lora_alpha / math.sqrt(r)`` with rsLoRA); an int when one does.

    ``scale * r`` rounds, so its quotient by r can miss ``scale`` by an ulp; the nearest floats
    around it are tried until the quotient is ``scale`` bit for bit (a padded or resized
    adapter then applies exactly the scale it was read with).
    """
    div = math.sqrt(r) if rslora else float(r)
    value = scale * div
    nearest = round(value)
    if nearest and abs(value - nearest) <= 1e-9 * abs(value) and nearest / div == scale:
        return int(nearest)
    candidate = value
    for _ in range(8):
        if candidate / div == scale:
            return candidate
        candidate = math.nextafter(candidate, math.inf if candidate / div < scale else -math.inf)
    return value


def _cast(key: str, arr: np.ndarray, dtype: str) -> np.ndarray:
    """``arr`` as the bytes the writer stores for ``dtype`` (one of float64, float32, float16,
    bfloat16), or ConfigError when a finite value would be stored as inf: the one check of
    whether values fit, used by the writers and by their dry run (:func:`writable`)."""
    arr = np.asarray(arr)
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "bfloat16":
            buf = encode_bf16(arr.astype(np.float32, copy=False))
            overflow = not bool(np.all((buf & 0x7F80) != 0x7F80))
        else:
            buf = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False))
            overflow = buf.dtype.kind == "f" and not bool(np.isfinite(buf).all())
        if overflow and bool(np.isfinite(np.asarray(arr, dtype=np.float64)).all()):
            # A finite value past the dtype's range would be written as inf: refuse, never save it.
            raise ConfigError(f"tensor {clip(key, 200)!r} does not fit in {dtype}: its largest |value| is "
                              f"{float(np.max(np.abs(np.asarray(arr, dtype=np.float64)))):.4g}; write it as "
                              f"float32 or float64")
    return buf


def held_as(arr: np.ndarray, dtype: object, *, what: str) -> np.ndarray:
    """``arr`` cast to the float ``dtype`` new factors are held in, or ConfigError when a finite
    value is past that dtype's range (numpy would make it inf, and inf would be written).

    Parameters
    ----------
    arr : ndarray
    dtype : numpy dtype
    what : str
        What the values are, for the sentence (``"module 'q': the converted factors"``).
    """
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(arr).astype(dtype)
    if dtype.kind == "f" and not bool(np.isfinite(out).all()) and bool(np.isfinite(arr).all()):
        largest = float(np.max(np.abs(arr)))
        raise ConfigError(f"{what} reach {largest:.4g}, past the largest {dtype} value "
                          f"({float(np.finfo(dtype).max):.5g}), so they cannot be stored as {dtype} like the "
                          f"input's factors")
    return out


class _Specs:
    """Tensors to serialise: name -> (serialize dtype name, shape, contiguous buffer)."""

    dry = False

    def __init__(self):
        self.items: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}

    def add(self, key: str, arr: np.ndarray, dtype: str) -> None:
        """Add ``arr`` stored as ``dtype`` (one of float64, float32, float16, bfloat16)."""
        self.items[key] = (dtype, tuple(int(d) for d in arr.shape), _cast(key, arr, dtype))

    def add_raw(self, key: str, st_dtype: str, shape: tuple[int, ...], data: bytes) -> None:
        """Add stored bytes as they are (non-LoRA tensors, byte-identical)."""
        if st_dtype not in _ST_NAMES:
            raise ConfigError(f"tensor {key!r} has dtype {st_dtype}, which lorarank cannot write back")
        self.items[key] = (_ST_NAMES[st_dtype], tuple(shape), np.frombuffer(data, dtype=np.uint8))

    def serialize(self, metadata: dict[str, str] | None = None) -> bytes:
        from safetensors import TensorSpec, serialize

        specs = {k: TensorSpec(dtype=d, shape=list(shape), data_ptr=buf.ctypes.data, data_len=buf.nbytes)
                 for k, (d, shape, buf) in self.items.items()}
        out = bytes(serialize(specs, metadata=metadata))
        del specs   # the buffers in self.items stayed alive while serialize read them
        return out


class _DryRun(_Specs):
    """The writers' dry run: every refusal they would raise, without keeping or serialising a
    tensor. A lazy tensor whose :attr:`LazyArray.bound` fits its dtype is not formed (every
    entry is at most the bound, and rounding to a dtype is monotone in ``|x|``); a stored
    array already in that dtype is not cast (the readers refuse inf and NaN); any other one is
    cast by the writer's own :func:`_cast`, so the verdict is the writer's."""

    dry = True

    def add(self, key: str, arr: np.ndarray, dtype: str) -> None:
        if isinstance(arr, LazyArray):
            if isinstance(arr, Bf16Array) and dtype == "bfloat16":
                return  # bfloat16 bits read from the file: stored as they were
            if arr.bound is not None:
                with np.errstate(over="ignore", invalid="ignore"):
                    probe = np.array([arr.bound], dtype=np.float64).astype(arr.dtype)
                if bool(np.isfinite(probe).all()):
                    try:
                        _cast(key, probe, dtype)
                        return
                    except ConfigError:
                        pass  # the bound does not settle it: the tensor itself does
        elif isinstance(arr, np.ndarray) and arr.dtype == np.dtype(dtype):
            return
        _cast(key, arr, dtype)

    def add_raw(self, key: str, st_dtype: str, shape: tuple[int, ...], data: bytes) -> None:
        if st_dtype not in _ST_NAMES:
            super().add_raw(key, st_dtype, shape, data)

    def serialize(self, metadata: dict[str, str] | None = None) -> bytes:
        return b""


def _lazy(arr, shape: tuple[int, ...], how: Callable[[np.ndarray], np.ndarray], *, factor: float = 1.0):
    """``how(arr)`` of ``shape``, formed when used if ``arr`` is lazy (its bound times ``factor``)."""
    if not isinstance(arr, LazyArray):
        return how(np.asarray(arr))
    bound = None if arr.bound is None else arr.bound * abs(factor)
    dtype = arr.dtype if factor == 1.0 else np.dtype(np.float64)
    return LazyArray(lambda: how(arr.materialize()), shape, dtype, bound=bound)


def _target(m, dtype: str | None) -> str:
    name = dtype or m.dtype
    return name if name in _WRITE_DTYPES else "float32"


def _add_extras(specs: _Specs, adapter: Adapter, fmt: str) -> None:
    if not adapter.extras:
        return
    if adapter.format != fmt and not (adapter.format == "diffusers" and fmt == "peft"):
        few = ", ".join(repr(k) for k in list(adapter.extras)[:2])
        raise ConfigError(f"the adapter holds {len(adapter.extras)} tensors that are not LoRA factors ({few}) "
                          f"in {adapter.format} naming; write {adapter.format} to keep them")
    for key, extra in adapter.extras.items():
        specs.add_raw(key, extra.dtype, extra.shape, extra.data)


def _kernel_shaped(m) -> tuple[object, object]:
    """A module's ``(A, B)`` as stored: convolution factors with their kernel axes (lazy ones
    stay lazy, with their bound)."""
    if not m.kernel:
        return m.A, m.B
    a_shape = (m.rank,) + tuple(m.kernel)
    b_shape = tuple(m.B.shape) + (1,) * (len(m.kernel) - 1)
    return (_lazy(m.A, a_shape, lambda x: x.reshape(a_shape)), _lazy(m.B, b_shape, lambda x: x.reshape(b_shape)))


def _peft_files(adapter: Adapter, dtype: str | None, specs: _Specs) -> dict[str, bytes]:
    config = dict(adapter.config or {})
    if str(config.get("peft_type") or "LORA").upper() != "LORA":
        # LoHa / LoKr / AdaLoRA written as plain LoRA of the same update: a LoRA config.
        config = {k: config[k] for k in _LORA_KEEP if k in config}
        config["peft_type"] = "LORA"
    rslora = config.get("use_rslora", False) is True if adapter.format == "peft" else False
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for m in adapter.modules:
        name = m.name if adapter.format == "peft" else PEFT_PREFIX + m.name
        embedding = m.transposed and not config.get("fan_in_fan_out", False)
        a_key, b_key = (".lora_embedding_A", ".lora_embedding_B") if embedding else (".lora_A.weight", ".lora_B.weight")
        a, b = _kernel_shaped(m)
        specs.add(name + a_key, a, _target(m, dtype))
        specs.add(name + b_key, b, _target(m, dtype))
        if m.magnitude is not None:  # DoRA: PEFT's key for a Linear layer's magnitude vector
            specs.add(name + ".lora_magnitude_vector", np.asarray(m.magnitude), _target(m, dtype))
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
                   "alpha_pattern": alpha_pattern, "use_rslora": rslora,
                   "use_dora": any(m.magnitude is not None for m in adapter.modules)})
    if adapter.dropped:
        config["exclude_modules"] = _excluded(config.get("exclude_modules"), adapter)
    _add_extras(specs, adapter, "peft")
    return {
        "adapter_model.safetensors": specs.serialize({"format": "pt"}),
        "adapter_config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }


def _excluded(existing: object, adapter: Adapter) -> list[str] | str:
    """PEFT ``exclude_modules`` with the modules a resize left out added, in the form PEFT
    matches (names inside the base model; a list matches a name or a dotted suffix, a string
    is a regular expression matched whole)."""
    names = [n[len(PEFT_PREFIX):] if n.startswith(PEFT_PREFIX) else n for n in adapter.dropped]
    if isinstance(existing, str) and existing:
        return f"(?:{existing})|(?:{'|'.join(re.escape(n) for n in names)})"
    return [*(existing if isinstance(existing, list) else []), *names]


def _kohya_metadata(adapter: Adapter, specs: "_Specs") -> dict[str, str] | None:
    """The file's own ``__metadata__`` (kohya ``ss_*`` training facts, ``modelspec.*``) with the
    ``sshs_*`` hashes recomputed the way kohya's ``train_util.precalculate_safetensors_hashes``
    does: sha256 of the data after the header, and of 64 KiB at offset 1 MiB (first 8 hex
    digits), of the file serialised with the ``ss_*`` keys only."""
    meta = dict(adapter.file_metadata) if adapter.format == "kohya" else {}
    if not meta:
        return None
    if any(k.startswith("sshs_") for k in meta):
        import hashlib
        import struct

        blob = specs.serialize({k: v for k, v in meta.items() if k.startswith("ss_")})
        start = 8 + struct.unpack("<Q", blob[:8])[0]
        meta["sshs_model_hash"] = hashlib.sha256(blob[start:]).hexdigest()
        meta["sshs_legacy_hash"] = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return meta


def _kohya_file(adapter: Adapter, dtype: str | None, specs: _Specs) -> dict[str, bytes]:
    for m in adapter.modules:
        if m.transposed:
            raise ConfigError(f"module {m.name!r} adds (B @ A)^T, which the kohya format cannot express; "
                              "write peft or npz instead")
        a, b = _kernel_shaped(m)
        specs.add(m.name + ".lora_down.weight", a, _target(m, dtype))
        specs.add(m.name + ".lora_up.weight", b, _target(m, dtype))
        specs.add(m.name + ".alpha", np.array(m.scale * m.rank), "float32")
    _add_extras(specs, adapter, "kohya")
    return {"adapter.safetensors": specs.serialize(None if specs.dry else _kohya_metadata(adapter, specs))}


def _mlx_files(adapter: Adapter, dtype: str | None, specs: _Specs) -> dict[str, bytes]:
    """mlx-lm's ``adapters.safetensors`` (``lora_a`` (in, r), ``lora_b`` (r, out), DoRA ``m``) and
    its ``adapter_config.json`` with one ``lora_parameters.rank`` and ``scale`` for every module
    (mlx-lm builds every layer at that rank and checks the shapes)."""
    ranks = {m.rank for m in adapter.modules}
    if len(ranks) > 1:
        raise ConfigError(f"mlx-lm adapters hold one rank for every module (lora_parameters.rank); these "
                          f"modules have ranks {', '.join(map(str, sorted(ranks)))}")
    scales = {m.scale for m in adapter.modules}
    scale = scales.pop() if len(scales) == 1 else 1.0  # differing scales: folded into lora_b
    for m in adapter.modules:
        (d_out, rank), (_, d_in) = m.B.shape, m.A.shape
        folded = m.scale if m.scale != scale else 1.0
        b = _lazy(m.B, (rank, d_out), factor=folded,
                  how=lambda x, s=folded: np.ascontiguousarray((x if s == 1.0 else x.astype(np.float64) * s).T))
        specs.add(m.name + ".lora_a", _lazy(m.A, (d_in, rank), lambda x: np.ascontiguousarray(x.T)),
                  _target(m, dtype))
        specs.add(m.name + ".lora_b", b, _target(m, dtype))
        if m.magnitude is not None:
            specs.add(m.name + ".m", np.asarray(m.magnitude), _target(m, dtype))
    _add_extras(specs, adapter, "mlx")
    config = dict(adapter.config or {})
    params = dict(config.get("lora_parameters") or {})
    params.update(rank=ranks.pop(), scale=scale)
    config["lora_parameters"] = params
    config.setdefault("fine_tune_type", "dora" if any(m.magnitude is not None for m in adapter.modules)
                      else "lora")
    return {"adapters.safetensors": specs.serialize(),
            "adapter_config.json": (json.dumps(config, indent=4) + "\n").encode()}


def _npz_file(adapter: Adapter, dtype: str | None, specs: _Specs) -> dict[str, bytes]:
    if adapter.extras:
        n = len(adapter.extras)
        few = ", ".join(repr(k) for k in list(adapter.extras)[:2])
        what = f"{n} other {'tensor' if n == 1 else 'tensors'} ({few})"
        if adapter.format == "npz":
            raise ConfigError(f"the .npz holds {what} besides its LoRA factors, and lorarank's .npz writer keeps "
                              f"LoRA factors only; remove {'it' if n == 1 else 'them'} from the file to write it")
        raise ConfigError(f"the simple npz format keeps LoRA factors only, and the adapter holds {what}; "
                          f"write {adapter.format} to keep {'it' if n == 1 else 'them'}")
    arrays: dict[str, np.ndarray] = {}
    for m in adapter.modules:
        if m.transposed:
            raise ConfigError(f"module {m.name!r} adds (B @ A)^T, which the simple npz format cannot "
                              "express; write peft instead")
        # .npy has no bfloat16: such factors are written as float32 (exact).
        target = _target(m, dtype)
        target = "float32" if target == "bfloat16" else target
        prefix = f"{m.name}." if m.name else ""
        for part, arr in (("A", m.A), ("B", m.B)):
            specs.add(prefix + part, arr, target)   # the same range check as the safetensors writers
            if not specs.dry:
                arrays[prefix + part] = specs.items.pop(prefix + part)[2].astype(target, copy=False)
        arrays[prefix + "alpha"] = np.array(m.scale * m.rank, dtype=np.float64)
    if specs.dry:
        return {}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return {"adapter.npz": buf.getvalue()}


_WRITERS: dict[str, Callable[[Adapter, str | None, _Specs], dict[str, bytes]]] = {
    "peft": _peft_files, "kohya": _kohya_file, "mlx": _mlx_files, "npz": _npz_file}


def default_write_format(adapter: Adapter) -> str:
    """The format an adapter is written in by default: its own family's (PEFT, kohya, mlx-lm);
    others (diffusers, npz) as the simple ``.npz``, or PEFT when a module adds ``(B @ A)^T``."""
    if adapter.format in ("peft", "kohya", "mlx"):
        return adapter.format
    if any(m.transposed for m in adapter.modules):
        return "peft"
    return "npz"


def writable(adapter: Adapter, format: str | None = None, *, dtype: str | None = None,
             values: bool = False) -> str | None:
    """Why ``adapter`` cannot be written as ``format`` (one sentence), or None when it can.

    Nothing is serialised. Without ``values`` the checks are on the modules' families and
    shapes only. With ``values=True`` it is the writer's dry run (the page's pre-flight before
    it offers a download): every refusal :func:`adapter_files` would raise, including a value
    too large for the stored dtype, said before any file is built. A lazy factor whose bound
    (:attr:`LazyArray.bound`, a resized factor's ``sqrt(sigma_1)``) fits is not formed, nor is
    a stored array already in its dtype cast, so the dry run of a resize that fits costs one
    comparison per tensor; a tensor the bound does not settle is formed and checked exactly as
    the writer checks it, so both give the same verdict.

    Parameters
    ----------
    adapter : Adapter
    format : {"peft", "kohya", "mlx", "npz"}, optional
        Default: :func:`default_write_format`.
    dtype : {"float64", "float32", "float16", "bfloat16"}, optional
        As in :func:`adapter_files`.
    values : bool, default=False
        Also check that every value fits the dtype it is stored in.

    Returns
    -------
    str or None
    """
    try:
        fmt = default_write_format(adapter) if format is None else check_choice("format", format, WRITE_FORMATS)
        target = None if dtype is None else check_choice("dtype", dtype, _WRITE_DTYPES)
        _check_writable(adapter, fmt)
        if values:
            with single_threaded_blas():  # a factor formed here is formed as the writer forms it
                _WRITERS[fmt](adapter, target, _DryRun())
    except ConfigError as exc:
        return str(exc)
    return None


def _check_writable(adapter: Adapter, fmt: str) -> None:
    """Refuse what the format cannot hold exactly, with one sentence."""
    if adapter.format == "gguf":
        raise ConfigError("adapters read from GGUF are not written back: llama.cpp permuted the rows of their "
                          "q / k factors, so a PEFT or kohya file would not match the model")
    if not adapter.modules:
        raise ConfigError("no module is left to write: every module's update is exactly zero (or was given "
                          "no direction), so the resized adapter would change nothing")
    if fmt == "mlx" and adapter.format != "mlx":
        raise ConfigError(f"only adapters read from mlx-lm are written as mlx-lm adapters (this one is "
                          f"{adapter.format})")
    for m in adapter.modules:
        if m.kron_left is not None:
            raise ConfigError(f"module {m.name!r} is LoKr (a Kronecker product), which the writers do not store "
                              "as such; resize it first (the result is plain LoRA of the same update)")
        if m.magnitude is None:
            continue
        if fmt not in ("peft", "mlx"):
            raise ConfigError(f"module {m.name!r} is DoRA, whose magnitude vector lorarank writes in PEFT and "
                              f"mlx-lm files only, not as {fmt}")
        if m.kernel or m.transposed:
            raise ConfigError(f"module {m.name!r} is a DoRA {'convolution' if m.kernel else 'embedding'}, "
                              "whose magnitude layout lorarank does not write (it writes DoRA Linear layers)")


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
    fmt = default_write_format(adapter) if format is None else check_choice("format", format, WRITE_FORMATS)
    target = None if dtype is None else check_choice("dtype", dtype, _WRITE_DTYPES)
    _check_writable(adapter, fmt)
    # A resized adapter's factors are formed here, one factored SVD per module: hundreds of
    # small QRs, on one BLAS thread (threads spinning on shared cores made a save 60-73 s).
    with single_threaded_blas():
        return _WRITERS[fmt](adapter, target, _Specs())


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
    # lexists: a dangling symlink is a name that exists, and writing "to" it would create the
    # file it points at, wherever that is.
    existing = [str(t) for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; choose another output (or overwrite "
                          f"it on purpose with --force)")
    for target in targets:
        folder = target.parent
        if os.path.lexists(folder) and not folder.is_dir():
            raise ConfigError(f"{folder} exists and is not a folder; choose another output")
    for target, data in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Whole or not at all (a temporary file, renamed); without overwrite the final name is
        # taken atomically, so a symlink created since the check above is never followed.
        write_atomic(target, data, overwrite=overwrite)
    return list(targets)
