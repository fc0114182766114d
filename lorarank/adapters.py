"""Reading and writing LoRA adapters: PEFT, kohya / sd-scripts, diffusers, mlx-lm, simple npz.

Every reader has a path twin and a bytes twin: :func:`load_adapter` takes a file or a PEFT
folder, :func:`load_adapter_bytes` takes the uploaded files themselves (name -> bytes), so an
upload needs no temporary file. Both return an :class:`Adapter`: a list of
:class:`LoraModule` (``A`` of shape (r, d_in), ``B`` of shape (d_out, r), in the stored dtype)
plus the scale of each module, computed exactly as the format defines it.

Formats (PRODUCT.md "Formats")::

    format     keys                                               scale
    peft       <mod>.lora_A.weight (r, in), <mod>.lora_B.weight   lora_alpha / r, lora_alpha / sqrt(r)
               (out, r); <mod>.lora_embedding_A / _B              with use_rslora; rank_pattern and
                                                                  alpha_pattern per module
    kohya      <mod>.lora_down.weight (r, in[, k, k]),            alpha / r; no alpha key: 1
               <mod>.lora_up.weight (out, r[, 1, 1]), <mod>.alpha
    diffusers  <mod>.lora.down.weight / lora.up.weight,           alpha / r with an alpha key, else 1
               <mod>.lora_linear_layer.down.weight / up.weight
    mlx        <mod>.lora_a (in, r), <mod>.lora_b (r, out)        lora_parameters.scale of the config
    npz        <mod>.A (r, in), <mod>.B (out, r), or one pair A/B  alpha / r with an alpha entry, else 1

Orientation comes from the key names only, never from shapes. LoHa (``hada_*``), LoKr
(``lokr_*``) and DoRA (``lora_magnitude_vector``, ``dora_scale``) are recognised and refused
with :class:`UnsupportedAdapterError`.

Why safetensors' own API plus ml_dtypes
---------------------------------------
Files are parsed by the ``safetensors`` library itself (the Rust reference implementation, the
one PEFT and diffusers use), so header checks (length, JSON, offsets inside the buffer, no
overlap, no gap) are exactly the library's: a path through ``safe_open(..., framework="numpy")``
(lazy: only the LoRA tensors are read), bytes through ``safetensors.deserialize`` (validated,
then each tensor's raw buffer). ``safetensors.numpy.load`` cannot decode bfloat16 (its dtype
table has no ``BF16``) and ``safe_open`` finds numpy's ``bfloat16`` only once ``ml_dtypes`` has
registered it, so this module imports ``ml_dtypes`` and maps ``BF16`` to ``ml_dtypes.bfloat16``:
the raw bytes are viewed, not copied, and converted straight to float64 one module at a time
when a spectrum is computed, so an 84 MB bfloat16 adapter costs about its own size in memory.
Writing bfloat16 works through ``safetensors.numpy.save`` (0.8 accepts ml_dtypes arrays).

``.npz`` files are read with ``np.load(..., allow_pickle=False)`` after the zip directory was
checked: members must be ``.npy`` arrays of a float dtype whose header size matches the
member's declared size, and the declared sizes together may not exceed
:data:`MAX_NPZ_EXPANSION` times the archive size (plus 64 MiB), which stops zip bombs before
any byte is inflated.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from ._validate import check_choice, check_real
from .errors import AdapterError, ConfigError, UnsupportedAdapterError

__all__ = [
    "FORMATS",
    "WRITE_FORMATS",
    "LoraModule",
    "Adapter",
    "load_adapter",
    "load_adapter_bytes",
    "adapter_files",
    "save_adapter",
    "parse_module_name",
    "peft_pattern_key",
    "MAX_NPZ_EXPANSION",
]

#: Formats lorarank reads, with where their scale comes from.
FORMATS: dict[str, str] = {
    "peft": "lora_alpha / r from adapter_config.json (lora_alpha / sqrt(r) with use_rslora; "
            "rank_pattern / alpha_pattern per module)",
    "kohya": "alpha / r from each module's alpha key; 1 without it",
    "diffusers": "alpha / r with an alpha key, else 1",
    "mlx": "lora_parameters.scale from adapter_config.json",
    "npz": "alpha / r with an alpha entry, else 1",
}

#: Formats lorarank writes.
WRITE_FORMATS: tuple[str, ...] = ("peft", "kohya", "npz")

#: Largest accepted ratio of the declared unpacked size of an ``.npz`` to its packed size.
MAX_NPZ_EXPANSION = 16
_NPZ_SLACK = 64 * 2**20

# safetensors dtype name -> numpy dtype; ints are accepted only for alpha scalars.
_FLOAT_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_INT_DTYPES = {
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "U16": np.dtype(np.uint16),
    "U32": np.dtype(np.uint32), "U64": np.dtype(np.uint64),
}
_DTYPE_NAMES = {v: k for k, v in {**_FLOAT_DTYPES, **_INT_DTYPES}.items()}
_WRITE_DTYPES = {
    "float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# (format, A-suffix, B-suffix, layout). Layout "ab": A (r, in), B (out, r); "ab_t": the same
# with dW = (B @ A)^T (PEFT embeddings); "mlx": a (in, r), b (r, out).
_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("peft", ".lora_A.weight", ".lora_B.weight", "ab"),
    ("peft", ".lora_embedding_A", ".lora_embedding_B", "ab_t"),
    ("kohya", ".lora_down.weight", ".lora_up.weight", "ab"),
    ("diffusers", ".lora.down.weight", ".lora.up.weight", "ab"),
    ("diffusers", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight", "ab"),
    ("mlx", ".lora_a", ".lora_b", "mlx"),
    ("npz", ".A", ".B", "ab"),
)
_UNSUPPORTED = (
    (re.compile(r"(^|[._])hada_(w1|w2|t1|t2)"), "LoHa"),
    (re.compile(r"(^|[._])lokr_(w1|w2|t1|t2)"), "LoKr"),
    (re.compile(r"(^|[._])(lora_magnitude_vector|dora_scale)"), "DoRA magnitude vectors"),
)
_PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class LoraModule:
    """One adapted layer: ``dW = scale * B @ A`` (transposed when ``transposed``).

    Attributes
    ----------
    name : str
        Module path without the factor suffix, e.g.
        ``base_model.model.model.layers.0.self_attn.q_proj``.
    A : ndarray of shape (r, d_in)
        Down-projection in the stored dtype (conv kernels flattened to ``in * k * k``).
    B : ndarray of shape (d_out, r)
        Up-projection in the stored dtype.
    scale : float
        The multiplier the format applies.
    alpha : float or None
        The stored or configured alpha, when the format has one.
    transposed : bool
        The layer adds ``(scale * B @ A).T`` (PEFT ``fan_in_fan_out``, embeddings); singular
        values are unaffected.
    kernel : tuple of int or None
        Trailing shape of a conv ``A`` before flattening, e.g. ``(in, 3, 3)``, for writing back.
    """

    name: str
    A: np.ndarray
    B: np.ndarray
    scale: float
    alpha: float | None = None
    transposed: bool = False
    kernel: tuple[int, ...] | None = None

    @property
    def rank(self) -> int:
        """The stored rank r."""
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of ``B @ A`` (the layer's output and input features)."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    @property
    def num_params(self) -> int:
        """Parameters in the two factors, ``r * (d_out + d_in)``."""
        return int(self.A.size + self.B.size)

    @property
    def dtype(self) -> str:
        """numpy name of the stored dtype (``"bfloat16"``, ``"float32"``, ...)."""
        return str(self.A.dtype.name)

    def factors(self, dtype: object = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """``(B, A)`` converted to ``dtype`` (float64 by default) for the linear algebra."""
        return self.B.astype(dtype, copy=False), self.A.astype(dtype, copy=False)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter as read from disk or an upload.

    Attributes
    ----------
    format : str
        One of :data:`FORMATS`.
    modules : list of LoraModule
        In key order of the file.
    scaling : str
        One sentence saying where the scales came from (or which scale was assumed).
    source : str
        File or folder name(s) it was read from.
    config : dict or None
        ``adapter_config.json`` as read (PEFT, mlx-lm), else None.
    ignored : list of str
        Tensor names that are not LoRA factors (biases, ``modules_to_save``, metadata).
    """

    format: str
    modules: list[LoraModule]
    scaling: str
    source: str = ""
    config: dict | None = None
    ignored: list[str] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        """Parameters in all factors."""
        return sum(m.num_params for m in self.modules)

    @property
    def dtypes(self) -> list[str]:
        """Stored dtypes, in order of first appearance."""
        return list(dict.fromkeys(m.dtype for m in self.modules))

    @property
    def ranks(self) -> list[int]:
        """Distinct ranks, ascending."""
        return sorted({m.rank for m in self.modules})

    def module(self, name: str) -> LoraModule:
        """The module called ``name``; raises ConfigError listing a few names otherwise."""
        for m in self.modules:
            if m.name == name:
                return m
        few = ", ".join(m.name for m in self.modules[:3])
        raise ConfigError(f"no module named {name!r} in {self.source or 'the adapter'} (e.g. {few})")

    def describe(self) -> dict:
        """What was detected, JSON-friendly: format, source, scaling, dtypes, ranks, counts."""
        scales = sorted({round(m.scale, 12) for m in self.modules})
        return {
            "format": self.format,
            "source": self.source,
            "scaling": self.scaling,
            "orientation": _orientation_note(self),
            "dtypes": self.dtypes,
            "ranks": self.ranks,
            "scales": scales,
            "modules": len(self.modules),
            "params": self.num_params,
            "ignored_tensors": len(self.ignored),
        }


