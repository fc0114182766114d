"""GGUF LoRA adapters as llama.cpp writes them (``convert_lora_to_gguf.py``), via the ``gguf`` package.

A LoRA GGUF has ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and
tensors ``blk.N.<name>.weight.lora_a`` (r, in) / ``.lora_b`` (out, r) in numpy order; llama.cpp
applies ``scale = alpha / r`` (r = the inner dimension), or 1 without alpha. Quantised tensors
are dequantised with ``gguf.quants.dequantize``. The converter permutes the rows of the q / k
``lora_b`` (per attention head), which leaves the singular values unchanged but means the rows
are in llama.cpp's order, not the original model's: such adapters are audited, not written back.
For llama-family architectures the tensor names are mapped back to the model's module names
(``blk.0.attn_q`` -> ``model.layers.0.self_attn.q_proj``); other architectures keep GGUF names.

The ``gguf`` package (maintained with llama.cpp) is imported only when a GGUF file is read.
Uploads are given to its reader through an anonymous in-memory file (``memfd``), never a disk file.

Before the reader sees a file, :func:`_scan` walks its header within bounds (issue 23): every
declared count, length, shape and offset against the bytes present; at most
:data:`MAX_GGUF_KV` keys, :data:`MAX_GGUF_ARRAY_ITEMS` metadata array items in an adapter,
tensor names shorter than 64 bytes and at most 4 dimensions (llama.cpp's own limits), and
quantised tensors that dequantise to at most :data:`MAX_GGUF_DEQUANT_BYTES` of float32 in all
(TQ1_0 expands about 19x), dequantised block by block.
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import AdapterError, UnsupportedAdapterError
from ._model import Adapter, LoraModule
from ._scales import check_scale
from ..bounded import clip
from ._tensors import MAX_TENSORS, all_finite
from .names import natural_key

__all__ = ["GGUF_MAGIC", "load_gguf_path", "load_gguf_bytes", "LLAMA_NAMES"]

GGUF_MAGIC = b"GGUF"

#: GGUF block tensor name -> module path inside a llama-family model (transformers naming).
LLAMA_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output": "lm_head"}
_LLAMA_ARCHS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite", "olmo", "olmo2"}
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)$")


def _module_name(arch: str, gguf_name: str) -> str:
    if arch not in _LLAMA_ARCHS:
        return gguf_name
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in LLAMA_NAMES:
        return f"model.layers.{m.group(1)}.{LLAMA_NAMES[m.group(2)]}"
    return _LLAMA_TOP.get(gguf_name, gguf_name)


# --------------------------------------------------------------------------------------------
# A bounded walk of the header, before gguf's reader sees the file
# --------------------------------------------------------------------------------------------
# gguf.GGUFReader loops in Python over every metadata array item (one numpy view per item) and
# never compares a declared count or length with the bytes present: a 53-byte file declaring a
# 2^40-item array kept it looping for minutes. The walk below checks every declared count,
# length, shape and offset against the bytes actually present and against the limits here
# (llama.cpp's own where it has them), in time proportional to the header, before the reader
# runs.

#: Most metadata keys (key-value pairs) read.
MAX_GGUF_KV = 10_000
#: Most items in all the metadata arrays of an adapter (a LoRA adapter has a handful).
MAX_GGUF_ARRAY_ITEMS = 100_000
#: Most array items walked to find ``general.type`` in another GGUF (a model's vocabulary).
_MAX_WALKED_ITEMS = 1_000_000
#: Longest metadata key, in bytes.
MAX_GGUF_KEY_BYTES = 4096
#: llama.cpp's GGML_MAX_NAME (64, with the terminating zero) and GGML_MAX_DIMS.
GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
#: Largest float32 size quantised tensors may dequantise to, in all (TQ1_0 expands ~19x).
MAX_GGUF_DEQUANT_BYTES = 512 * 2**20

_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Walk:
    """A cursor over the file's bytes that refuses to read past their end."""

    def __init__(self, source: str, data: memoryview, order: str) -> None:
        self.source, self.data, self.order, self.at = source, data, order, 0
        self.length = 0  # of the last string

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.at + n > len(self.data):
            raise AdapterError(f"{self.source} is not a valid GGUF file ({what} declares {n:,} bytes "
                               f"at offset {self.at:,}; the file has {len(self.data):,})")

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.at)
        self.at += size
        return int(value)

    def string(self, what: str, limit: int | None = None, *, keep: int = 0) -> bytes:
        """Skip a string; return its first ``keep`` bytes (copied: no view of the file escapes)."""
        n = self.unpack("Q", what)
        if limit is not None and n > limit:
            raise AdapterError(f"{self.source}: a GGUF {what} is {n:,} bytes long; lorarank reads "
                               f"{what}s up to {limit:,} bytes")
        self.need(n, what)
        out = bytes(self.data[self.at:self.at + min(n, keep)]) if keep else b""
        self.at += n
        self.length = n
        return out


