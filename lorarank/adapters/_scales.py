"""The scale of every module, exactly as the library that wrote the file applies it.

=========  ==========================================================================
format     scale
=========  ==========================================================================
peft       LORA (and DoRA): lora_alpha / r, lora_alpha / sqrt(r) with use_rslora, with
           rank_pattern / alpha_pattern per module; ADALORA: lora_alpha / (ranknum + 1e-5)
           with ranknum = init_r; LOHA / LOKR: alpha / r (config key ``alpha``), kept by
           PEFT even when both LoKr halves are full matrices
diffusers  the PEFT rule from ``__metadata__["lora_adapter_metadata"]`` (``unet.lora_alpha``,
           ``unet.r``, ...) per component prefix, else alpha / r with alpha keys, else 1
kohya      alpha / r from each module's ``alpha`` key (LyCORIS: r = the stored dim of LoHa /
           LoKr, and scale 1 when both LoKr halves are full); 1 without an alpha key
mlx        lora_parameters.scale of adapter_config.json
npz        alpha / r with an alpha entry, else 1
=========  ==========================================================================
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import AdapterError
from ._config import number, peft_pattern_key
from ._model import LoraModule
from ._registry import family, peft_family
from ._tensors import Tensors
from .names import PEFT_PREFIX

__all__ = ["apply_scales", "check_scale", "MAX_SCALE", "config_bool", "int_field"]

#: Largest |scale| lorarank accepts: beyond it sums of squared singular values overflow float64
#: for ordinary factor sizes, so the numbers shown would be inf or NaN.
MAX_SCALE = 1e12


def check_scale(value: float, where: str) -> float:
    """``value`` if it is a finite scale within :data:`MAX_SCALE`, else one sentence naming ``where``."""
    if not math.isfinite(value) or abs(value) > MAX_SCALE:
        raise AdapterError(f"{where} gives scale {value:.3g}, beyond lorarank's bound of {MAX_SCALE:.0e} "
                           "(the spectrum would overflow to inf or NaN)")
    return value


def config_bool(config: dict, key: str, name: str = "adapter_config.json") -> bool:
    """A boolean config value typed as PEFT types it; strings such as ``"false"`` are refused."""
    value = config.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise AdapterError(f"{name}: `{key}` should be true or false, got {value!r} (PEFT would treat "
                           f"{value!r} as {'true' if value else 'false'})")
    return value


def _r_eff(m: LoraModule) -> int:
    return m.stored_rank if m.stored_rank is not None else m.rank


def _user_rule(m: LoraModule, a: float, rslora: bool) -> float:
    return family(m.family).scale(a, _r_eff(m), rslora)


def apply_scales(fmt: str, modules: list[LoraModule], tensors: Tensors, alpha_keys: dict[str, str],
                 config: dict | None, source: str, *, alpha: float | None, scale: float | None,
                 rslora: bool, components: dict[str, dict] | None = None) -> tuple[list[LoraModule], str]:
    """Set each module's scale and alpha; return the modules and one sentence saying how."""
    if scale is not None:
        return [replace(m, scale=scale, alpha=None) for m in modules], \
            f"scale {scale:g} for every module, as given by the user"
    if alpha is not None:
        formula = "alpha / sqrt(r)" if rslora else "alpha / r"
        return [replace(m, scale=check_scale(_user_rule(m, alpha, rslora), f"alpha {alpha:g}"), alpha=alpha)
                for m in modules], f"alpha {alpha:g} given by the user, scale = {formula} per module"
    if components:
        return _diffusers_scales(modules, components, source)
    if fmt == "peft":
        if config is None:
            return [replace(m, scale=1.0) for m in modules], \
                "no adapter_config.json: scale 1 assumed for every module (give alpha to set it)"
        return peft_scales(modules, config, source, rslora)
    if fmt == "mlx":
        params = (config or {}).get("lora_parameters")
        if isinstance(params, dict) and "scale" in params:
            s = number("adapter_config.json", "lora_parameters.scale", params["scale"], positive=False)
            if s == 0:
                raise AdapterError("adapter_config.json: lora_parameters.scale is 0, so mlx-lm adds nothing "
                                   "to any layer; give scale to audit the factors at another scale")
            check_scale(s, "adapter_config.json lora_parameters.scale")
            return [replace(m, scale=s) for m in modules], \
                f"mlx-lm lora_parameters.scale = {s:g} from adapter_config.json"
        return [replace(m, scale=1.0) for m in modules], \
            "no adapter_config.json with lora_parameters.scale: scale 1 assumed (give scale to set it)"
    # kohya (and LyCORIS), diffusers, npz: alpha keys (npz also a global `alpha`).
    out, with_alpha, both_full = [], 0, 0
    for m in modules:
        key = alpha_keys.get(m.name) or (alpha_keys.get("") if fmt == "npz" else None)
        if m.unit_scale_by_design:  # a LoKr with both halves full: LyCORIS's alpha = dim
            out.append(replace(m, scale=1.0, alpha=None))
            both_full += 1
        elif key is not None:
            a = _scalar(tensors, key, source)
            r = _r_eff(m)
            out.append(replace(m, scale=check_scale(a / r, f"{key!r} = {a:g}") if r else 0.0, alpha=a))
            with_alpha += 1
        else:
            out.append(replace(m, scale=1.0))
    n_plain = len(out) - both_full
    if with_alpha == n_plain:
        note = "alpha / r from the file's alpha entries"
    elif with_alpha == 0:
        note = "no alpha entries in the file: scale 1 for every module (give alpha to set it)"
    else:
        note = (f"alpha / r for the {with_alpha} modules with an alpha entry, scale 1 for the "
                f"{n_plain - with_alpha} without")
    if any(family(m.family).lycoris for m in modules):
        note += " (r = the stored LyCORIS dim)"
    if both_full:
        note += (f"; scale 1 for the {both_full} LoKr modules whose two halves are both full "
                 "matrices (LyCORIS trains them with alpha = dim)")
    return out, note