def _orientation_note(adapter: Adapter) -> str:
    notes = {
        "mlx": "lora_a (in, r) and lora_b (r, out) transposed to A (r, in), B (out, r)",
        "kohya": "lora_down is A (r, in), lora_up is B (out, r); conv kernels flattened",
        "diffusers": "down is A (r, in), up is B (out, r)",
    }
    note = notes.get(adapter.format, "A (r, in), B (out, r) as stored")
    if any(m.transposed for m in adapter.modules):
        note += "; dW = (scale * B @ A)^T for fan_in_fan_out / embedding modules"
    return note


# ------------------------------------------------------------------------------ tensor sources
class _Tensors:
    """Uniform read access to the named tensors of one file (lazy where the format allows)."""

    def __init__(self, source: str, entries: dict[str, tuple[str, tuple[int, ...]]],
                 getter: Callable[[str], np.ndarray]):
        self.source = source
        self.entries = entries  # name -> (safetensors dtype name, shape)
        self._get = getter

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str, *, scalar: bool = False) -> np.ndarray:
        dtype_name, shape = self.entries[key]
        if dtype_name not in _FLOAT_DTYPES and not (scalar and dtype_name in _INT_DTYPES):
            raise AdapterError(
                f"{self.source}: tensor {key!r} has dtype {_readable_dtype(dtype_name)}; LoRA "
                "factors must be float64, float32, float16 or bfloat16"
            )
        arr = self._get(key)
        if arr.shape != tuple(shape):  # pragma: no cover - guarded by the libraries
            raise AdapterError(f"{self.source}: tensor {key!r} has inconsistent shape {arr.shape}")
        return arr


