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
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import AdapterError, UnsupportedAdapterError
from ._model import Adapter, LoraModule
from ._scales import check_scale
from ._tensors import MAX_TENSORS, all_finite
from .names import natural_key

__all__ = ["GGUF_MAGIC", "load_gguf_path", "load_gguf_bytes", "LLAMA_NAMES"]

GGUF_MAGIC = b"GGUF"
_MAX_KV = 10_000

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


def _check_counts(source: str, head: bytes) -> None:
    if len(head) < 24:
        raise AdapterError(f"{source} is not a valid GGUF file (only {len(head)} bytes)")
    n_tensors, n_kv = struct.unpack("<QQ", head[8:24])
    if n_tensors > MAX_TENSORS:
        raise AdapterError(f"{source} declares {n_tensors:,} tensors; lorarank reads at most {MAX_TENSORS:,}")
    if n_kv > _MAX_KV:
        raise AdapterError(f"{source} declares {n_kv:,} metadata keys; lorarank reads at most {_MAX_KV:,}")


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
                    arr = gguf.quants.dequantize(np.asarray(t.data), qtype).astype(np.float32, copy=False)
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
    with open(path, "rb") as fh:
        _check_counts(path.name, fh.read(24))
    return _read(path.name, str(path), alpha=alpha, scale=scale)


def load_gguf_bytes(source: str, data: bytes, *, alpha: float | None = None,
                    scale: float | None = None) -> Adapter:
    """Read a GGUF LoRA adapter from memory (through an anonymous memfd, no disk file)."""
    _check_counts(source, data[:24])
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