def _scalar(tensors: Tensors, key: str, source: str) -> float:
    arr = tensors.get(key, scalar=True)
    if arr.size != 1:
        raise AdapterError(f"{source}: {key!r} should be a single number, got shape {arr.shape}")
    value = float(np.asarray(arr, dtype=np.float64).reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise AdapterError(f"{source}: {key!r} should be a positive number, got {value}")
    return value


def int_field(name: str, field_name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` of config field ``field_name`` if it is an integer >= ``minimum``, else one
    sentence naming the file ``name``, the field and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise AdapterError(f"{name}: `{field_name}` should be {kind}, got {value!r}")
    return value


def peft_scales(modules: list[LoraModule], config: dict, source: str, rslora: bool, *,
                name: str = "adapter_config.json", strip: str = PEFT_PREFIX) -> tuple[list[LoraModule], str]:
    """PEFT's scale per module from its config (LORA, DoRA, ADALORA, LOHA, LOKR): the family's
    own rule where it registered one (:attr:`lorarank.adapters.Family.peft_scales`), else
    alpha / r (or / sqrt(r)) with ``rank_pattern`` and ``alpha_pattern``."""
    peft_type = str(config.get("peft_type") or "LORA").upper()
    fam = peft_family(peft_type)
    alpha_field = "alpha" if fam is not None and fam.lycoris else "lora_alpha"
    r_default = int_field(name, "r", config.get("r", 8))
    alpha_default = number(name, alpha_field, config.get(alpha_field, 8))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    for field_name, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        if not isinstance(pattern, dict):
            raise AdapterError(f"{name}: `{field_name}` should be an object, got {pattern!r}")
    fan_in_fan_out = config_bool(config, "fan_in_fan_out", name)
    if fam is not None and fam.peft_scales is not None:
        return fam.peft_scales(modules, config, name, alpha=alpha_default, fan_in_fan_out=fan_in_fan_out)
    out = []
    for m in modules:
        inner = m.name[len(strip):] if strip and m.name.startswith(strip) else m.name
        r_key = peft_pattern_key(rank_pattern, inner, field_name="rank_pattern")
        a_key = peft_pattern_key(alpha_pattern, inner, field_name="alpha_pattern")
        r = rank_pattern[r_key] if r_key is not None else r_default
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise AdapterError(f"{name}: rank_pattern[{r_key!r}] should be a positive integer, got {r!r}")
        a = number(name, f"alpha_pattern[{a_key!r}]", alpha_pattern[a_key]) if a_key is not None else alpha_default
        half = family(m.family).half_rank   # LoKr: PEFT's r stands even where both halves are full
        stored = m.stored_rank if m.stored_rank is not None else (None if half else m.rank)
        if stored is not None and r != stored:
            where = f"rank_pattern[{r_key!r}]" if r_key is not None else "`r`"
            raise AdapterError(f"{source}: module {m.name!r} has rank {stored} in the weights but "
                               f"{name} gives {where} = {r}")
        s = a / math.sqrt(r) if rslora else a / r
        s = check_scale(s, f"{name} {alpha_field} = {a:g}")
        out.append(replace(m, scale=s, alpha=a, transposed=m.transposed or fan_in_fan_out,
                           stored_rank=r if half else m.stored_rank))
    formula = "lora_alpha / sqrt(r) (use_rslora)" if rslora else f"{alpha_field} / r"
    extra = []
    if rank_pattern:
        extra.append("rank_pattern")
    if alpha_pattern:
        extra.append("alpha_pattern")
    kind = f"{fam.label} " if fam is not None and fam.lycoris else ""
    note = f"PEFT {kind}adapter_config.json: scale = {formula}"
    if extra:
        note += " with per-module " + " and ".join(extra)
    if fan_in_fan_out:
        note += "; fan_in_fan_out transposes dW"
    return out, note


def _diffusers_scales(modules, components: dict[str, dict], source: str):
    out = []
    notes = []
    for prefix, cfg in components.items():
        group = [m for m in modules if m.name.startswith(prefix + ".")]
        if not group:
            continue
        rslora = config_bool(cfg, "use_rslora", "lora_adapter_metadata")
        scaled, _ = peft_scales(group, cfg, source, rslora, name=f"lora_adapter_metadata ({prefix})",
                                strip=prefix + ".")
        out += scaled
        notes.append(prefix)
    missing = [m for m in modules if not any(m.name.startswith(p + ".") for p in components)]
    out += [replace(m, scale=1.0) for m in missing]
    note = ("diffusers lora_adapter_metadata in the file: scale = lora_alpha / r per component "
            f"({', '.join(notes)})")
    if missing:
        note += (f"; scale 1 assumed for the {len(missing)} modules of components the metadata does not "
                 "cover (give alpha to set it)")
    return out, note