def _readable_dtype(name: str) -> str:
    for table in (_FLOAT_DTYPES, _INT_DTYPES):
        if name in table:
            return f"{table[name].name} ({name})"
    return name


def _safetensors_error(source: str, exc: Exception) -> AdapterError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return AdapterError(f"{source} is not a valid safetensors file ({detail})")


def _safetensors_from_path(path: Path) -> _Tensors:
    import safetensors

    source = path.name
    if path.stat().st_size < 8:
        raise AdapterError(f"{source} is not a valid safetensors file (only {path.stat().st_size} bytes)")
    try:
        handle = safetensors.safe_open(str(path), framework="numpy")
        entries = {}
        for key in handle.keys():
            sl = handle.get_slice(key)
            entries[key] = (sl.get_dtype(), tuple(int(d) for d in sl.get_shape()))
    except Exception as exc:  # SafetensorError and friends: the file is not valid
        raise _safetensors_error(source, exc) from exc

    def get(key: str) -> np.ndarray:
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            raise _safetensors_error(source, exc) from exc

    return _Tensors(source, entries, get)


def _safetensors_from_bytes(source: str, data: bytes) -> _Tensors:
    import safetensors

    if len(data) < 8:
        raise AdapterError(f"{source} is not a valid safetensors file (only {len(data)} bytes)")
    try:
        flat = safetensors.deserialize(bytes(data) if not isinstance(data, bytes) else data)
    except Exception as exc:
        raise _safetensors_error(source, exc) from exc
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    raw: dict[str, object] = {}
    for key, view in flat:
        entries[key] = (view["dtype"], tuple(int(d) for d in view["shape"]))
        raw[key] = view["data"]

    def get(key: str) -> np.ndarray:
        dtype_name, shape = entries[key]
        dtype = _FLOAT_DTYPES.get(dtype_name) or _INT_DTYPES[dtype_name]
        return np.frombuffer(raw[key], dtype=dtype).reshape(shape)

    return _Tensors(source, entries, get)


