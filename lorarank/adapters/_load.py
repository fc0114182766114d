"""Public readers: :func:`load_adapter` (a file or folder) and :func:`load_adapter_bytes` (uploads).

Every reader has a path twin and a bytes twin, so an upload needs no temporary file. Keys are
classified by the layouts the family modules registered (``_registry.py``); each module is read
by its family, then its scale is set as the format defines it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import AdapterError, UnsupportedAdapterError
from . import _registry
from ._config import check_override, parse_config
from ._model import Adapter, LoraModule
from ._tensors import Tensors, npz_tensors, safetensors_from_bytes, safetensors_from_path
from .lora import apply_scales
from .names import natural_key

__all__ = ["load_adapter", "load_adapter_bytes"]


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
    config = parse_config(config_path.name, config_path.read_bytes()) if config_path else None
    with open(weights_path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK" or weights_path.suffix == ".npz":
        with open(weights_path, "rb") as fh:
            tensors = npz_tensors(weights_path.name, fh, weights_path.stat().st_size)
            return _build(tensors, config, source, alpha=alpha, scale=scale)
    tensors = safetensors_from_path(weights_path)
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
    config = parse_config(*configs[0]) if configs else None
    name, data = weights[0]
    data = bytes(data) if not isinstance(data, bytes) else data
    if data[:2] == b"PK" or str(name).lower().endswith(".npz"):
        tensors = npz_tensors(name, io.BytesIO(data), len(data))
    else:
        tensors = safetensors_from_bytes(name, data)
    source = name if not configs else f"{name} + {configs[0][0]}"
    return _build(tensors, config, source, alpha=alpha, scale=scale)


# A bare pair ``A`` / ``B`` in an npz is one unnamed module.
_NPZ_SINGLE = next(lay for lay in _registry.layouts() if lay.format == "npz")


def _build(tensors: Tensors, config: dict | None, source: str, *, alpha: float | None,
           scale: float | None) -> Adapter:
    alpha, scale = check_override(alpha, scale)
    keys = tensors.keys()
    # 1. Refuse what we recognise but cannot audit, before reading any data.
    for key in keys:
        kind = _registry.refusal(key)
        if kind is not None:
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
    # 2. Classify keys by the registered layouts.
    found: dict[str, dict[str, dict[str, str]]] = {}   # format -> module -> {role: key}
    layouts: dict[str, _registry.Layout] = {}
    alpha_keys: dict[str, str] = {}
    ignored: list[str] = []
    for key in keys:
        if key == "A" or key == "B":
            found.setdefault("npz", {}).setdefault("", {})[key] = key
            layouts[""] = _NPZ_SINGLE
            continue
        hit = _registry.classify(key)
        if hit is not None:
            layout, name, role = hit
            found.setdefault(layout.format, {}).setdefault(name, {})[role] = key
            layouts[name] = layout
        elif key == "alpha" or key.endswith(".alpha"):
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
    # 3. Read each module with its family, fix orientation and compute each module's scale.
    rslora = bool(config.get("use_rslora", False)) if (config and fmt == "peft") else False
    modules: list[LoraModule] = []
    for name, roles in named.items():
        layout = layouts[name]
        missing = [r for r in layout.required if r not in roles]
        if missing:
            have = next(iter(roles.values()))
            raise AdapterError(f"{source}: tensor {have!r} has no partner {missing[0]} factor "
                               f"for module {name or '(unnamed)'!r}")
        modules.append(layout.read(tensors, name, roles, source))
    scaled, note = apply_scales(fmt, modules, tensors, alpha_keys, config, source,
                                alpha=alpha, scale=scale, rslora=rslora)
    uses_alpha = fmt in ("kohya", "diffusers", "npz") and alpha is None and scale is None
    used_alpha = {k for n, k in alpha_keys.items() if uses_alpha and (n in named or (n == "" and fmt == "npz"))}
    ignored += [k for k in alpha_keys.values() if k not in used_alpha]
    scaled.sort(key=lambda m: natural_key(m.name))
    return Adapter(format=fmt, modules=scaled, scaling=note, source=source,
                   config=config if fmt in ("peft", "mlx") else None, ignored=ignored)