def _scan(source: str, data: memoryview) -> None:
    """Check a GGUF file's header within bounds; AdapterError (one sentence) if it is not sane.

    Checks every key, value, array, tensor name, shape, type and offset against the bytes
    present and the limits above; a file that is not a LoRA adapter (``general.type`` other
    than ``adapter``) is named as such as soon as that key is read.
    """
    import gguf

    if len(data) < 24:
        raise AdapterError(f"{source} is not a valid GGUF file (only {len(data)} bytes)")
    version = struct.unpack_from("<I", data, 4)[0]
    order = ">" if version & 0xFFFF == 0 else "<"
    walk = _Walk(source, data, order)
    walk.at = 8
    n_tensors, n_kv = walk.unpack("Q", "the tensor count"), walk.unpack("Q", "the key count")
    if n_tensors > MAX_TENSORS:
        raise AdapterError(f"{source} declares {n_tensors:,} tensors; lorarank reads at most {MAX_TENSORS:,}")
    if n_kv > MAX_GGUF_KV:
        raise AdapterError(f"{source} declares {n_kv:,} metadata keys; lorarank reads at most {MAX_GGUF_KV:,}")
    items, kind, alignment = 0, None, 32
    for _ in range(n_kv):
        key = walk.string("metadata key", MAX_GGUF_KEY_BYTES, keep=MAX_GGUF_KEY_BYTES)
        vtype = walk.unpack("I", "a value type")
        if vtype == _ARRAY:
            itype, count = walk.unpack("I", "an array type"), walk.unpack("Q", "an array length")
            items += count
            if itype == _ARRAY:
                raise AdapterError(f"{source}: GGUF metadata {_key(key)} is an array of arrays, which "
                                   "llama.cpp does not read")
            if items > _MAX_WALKED_ITEMS or (kind == "adapter" and items > MAX_GGUF_ARRAY_ITEMS):
                raise AdapterError(f"{source}: GGUF metadata arrays declare {items:,} items; lorarank reads "
                                   f"at most {MAX_GGUF_ARRAY_ITEMS:,} in an adapter")
            if itype == _STRING:
                walk.need(8 * count, f"array {_key(key)}")  # each string has at least its length
                for _ in range(count):
                    walk.string("string")
            elif itype in _SCALARS:
                walk.need(_SCALARS[itype] * count, f"array {_key(key)}")
                walk.at += _SCALARS[itype] * count
            else:
                raise AdapterError(f"{source}: GGUF metadata {_key(key)} has unknown item type {itype}")
        elif vtype == _STRING:
            value = walk.string(f"value of {_key(key)}", keep=64)
            if key == b"general.type":
                kind = value.decode("utf-8", "replace")
                if kind != "adapter":
                    raise AdapterError(f"{source} is a GGUF model, not a LoRA adapter (general.type is "
                                       f"{clip(kind, 40)!r}, not 'adapter')")
        elif vtype in _SCALARS:
            if key == b"general.alignment" and vtype == _UINT32:
                alignment = walk.unpack("I", "general.alignment")
            else:
                walk.need(_SCALARS[vtype], f"value of {_key(key)}")
                walk.at += _SCALARS[vtype]
        else:
            raise AdapterError(f"{source}: GGUF metadata {_key(key)} has unknown value type {vtype}")
    if kind != "adapter":
        raise AdapterError(f"{source} is a GGUF model, not a LoRA adapter (general.type is "
                           f"{kind!r}, not 'adapter')")
    if items > MAX_GGUF_ARRAY_ITEMS:
        raise AdapterError(f"{source}: GGUF metadata arrays declare {items:,} items; lorarank reads "
                           f"at most {MAX_GGUF_ARRAY_ITEMS:,} in an adapter")
    if alignment <= 0 or alignment & (alignment - 1) or alignment > 2**20:
        raise AdapterError(f"{source}: general.alignment {alignment} is not a power of two up to 1 MiB")
    infos = []
    for _ in range(n_tensors):
        name = walk.string("tensor name", keep=GGML_MAX_NAME)
        if walk.length >= GGML_MAX_NAME:
            raise AdapterError(f"{source}: a tensor name is {walk.length:,} bytes long; llama.cpp reads "
                               f"names shorter than {GGML_MAX_NAME}")
        n_dims = walk.unpack("I", "a dimension count")
        if n_dims > GGML_MAX_DIMS:
            raise AdapterError(f"{source}: tensor {_key(name)} has {n_dims:,} dimensions; llama.cpp "
                               f"reads at most {GGML_MAX_DIMS}")
        dims = [walk.unpack("Q", "a dimension") for _ in range(n_dims)]
        qtype, offset = walk.unpack("I", "a tensor type"), walk.unpack("Q", "a tensor offset")
        infos.append((name, dims, qtype, offset))
    start = -(-walk.at // alignment) * alignment
    dequantised = 0
    for name, dims, qtype, offset in infos:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise AdapterError(f"{source}: tensor {_key(name)} has unknown GGML type {qtype}") from None
        elements = math.prod(dims)
        if dims and dims[0] % block:
            raise AdapterError(f"{source}: tensor {_key(name)} has rows of {dims[0]:,} values, not a "
                               f"multiple of its type's block of {block}")
        nbytes = elements // block * type_size
        if offset % alignment or start + offset + nbytes > len(data):
            raise AdapterError(f"{source} is not a valid GGUF file (tensor {_key(name)} declares "
                               f"{nbytes:,} bytes at offset {offset:,}; the file has {len(data):,})")
        if qtype not in (0, 1):  # F32, F16 are read as they are; the others are dequantised
            dequantised += 4 * elements
    if dequantised > MAX_GGUF_DEQUANT_BYTES:
        raise AdapterError(f"{source}: its quantised tensors would dequantise to {dequantised / 2**20:,.0f} "
                           f"MiB of float32; lorarank dequantises GGUF adapters up to "
                           f"{MAX_GGUF_DEQUANT_BYTES // 2**20} MiB")


def _key(raw: bytes) -> str:
    return repr(clip(raw.decode("utf-8", "replace"), 80))


def _dequantize(gguf, data: np.ndarray, qtype, shape: tuple[int, ...]) -> np.ndarray:
    """``gguf.quants.dequantize`` row block by row block into one float32 array of ``shape``:
    its own pass holds every block's output twice over (a list, then the concatenation), and
    TQ1_0's intermediates are several times the output."""
    rows = data.reshape(-1, data.shape[-1])
    out = np.empty((rows.shape[0], shape[-1]), dtype=np.float32)
    step = max(1, (4 * 2**20) // max(1, 4 * shape[-1]))  # ~4 MiB of float32 per block
    for at in range(0, rows.shape[0], step):
        out[at:at + step] = gguf.quants.dequantize(rows[at:at + step], qtype).reshape(-1, shape[-1])
    return out.reshape(shape)


def _reader(source: str, path: str):
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise UnsupportedAdapterError(f"{source} is a GGUF file; reading it needs the `gguf` package") from exc
    try:
        return gguf, gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError on bad files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdapterError(f"{source} is not a valid GGUF file ({detail})") from exc


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # pragma: no cover - odd array types
        return None


def _read(source: str, path: str, *, alpha: float | None, scale: float | None) -> Adapter:
    gguf, reader = _reader(source, path)
    meta = {}
    for key in reader.fields:
        if key.startswith(("general.", "adapter.")):
            value = _field(reader, key)
            if isinstance(value, (str, int, float, bool)):
                meta[key] = value[:200] if isinstance(value, str) else value
    if meta.get("general.type") != "adapter":
        raise AdapterError(f"{source} is a GGUF model, not a LoRA adapter (general.type is "
                           f"{meta.get('general.type')!r}, not 'adapter')")
    if meta.get("adapter.type", "lora") != "lora":
        raise UnsupportedAdapterError(f"{source} is a GGUF {meta.get('adapter.type')!r} adapter; lorarank reads "
                                      "GGUF LoRA adapters only")
    arch = str(meta.get("general.architecture", ""))
    pairs: dict[str, dict[str, object]] = {}
    ignored: list[str] = []
    for t in reader.tensors:
        for suffix, role in ((".lora_a", "A"), (".lora_b", "B")):
            if t.name.endswith(suffix):
                base = t.name[: -len(suffix)]
                base = base[: -len(".weight")] if base.endswith(".weight") else base
                pairs.setdefault(base, {})[role] = t
                break
        else:
            ignored.append(t.name)
    if not pairs:
        raise AdapterError(f"{source} is a GGUF adapter without lora_a / lora_b tensors")
    file_alpha = meta.get("adapter.lora.alpha")
    modules: list[LoraModule] = []
    quantised: set[str] = set()
    for base, roles in pairs.items():
        if "A" not in roles or "B" not in roles:
            have = next(iter(roles.values())).name
            raise AdapterError(f"{source}: tensor {have!r} has no partner lora_{'b' if 'A' in roles else 'a'}")
        arrays = []
        for role in ("A", "B"):
            t = roles[role]
            qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                arr = np.asarray(t.data)
            else:
                quantised.add(qtype.name)
                try:
                    arr = _dequantize(gguf, np.asarray(t.data), qtype, tuple(int(d) for d in reversed(t.shape)))
                except Exception as exc:
                    raise UnsupportedAdapterError(f"{source}: tensor {t.name!r} has GGML type {qtype.name}, "
                                                  f"which gguf cannot dequantise ({exc})") from exc
            if arr.ndim != 2 or arr.size == 0:
                raise AdapterError(f"{source}: tensor {t.name!r} should be a non-empty matrix, got shape {arr.shape}")
            if not all_finite(arr):
                raise AdapterError(f"{source}: tensor {t.name!r} contains NaN or infinite values")
            arrays.append(arr)
        a, b = arrays
        if a.shape[0] != b.shape[1]:
            raise AdapterError(f"{source}: factors of {base!r} do not chain: lora_a {a.shape}, lora_b {b.shape}")
        r = int(a.shape[0])
        if scale is not None:
            s, used_alpha = scale, None
        elif alpha is not None:
            s, used_alpha = alpha / r, alpha
        elif file_alpha:
            s, used_alpha = float(file_alpha) / r, float(file_alpha)
        else:
            s, used_alpha = 1.0, None
        check_scale(s, f"{source} adapter.lora.alpha")
        modules.append(LoraModule(_module_name(arch, base), a, b, s, alpha=used_alpha))
    modules.sort(key=lambda m: natural_key(m.name))
    if scale is not None:
        note = f"scale {scale:g} for every module, as given by the user"
    elif alpha is not None:
        note = f"alpha {alpha:g} given by the user, scale = alpha / r per module"
    elif file_alpha:
        note = "llama.cpp rule: scale = adapter.lora.alpha / r from the GGUF metadata"
    else:
        note = "no adapter.lora.alpha in the GGUF: scale 1, as llama.cpp applies (give alpha to set it)"
    if quantised:
        note += f"; {', '.join(sorted(quantised))} tensors dequantised with gguf"
    names = "mapped to the model's module names" if arch in _LLAMA_ARCHS else "kept as GGUF names"
    note += f"; {arch or 'unknown'} tensor names {names}"
    return Adapter(format="gguf", modules=modules, scaling=note, source=source, ignored=ignored, metadata=meta)


def load_gguf_path(path: Path, *, alpha: float | None = None, scale: float | None = None) -> Adapter:
    """Read a GGUF LoRA adapter from disk (memory-mapped by the gguf reader)."""
    import mmap

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise AdapterError(f"{path.name} is not a valid GGUF file (only {size} bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                _scan(path.name, view)
            finally:
                view.release()
    return _read(path.name, str(path), alpha=alpha, scale=scale)


def load_gguf_bytes(source: str, data: bytes, *, alpha: float | None = None,
                    scale: float | None = None) -> Adapter:
    """Read a GGUF LoRA adapter from memory (through an anonymous memfd, no disk file)."""
    _scan(source, memoryview(data).cast("B"))
    fd = os.memfd_create("lorarank-gguf", 0)
    try:
        _write_all(fd, data)
        # The reader memory-maps the memfd; the mapping outlives the descriptor.
        return _read(source, f"/proc/self/fd/{fd}", alpha=alpha, scale=scale)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