# What a damaged zip archive or .npy member can raise while being read: bad headers and CRCs,
# truncated or corrupt deflate streams, unknown compression methods, missing members.
_ZIP_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error,
               NotImplementedError, KeyError, struct.error)


def _npz_tensors(source: str, fileobj, size: int) -> _Tensors:
    """Check the zip directory and every member's .npy header, then read with np.load."""
    # 1. It must be a zip archive at all (a text file renamed .npz is not).
    head = fileobj.read(4)
    fileobj.seek(0)
    if head[:2] != b"PK":
        raise AdapterError(f"{source} is not an .npz archive (it does not start with a zip signature)")
    try:
        archive = zipfile.ZipFile(fileobj)
        infos = archive.infolist()
    except _ZIP_ERRORS as exc:
        raise AdapterError(f"{source} is not a valid .npz archive ({exc})") from exc
    # 2. Declared unpacked sizes bound the memory before anything is inflated.
    declared = sum(info.file_size for info in infos)
    limit = MAX_NPZ_EXPANSION * size + _NPZ_SLACK
    if declared > limit:
        raise AdapterError(
            f"{source} would unpack to {declared / 2**20:,.0f} MiB from {size / 2**20:,.1f} MiB "
            f"(more than {MAX_NPZ_EXPANSION}x its size plus 64 MiB); refusing a possible zip bomb"
        )
    # 3. Each member: a .npy header with a float dtype whose byte count matches the member.
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise AdapterError(f"{source}: member {info.filename!r} is not a .npy array")
        key = info.filename[:-4]
        try:
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                header_len = member.tell() if member.seekable() else None
        except _ZIP_ERRORS as exc:
            raise AdapterError(f"{source}: member {info.filename!r} is not a valid .npy array ({exc})") from exc
        if dtype.hasobject:
            raise AdapterError(
                f"{source}: array {key!r} holds pickled Python objects, which lorarank does not load"
            )
        name = _DTYPE_NAMES.get(dtype.newbyteorder("=")) if dtype.kind in "fiu" else None
        if name is None:
            raise AdapterError(f"{source}: array {key!r} has dtype {dtype}; LoRA factors must be "
                               "float64, float32, float16 or bfloat16")
        nbytes = math.prod(shape) * dtype.itemsize
        if header_len is not None and info.file_size != header_len + nbytes:
            raise AdapterError(
                f"{source}: array {key!r} declares shape {tuple(shape)} ({nbytes} bytes) but its "
                f"member holds {info.file_size - header_len} bytes of data"
            )
        entries[key] = (name, tuple(int(d) for d in shape))
    fileobj.seek(0)  # zipfile left the position at the end; np.load reads the magic from here
    try:
        npz = np.load(fileobj, allow_pickle=False)
    except _ZIP_ERRORS as exc:
        raise AdapterError(f"{source} is not a valid .npz archive ({exc})") from exc

    def get(key: str) -> np.ndarray:
        try:
            arr = npz[key]
        except _ZIP_ERRORS as exc:
            raise AdapterError(f"{source}: array {key!r} cannot be read ({exc})") from exc
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    return _Tensors(source, entries, get)


