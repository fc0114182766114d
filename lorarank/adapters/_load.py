"""Public readers: :func:`load_adapter` (a file or folder) and :func:`load_adapter_bytes` (uploads).

Every reader has a path twin and a bytes twin, so an upload needs no temporary file. Keys are
classified by the layouts the family modules registered (``_registry.py``); each module is read
by its family, then its scale is set as the format defines it.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping

from ..bounded import MAX_JSON_BYTES, load_json, read_file, regular_file
from ..errors import AdapterError, UnsupportedAdapterError
from . import _registry
from ._config import check_override, parse_config
from ._metadata import training_metadata
from ._model import Adapter, Extra, LoraModule
from ._scales import apply_scales, config_bool
from ._tensors import MAX_NPZ_BYTES, Tensors, npz_tensors, safetensors_from_bytes, safetensors_from_path
from .gguf_lora import GGUF_MAGIC, load_gguf_bytes, load_gguf_path
from .names import PEFT_PREFIX, natural_key

__all__ = ["load_adapter", "load_adapter_bytes", "load_adapters", "named_adapters", "module_layouts",
           "choose_weights", "WEIGHT_SUFFIXES", "PREFERRED_WEIGHTS"]

#: File endings of adapter weights lorarank reads.
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf")
#: The weights file an adapter folder is read from when it holds several: PEFT's, then mlx-lm's.
PREFERRED_WEIGHTS = ("adapter_model.safetensors", "adapters.safetensors")
_NON_WEIGHTS = ("base_weights.safetensors",)   # DoRA samples keep the base model's weights beside
_ADAPTER_NAME = re.compile(r"lora|adapter", re.IGNORECASE)


def choose_weights(names: Iterable[str], *,
                   adapter_names_only: bool = False) -> tuple[str | None, list[str]]:
    """The weights file of one adapter folder, from the names of the files in it.

    The one rule every reader uses (a local folder, a checkpoint of a run or of a zip, a folder
    on the Hub): the candidates are the files ending in :data:`WEIGHT_SUFFIXES` (not a DoRA
    sample's ``base_weights.safetensors``); the first of :data:`PREFERRED_WEIGHTS` among them
    wins; else the only candidate.

    Parameters
    ----------
    names : iterable of str
        File names or paths (the base name decides).
    adapter_names_only : bool, default False
        Only files whose name says ``lora`` or ``adapter`` are candidates (a Hub folder without
        ``adapter_config.json``: a model repo's ``model.safetensors`` is never downloaded).

    Returns
    -------
    (str or None, list of str)
        The chosen name (None when there is no candidate, or several and none preferred) and
        every candidate, sorted, for the caller's one-sentence error.
    """
    def base(name: str) -> str:
        return str(name).replace("\\", "/").rsplit("/", 1)[-1]

    candidates = sorted(n for n in names
                        if base(n).lower().endswith(WEIGHT_SUFFIXES) and base(n) not in _NON_WEIGHTS
                        and (not adapter_names_only or _ADAPTER_NAME.search(base(n))))
    for preferred in PREFERRED_WEIGHTS:
        chosen = [n for n in candidates if base(n) == preferred]
        if chosen:
            return chosen[0], candidates
    return (candidates[0] if len(candidates) == 1 else None), candidates


def named_adapters(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` that hold an adapter each (a config and a weights file), sorted."""
    subs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (sub / "adapter_config.json").is_file() and any(
                p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in sub.iterdir()):
            subs.append(sub)
    return subs


def load_adapters(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                  alpha: float | None = None, scale: float | None = None) -> list[Adapter]:
    """Every adapter at ``path``: one for a file or adapter folder, one per named subfolder.

    PEFT's ``save_pretrained`` of a model with several named adapters writes each into its own
    subfolder (``summarize/``, ``translate/``) with its own config; each is read and named
    (:attr:`Adapter.name`).

    Parameters
    ----------
    path : str or PathLike
    config, alpha, scale
        As in :func:`load_adapter` (applied to every adapter).

    Returns
    -------
    list of Adapter
    """
    path = Path(path)
    if path.is_dir() and not _weights_in(path):
        subs = named_adapters(path)
        if subs:
            return [replace(load_adapter(sub, config=config, alpha=alpha, scale=scale), name=sub.name)
                    for sub in subs]
    return [load_adapter(path, config=config, alpha=alpha, scale=scale)]


def _weights_in(folder: Path) -> list[Path]:
    # Not folders: a FIFO named adapter_model.safetensors is chosen, then refused in one sentence.
    files = {p.name: p for p in folder.iterdir() if not p.is_dir()}
    return [files[n] for n in choose_weights(files)[1]]


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
        Recognised but not read: a PEFT method no family reads (IA3, ...), a LyCORIS DoRA
        scale per input column, a GGUF adapter that is not a LoRA.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    config_path: Path | None = None
    if path.is_dir():
        weights = _weights_in(path)
        if not weights:
            subs = named_adapters(path)
            if subs:
                names = ", ".join(p.name for p in subs)
                raise AdapterError(f"folder {path} holds several named adapters ({names}); pass one of them, "
                                   f"e.g. {subs[0]}")
            raise AdapterError(f"folder {path} holds no .safetensors, .npz or .gguf weights file")
        chosen, _ = choose_weights(p.name for p in weights)
        if chosen is None:
            names = ", ".join(p.name for p in weights)
            raise AdapterError(f"folder {path} holds several weights files ({names}); pass one of them")
        weights_path = regular_file(path / chosen, what="adapter weights")
        if (path / "adapter_config.json").exists():   # a FIFO or folder there: one sentence, not "no config"
            config_path = path / "adapter_config.json"
        source = path.name
    else:
        weights_path = regular_file(path, what="adapter weights")
        if (path.parent / "adapter_config.json").exists():
            config_path = path.parent / "adapter_config.json"
        source = path.name
    if config is not None:
        config_path = Path(config)
        source = f"{source} + {config_path.name}"
    config = (parse_config(config_path.name, read_file(config_path, max_bytes=MAX_JSON_BYTES,
                                                       what="adapter configs"))
              if config_path else None)
    with open(weights_path, "rb") as fh:
        head = fh.read(4)
    if head == GGUF_MAGIC:
        return load_gguf_path(weights_path, alpha=alpha, scale=scale)
    if head[:2] == b"PK" or weights_path.suffix == ".npz":
        # Read whole (an .npz unpacks to at most MAX_NPZ_BYTES): its arrays are views of it.
        data = read_file(weights_path, max_bytes=MAX_NPZ_BYTES + 64 * 2**20, what=".npz files")
        tensors = npz_tensors(weights_path.name, data)
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
    # bytes, or a read-only view (a stored zip member): read in place, never copied
    data = data if isinstance(data, (bytes, memoryview)) else bytes(data)
    if data[:4] == GGUF_MAGIC:
        alpha, scale = check_override(alpha, scale)
        return load_gguf_bytes(name, data, alpha=alpha, scale=scale)
    if data[:2] == b"PK" or str(name).lower().endswith(".npz"):
        tensors = npz_tensors(name, data)
    else:
        tensors = safetensors_from_bytes(name, data)
    source = name if not configs else f"{name} + {configs[0][0]}"
    return _build(tensors, config, source, alpha=alpha, scale=scale)


def _kind(family: str) -> str:
    return _registry.family(family).label


def _classify(keys: list[str]) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, str], list[str]]:
    """Group keys: format -> module -> {role: key}; alpha keys by module; the rest."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    alpha_keys: dict[str, str] = {}
    rest: list[str] = []
    for key in keys:
        if key in ("A", "B"):
            found.setdefault("npz", {}).setdefault("", {})[key] = key
            continue
        hit = _registry.classify(key)
        if hit is not None:
            fmt, name, role = hit
            found.setdefault(fmt, {}).setdefault(name, {})[role] = key
        elif key == "alpha" or key.endswith(".alpha"):
            alpha_keys[key[: -len(".alpha")] if key != "alpha" else ""] = key
        elif key.endswith(".network_alpha"):
            alpha_keys[key[: -len(".network_alpha")]] = key
        else:
            rest.append(key)
    return found, alpha_keys, rest


def _select_layouts(fmt: str, named: dict[str, dict[str, str]], source: str, rest: list[str]):
    """The layout of every module; modules with only optional keys go back to ``rest``."""
    chosen: dict[str, _registry.Layout] = {}
    for name, roles in list(named.items()):
        if fmt == "npz" and name == "" and set(roles.values()) <= {"A", "B"}:
            roles = {r: "." + k for r, k in roles.items()}   # a bare pair A / B: one unnamed module
        layout = _registry.select(fmt, name, roles)
        if layout is not None:
            chosen[name] = layout
            continue
        candidates = [lay for lay in _registry.layouts() if lay.format == fmt
                      and any(r in roles for r in lay.required)]
        if not candidates:      # e.g. a lone ".m" tensor: not a factor of anything
            rest.extend(roles.values())
            del named[name]
            continue
        best = max(candidates, key=lambda lay: sum(r in roles for r in lay.required))
        missing = [r for r in best.required if r not in roles]
        have = next(iter(roles.values()))
        if missing:
            role = missing[0]
            what = f"{role} factor" if role in ("A", "B") else repr(name + dict(best.roles)[role])
            raise AdapterError(f"{source}: tensor {have!r} has no partner {what} "
                               f"for module {name or '(unnamed)'!r}")
        extra = sorted(set(roles) - {r for r, _ in best.roles})
        if not extra:   # every role is known, spelled otherwise (``m.lora_A`` for ``m.lora_A.weight``)
            spelled = dict(best.roles)
            raise AdapterError(f"{source}: module {name or '(unnamed)'!r} has tensors "
                               f"{', '.join(repr(roles[r]) for r in sorted(roles))}; {_kind(best.family)} "
                               f"adapters in this format name them "
                               f"{', '.join(repr(name + spelled[r]) for r in sorted(roles) if r in spelled)}")
        raise AdapterError(f"{source}: module {name or '(unnamed)'!r} mixes {_kind(best.family)} tensors "
                           f"with {', '.join(repr(roles[r]) for r in extra)}")
    return chosen


def _diffusers_components(tensors: Tensors, source: str) -> dict[str, dict] | None:
    """Per-component PEFT configs from ``__metadata__["lora_adapter_metadata"]`` (diffusers)."""
    text = tensors.metadata.get("lora_adapter_metadata")
    if text is None:
        return None
    meta = load_json(source, text, what="lora_adapter_metadata")
    if not isinstance(meta, dict):
        raise AdapterError(f"{source}: lora_adapter_metadata should be a JSON object")
    components: dict[str, dict] = {}
    for key, value in meta.items():
        prefix, _, field_name = str(key).partition(".")
        if field_name:
            components.setdefault(prefix, {})[field_name] = value
    return components or None


def module_layouts(keys: list[str], config: dict | None, source: str
                   ) -> tuple[str, dict[str, tuple[dict[str, str], "_registry.Layout"]], dict[str, str], list[str]]:
    """How a file's tensors group into modules, from their names alone (nothing is read).

    Steps 1 and 2 of reading an adapter, shared by :func:`load_adapter` and the header-only
    screening of :mod:`lorarank.adapters.headers`: kinds lorarank refuses are refused, the
    config's ``peft_type`` is checked, and every key is classified by the registered layouts.

    Returns
    -------
    format : str
        The key convention (``"peft"``, ``"kohya"``, ``"diffusers"`` is found later from the
        metadata, ``"mlx"``, ``"npz"``).
    modules : dict of str to (dict of str to str, Layout)
        Module name -> ``({role: key}, layout)``.
    alpha_keys : dict of str to str
        Module name -> its ``alpha`` / ``network_alpha`` key.
    rest : list of str
        Keys that are not LoRA factors.
    """
    # 1. Refuse what we recognise but cannot audit, before reading any data.
    for key in keys:
        kind = _registry.refusal(key)
        if kind is not None:
            raise UnsupportedAdapterError(f"{source} is a {kind} adapter (tensor {key!r}), which lorarank "
                                          "does not read yet")
    peft_type = None
    if config is not None:
        peft_type = str(config.get("peft_type") or "LORA").upper()
        if peft_type not in _peft_types():
            raise UnsupportedAdapterError(f"{source} is a PEFT {peft_type} adapter (peft_type in the config), "
                                          f"which lorarank does not read; it reads {', '.join(_peft_types())}")
    # 2. Classify keys by the registered layouts.
    found, alpha_keys, rest = _classify(keys)
    for fmt in list(found):
        layouts_of = _select_layouts(fmt, found[fmt], source, rest)
        if not found[fmt]:
            del found[fmt]
        else:
            found[fmt] = {n: (roles, layouts_of[n]) for n, roles in found[fmt].items()}
    if not found:
        few = ", ".join(repr(k) for k in keys[:3]) or "none"
        raise AdapterError(
            f"{source} holds no LoRA factors (tensors: {few}); expected keys like "
            "'<module>.lora_A.weight' / '.lora_B.weight', '.lora_down.weight' / '.lora_up.weight', "
            "'.lora_a' / '.lora_b', 'hada_w1_a', 'lokr_w1' or 'A' / 'B'"
        )
    # PEFT and LyCORIS name LoHa / LoKr tensors alike (families registered ``lycoris``): a PEFT
    # config or prefix makes them PEFT's.
    if "kohya" in found and "peft" not in found:
        ported = {f.peft_type for f in _registry.families().values() if f.lycoris}
        lyco = all(_registry.family(lay.family).lycoris for _, lay in found["kohya"].values())
        if lyco and (peft_type in ported or all(n.startswith(PEFT_PREFIX) for n in found["kohya"])):
            found["peft"] = found.pop("kohya")
    if len(found) > 1:
        raise AdapterError(f"{source} mixes the key conventions of {' and '.join(sorted(found))}")
    fmt, named = next(iter(found.items()))
    return fmt, named, alpha_keys, rest


def _build(tensors: Tensors, config: dict | None, source: str, *, alpha: float | None,
           scale: float | None, name: str = "") -> Adapter:
    alpha, scale = check_override(alpha, scale)
    keys = tensors.keys()
    fmt, named, alpha_keys, rest = module_layouts(keys, config, source)
    # 3. Read each module with its family, then compute each module's scale.
    components = _diffusers_components(tensors, source) if fmt == "peft" and config is None else None
    rslora = config_bool(config, "use_rslora") if (config and fmt == "peft") else False
    modules: list[LoraModule] = []
    for n, (roles, layout) in named.items():
        module = layout.read(tensors, n, roles, source)
        if any(tensors.entries[k][0] == "BF16" for k in roles.values()):
            module = replace(module, stored_dtype="bfloat16")
        modules.append(module)
    _check_family_config(fmt, modules, config, source)
    scaled, note = apply_scales(fmt, modules, tensors, alpha_keys, config, source, alpha=alpha, scale=scale,
                                rslora=rslora, components=components)
    if components:
        fmt = "diffusers"
    uses_alpha = fmt in ("kohya", "diffusers", "npz") and alpha is None and scale is None and not components
    used_alpha = {k for n, k in alpha_keys.items() if uses_alpha and (n in named or (n == "" and fmt == "npz"))}
    ignored = rest + [k for k in alpha_keys.values() if k not in used_alpha]
    scaled.sort(key=lambda m: natural_key(m.name))
    extras = {k: _extra(tensors, k) for k in rest}
    return Adapter(format=fmt, modules=scaled, scaling=note, source=source,
                   config=config if fmt in ("peft", "mlx") else None, ignored=ignored,
                   metadata=training_metadata(config, tensors.metadata, fmt), extras=extras, name=name,
                   file_metadata=dict(tensors.metadata))


def _peft_types() -> tuple[str, ...]:
    """The PEFT ``peft_type`` values whose weights some registered family reads."""
    return tuple(dict.fromkeys(f.peft_type for f in _registry.families().values() if f.peft_type))


def _extra(tensors: Tensors, key: str) -> Extra:
    dtype_name, shape = tensors.entries[key]
    return Extra(dtype=dtype_name, shape=tuple(shape), loader=lambda: tensors.raw(key))


def _check_family_config(fmt: str, modules: list[LoraModule], config: dict | None, source: str) -> None:
    """The config and the tensors must agree on the family (a DoRA config without magnitudes, ...)."""
    families = {m.family for m in modules}
    if config is None:
        return
    if fmt == "peft":
        peft_type = str(config.get("peft_type") or "LORA").upper()
        expected = {name for name, f in _registry.families().items() if f.peft_type == peft_type}
        if not families <= expected:
            found = ", ".join(_kind(f) for f in sorted(families - expected))
            raise AdapterError(f"{source}: the config says peft_type {peft_type} but the weights hold {found} tensors")
        if peft_type == "LORA":
            use_dora = config_bool(config, "use_dora")
            if use_dora and "lora" in families:
                plain = next(m.name for m in modules if m.family == "lora")
                raise AdapterError(f"{source}: the config says use_dora but module {plain!r} has no "
                                   "lora_magnitude_vector")
    if fmt == "mlx":
        tune = config.get("fine_tune_type", "lora")
        if tune == "dora" and "lora" in families:
            plain = next(m.name for m in modules if m.family == "lora")
            raise AdapterError(f"{source}: adapter_config.json says fine_tune_type dora but module {plain!r} "
                               "has no magnitude '.m'")