# ---------------------------------------------------------------------------------- public read
def load_adapter(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                 alpha: float | None = None, scale: float | None = None) -> Adapter:
    """Read an adapter from a file (``.safetensors``, ``.npz``) or a PEFT / mlx-lm folder.

    Parameters
    ----------
    path : str or PathLike
        A weights file, or a folder holding one weights file (``adapter_model.safetensors``,
        ``adapters.safetensors``, ...) and optionally ``adapter_config.json``. A file with an
        ``adapter_config.json`` beside it uses that config.
    config : str or PathLike, optional
        An ``adapter_config.json`` elsewhere (overrides the one beside the weights).
    alpha : float, optional
        Override alpha for every module (scale = alpha / r, or alpha / sqrt(r) with
        ``use_rslora``): for files without a config or alpha keys.
    scale : float, optional
        Override the scale of every module directly (e.g. an mlx-lm adapter without config).

    Returns
    -------
    Adapter

    Raises
    ------
    AdapterError
        Unreadable, corrupt, unsafe or inconsistent files, with one sentence naming the problem.
    UnsupportedAdapterError
        LoHa, LoKr or DoRA adapters.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    config_path: Path | None = None
    if path.is_dir():
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".npz") and p.is_file())
        if not weights:
            raise AdapterError(f"folder {path} holds no .safetensors or .npz weights file")
        preferred = [p for p in weights if p.name in ("adapter_model.safetensors", "adapters.safetensors")]
        if len(preferred) == 1:
            weights = preferred
        if len(weights) > 1:
            names = ", ".join(p.name for p in weights)
            raise AdapterError(f"folder {path} holds several weights files ({names}); pass one of them")
        weights_path = weights[0]
        if (path / "adapter_config.json").is_file():
            config_path = path / "adapter_config.json"
        source = path.name
    else:
        weights_path = path
        if (path.parent / "adapter_config.json").is_file():
            config_path = path.parent / "adapter_config.json"
        source = path.name
    if config is not None:
        config_path = Path(config)
        source = f"{source} + {config_path.name}"
    config = _parse_config(config_path.name, config_path.read_bytes()) if config_path else None
    with open(weights_path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK" or weights_path.suffix == ".npz":
        with open(weights_path, "rb") as fh:
            tensors = _npz_tensors(weights_path.name, fh, weights_path.stat().st_size)
            return _build(tensors, config, source, alpha=alpha, scale=scale)
    tensors = _safetensors_from_path(weights_path)
    return _build(tensors, config, source, alpha=alpha, scale=scale)


def load_adapter_bytes(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]], *,
                       alpha: float | None = None, scale: float | None = None) -> Adapter:
    """Read an adapter from uploaded files, without touching the disk.

    Parameters
    ----------
    files : mapping or iterable of (name, bytes)
        One weights file (``.safetensors`` or ``.npz``; recognised by content) and optionally
        ``adapter_config.json`` (any name ending in ``.json``), as ``st.file_uploader`` gives them.
    alpha, scale : float, optional
        As in :func:`load_adapter`.

    Returns
    -------
    Adapter
    """
    items = list(files.items()) if isinstance(files, Mapping) else list(files)
    configs = [(n, b) for n, b in items if str(n).lower().endswith(".json")]
    weights = [(n, b) for n, b in items if not str(n).lower().endswith(".json")]
    if not weights:
        raise AdapterError("no weights file given (expected a .safetensors or .npz file)")
    if len(weights) > 1:
        raise AdapterError(f"several weights files given ({', '.join(n for n, _ in weights)}); give one")
    if len(configs) > 1:
        raise AdapterError(f"several config files given ({', '.join(n for n, _ in configs)}); give one")
    config = _parse_config(*configs[0]) if configs else None
    name, data = weights[0]
    data = bytes(data) if not isinstance(data, bytes) else data
    if data[:2] == b"PK" or str(name).lower().endswith(".npz"):
        tensors = _npz_tensors(name, io.BytesIO(data), len(data))
    else:
        tensors = _safetensors_from_bytes(name, data)
    source = name if not configs else f"{name} + {configs[0][0]}"
    return _build(tensors, config, source, alpha=alpha, scale=scale)


def _parse_config(name: str, data: bytes) -> dict:
    if len(data) > 16 * 2**20:
        raise AdapterError(f"{name} is {len(data) / 2**20:.0f} MiB; an adapter config is a small JSON file")
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{name} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{name} should hold a JSON object, got {type(config).__name__}")
    return config


# --------------------------------------------------------------------------- scaling (PEFT etc.)
def peft_pattern_key(patterns: Iterable[str], module: str) -> str | None:
    """The first key of ``patterns`` that PEFT would apply to ``module``, or None.

    PEFT (``peft.utils.other.get_pattern_key``) tries the keys of ``rank_pattern`` /
    ``alpha_pattern`` in insertion order and takes the first ``key`` for which
    ``re.match(rf"(.*\\.)?({key})$", module)`` matches, where ``module`` is the name inside the
    base model (``model.layers.0.self_attn.q_proj``, without PEFT's ``base_model.model.``).
    A key is therefore a regular expression matched against a dotted suffix of the name.
    """
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as exc:
            raise AdapterError(f"adapter_config.json pattern {key!r} is not a valid regular expression ({exc})") from exc
    return None


def _number(config_name: str, field_name: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError(f"{config_name}: `{field_name}` should be a number, got {value!r}")
    if positive and value <= 0:
        raise AdapterError(f"{config_name}: `{field_name}` should be positive, got {value!r}")
    return float(value)


def _check_override(alpha: float | None, scale: float | None) -> tuple[float | None, float | None]:
    if alpha is not None and scale is not None:
        raise ConfigError("give `alpha` or `scale`, not both")
    if alpha is not None:
        alpha = check_real("alpha", alpha, minimum=0.0, strict_minimum=True)
    if scale is not None:
        scale = check_real("scale", scale)
    return alpha, scale


# -------------------------------------------------------------------------------- assembly
def _build(tensors: _Tensors, config: dict | None, source: str, *, alpha: float | None,
           scale: float | None) -> Adapter:
    alpha, scale = _check_override(alpha, scale)
    keys = tensors.keys()
    # 1. Refuse what we recognise but cannot audit, before reading any data.
    for key in keys:
        for pattern, kind in _UNSUPPORTED:
            if pattern.search(key):
                raise UnsupportedAdapterError(
                    f"{source} is a {kind} adapter (tensor {key!r}); lorarank audits plain LoRA only"
                )
    if config is not None:
        peft_type = str(config.get("peft_type", "LORA")).upper()
        if peft_type in ("LOHA", "LOKR"):
            kind = {"LOHA": "LoHa", "LOKR": "LoKr"}[peft_type]
            raise UnsupportedAdapterError(f"{source} is a {kind} adapter (peft_type {peft_type}); "
                                          "lorarank audits plain LoRA only")
        if config.get("use_dora"):
            raise UnsupportedAdapterError(f"{source} is a DoRA adapter (use_dora is true); "
                                          "lorarank audits plain LoRA only")
    # 2. Classify keys by their suffix family.
    found: dict[str, dict[str, dict[str, str]]] = {}   # format -> module -> {"A"/"B": key}
    layouts: dict[str, str] = {}
    alpha_keys: dict[str, str] = {}
    ignored: list[str] = []
    for key in keys:
        if key == "A" or key == "B":
            found.setdefault("npz", {}).setdefault("", {})[key] = key
            layouts[""] = "ab"
            continue
        for fmt, a_suffix, b_suffix, layout in _FAMILIES:
            hit = "A" if key.endswith(a_suffix) else "B" if key.endswith(b_suffix) else None
            if hit:
                name = key[: -len(a_suffix if hit == "A" else b_suffix)]
                found.setdefault(fmt, {}).setdefault(name, {})[hit] = key
                layouts[name] = layout
                break
        else:
            if key == "alpha" or key.endswith(".alpha"):
                alpha_keys[key[: -len(".alpha")] if key != "alpha" else ""] = key
            else:
                ignored.append(key)
    if not found:
        few = ", ".join(repr(k) for k in keys[:3]) or "none"
        raise AdapterError(
            f"{source} holds no LoRA factors (tensors: {few}); expected keys like "
            "'<module>.lora_A.weight' / '.lora_B.weight', '.lora_down.weight' / '.lora_up.weight', "
            "'.lora_a' / '.lora_b' or 'A' / 'B'"
        )
    if len(found) > 1:
        raise AdapterError(f"{source} mixes the key conventions of {' and '.join(sorted(found))}")
    fmt, named = next(iter(found.items()))
    # 3. Pair factors, read them, fix orientation and compute each module's scale.
    rslora = bool(config.get("use_rslora", False)) if (config and fmt == "peft") else False
    modules: list[LoraModule] = []
    for name, pair in named.items():
        if "A" not in pair or "B" not in pair:
            have, missing = ("A", "B") if "A" in pair else ("B", "A")
            raise AdapterError(f"{source}: tensor {pair[have]!r} has no partner {missing} factor "
                               f"for module {name or '(unnamed)'!r}")
        modules.append(_read_module(tensors, name, pair["A"], pair["B"], layouts[name], source))
    scaled, note = _apply_scales(fmt, modules, tensors, alpha_keys, config, source,
                                 alpha=alpha, scale=scale, rslora=rslora)
    uses_alpha = fmt in ("kohya", "diffusers", "npz") and alpha is None and scale is None
    used_alpha = {k for n, k in alpha_keys.items() if uses_alpha and (n in named or (n == "" and fmt == "npz"))}
    ignored += [k for k in alpha_keys.values() if k not in used_alpha]
    scaled.sort(key=lambda m: _natural_key(m.name))
    return Adapter(format=fmt, modules=scaled, scaling=note, source=source,
                   config=config if fmt in ("peft", "mlx") else None, ignored=ignored)


_EXPONENT_MASKS = {np.dtype(ml_dtypes.bfloat16): 0x7F80, np.dtype(np.float16): 0x7C00}


def _all_finite(arr: np.ndarray) -> bool:
    """``np.isfinite(arr).all()``; for 16-bit floats on the bits (exponent all ones = inf/NaN)."""
    mask = _EXPONENT_MASKS.get(arr.dtype)
    if mask is None:
        return bool(np.isfinite(arr).all())
    bits = np.ascontiguousarray(arr).view(np.uint16)
    return not bool(np.any((bits & mask) == mask))


def _natural_key(name: str) -> list:
    """Sort key putting ``layers.2`` before ``layers.10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _read_module(tensors: _Tensors, name: str, key_a: str, key_b: str, layout: str,
                 source: str) -> LoraModule:
    a = tensors.get(key_a)
    b = tensors.get(key_b)
    label = name or "(unnamed)"
    for key, arr in ((key_a, a), (key_b, b)):
        if arr.ndim < 2:
            raise AdapterError(f"{source}: tensor {key!r} is {arr.ndim}-D with shape {arr.shape}; "
                               "LoRA factors are matrices")
        if arr.size == 0:
            raise AdapterError(f"{source}: tensor {key!r} is empty (shape {arr.shape})")
        if not _all_finite(arr):
            raise AdapterError(f"{source}: tensor {key!r} contains NaN or infinite values")
    kernel = None
    transposed = layout == "ab_t"
    if layout == "mlx":
        if a.ndim != 2 or b.ndim != 2:
            raise AdapterError(f"{source}: mlx factors of {label!r} should be 2-D, got {a.shape} and {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise AdapterError(f"{source}: factors of {label!r} do not chain: {key_a} has shape "
                               f"{a.shape} (r = {a.shape[1]}) but {key_b} has shape {b.shape} (r = {b.shape[0]})")
        return LoraModule(name, a.T, b.T, 1.0)
    if a.ndim > 2:
        kernel = tuple(int(d) for d in a.shape[1:])
        a = a.reshape(a.shape[0], -1)
    if b.ndim > 2:
        if any(d != 1 for d in b.shape[2:]):
            raise AdapterError(f"{source}: tensor {key_b!r} has shape {b.shape}; an up factor's kernel "
                               "must be 1 x 1")
        b = b.reshape(b.shape[0], b.shape[1])
    if a.shape[0] != b.shape[1]:
        raise AdapterError(f"{source}: factors of {label!r} do not chain: {key_a} has shape "
                           f"{a.shape} (r = {a.shape[0]}) but {key_b} has shape {b.shape} (r = {b.shape[1]})")
    return LoraModule(name, a, b, 1.0, transposed=transposed, kernel=kernel)


def _scalar(tensors: _Tensors, key: str, source: str) -> float:
    arr = tensors.get(key, scalar=True)
    if arr.size != 1:
        raise AdapterError(f"{source}: {key!r} should be a single number, got shape {arr.shape}")
    value = float(np.asarray(arr, dtype=np.float64).reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise AdapterError(f"{source}: {key!r} should be a positive number, got {value}")
    return value


def _apply_scales(fmt, modules, tensors, alpha_keys, config, source, *, alpha, scale, rslora):
    def rule(a: float, r: int) -> float:
        return a / math.sqrt(r) if rslora else a / r

    if scale is not None:
        return [replace(m, scale=scale, alpha=None) for m in modules], \
            f"scale {scale:g} for every module, as given by the user"
    if alpha is not None:
        formula = "alpha / sqrt(r)" if rslora else "alpha / r"
        return [replace(m, scale=rule(alpha, m.rank), alpha=alpha) for m in modules], \
            f"alpha {alpha:g} given by the user, scale = {formula} per module"
    if fmt == "peft":
        if config is None:
            return [replace(m, scale=1.0) for m in modules], \
                "no adapter_config.json: scale 1 assumed for every module (give alpha to set it)"
        return _peft_scales(modules, config, source, rslora)
    if fmt == "mlx":
        params = (config or {}).get("lora_parameters")
        if isinstance(params, dict) and "scale" in params:
            s = _number("adapter_config.json", "lora_parameters.scale", params["scale"], positive=False)
            return [replace(m, scale=s) for m in modules], \
                f"mlx-lm lora_parameters.scale = {s:g} from adapter_config.json"
        return [replace(m, scale=1.0) for m in modules], \
            "no adapter_config.json with lora_parameters.scale: scale 1 assumed (give scale to set it)"
    # kohya, diffusers, npz: alpha keys (npz also a global `alpha`).
    out, with_alpha = [], 0
    for m in modules:
        key = alpha_keys.get(m.name) or (alpha_keys.get("") if fmt == "npz" else None)
        if key is not None:
            a = _scalar(tensors, key, source)
            out.append(replace(m, scale=a / m.rank, alpha=a))
            with_alpha += 1
        else:
            out.append(replace(m, scale=1.0))
    if with_alpha == len(out):
        note = "alpha / r from the file's alpha entries"
    elif with_alpha == 0:
        note = "no alpha entries in the file: scale 1 for every module (give alpha to set it)"
    else:
        note = (f"alpha / r for the {with_alpha} modules with an alpha entry, scale 1 for the "
                f"{len(out) - with_alpha} without")
    return out, note


def _peft_scales(modules, config, source, rslora):
    name = "adapter_config.json"
    r_default = config.get("r", 8)
    if isinstance(r_default, bool) or not isinstance(r_default, int) or r_default < 1:
        raise AdapterError(f"{name}: `r` should be a positive integer, got {r_default!r}")
    alpha_default = _number(name, "lora_alpha", config.get("lora_alpha", 8))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    for field_name, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        if not isinstance(pattern, dict):
            raise AdapterError(f"{name}: `{field_name}` should be an object, got {pattern!r}")
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    out = []
    for m in modules:
        inner = m.name[len(_PEFT_PREFIX):] if m.name.startswith(_PEFT_PREFIX) else m.name
        r_key = peft_pattern_key(rank_pattern, inner)
        a_key = peft_pattern_key(alpha_pattern, inner)
        r = rank_pattern[r_key] if r_key is not None else r_default
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise AdapterError(f"{name}: rank_pattern[{r_key!r}] should be a positive integer, got {r!r}")
        a = _number(name, f"alpha_pattern[{a_key!r}]", alpha_pattern[a_key]) if a_key is not None else alpha_default
        if r != m.rank:
            where = f"rank_pattern[{r_key!r}]" if r_key is not None else "`r`"
            raise AdapterError(f"{source}: module {m.name!r} has rank {m.rank} in the weights but "
                               f"{name} gives {where} = {r}")
        s = a / math.sqrt(r) if rslora else a / r
        out.append(replace(m, scale=s, alpha=a, transposed=m.transposed or fan_in_fan_out))
    formula = "lora_alpha / sqrt(r) (use_rslora)" if rslora else "lora_alpha / r"
    extra = []
    if rank_pattern:
        extra.append("rank_pattern")
    if alpha_pattern:
        extra.append("alpha_pattern")
    note = f"PEFT adapter_config.json: scale = {formula}"
    if extra:
        note += " with per-module " + " and ".join(extra)
    if fan_in_fan_out:
        note += "; fan_in_fan_out transposes dW"
    return out, note


# ---------------------------------------------------------------------------------- module names
_LAYER = re.compile(r"(?:^|[._])(\d+)(?=[._]|$)")


def parse_module_name(name: str) -> tuple[int | None, str]:
    """``(layer, module_type)`` of a module path, for the rank map.

    The layer is the first integer component (``model.layers.7.mlp.up_proj`` -> 7, kohya
    ``lora_te_text_model_encoder_layers_3_mlp_fc1`` -> 3); the type is the last dotted
    component (``up_proj``) or, for underscore-only names, what follows the layer (``mlp_fc1``).
    """
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    if "." in name:
        kind = name.rsplit(".", 1)[-1]
    elif match:
        kind = name[match.end():].lstrip("._") or name
    else:
        kind = name
    return layer, kind or "(unnamed)"


# ---------------------------------------------------------------------------------- writers
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
        name = m.name if adapter.format == "peft" else _PEFT_PREFIX + m.name
        embedding = m.transposed and not config.get("fan_in_fan_out", False)
        a_key, b_key = (".lora_embedding_A", ".lora_embedding_B") if embedding else (".lora_A.weight", ".lora_B.weight")
        a = m.A.reshape((m.rank,) + m.kernel) if m.kernel else m.A
        b = m.B.reshape(m.B.shape + (1,) * (len(m.kernel) - 1)) if m.kernel else m.B
        tensors[name + a_key] = _cast(a, dtype)
        tensors[name + b_key] = _cast(b, dtype)
        inner = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
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
