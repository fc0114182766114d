"""Module names: the layer / type parse the rank map uses, and natural sort order."""

from __future__ import annotations

import re

__all__ = ["parse_module_name", "natural_key", "PEFT_PREFIX"]

PEFT_PREFIX = "base_model.model."

_LAYER = re.compile(r"(?:^|[._])(\d+)(?=[._]|$)")
#: Longest number read as a layer index or compared as a number (a 5,000-digit "layer" in a
#: hostile name is not parsed: int() refuses over 4,300 digits, Arrow over 2^63).
_MAX_DIGITS = 9


def parse_module_name(name: str) -> tuple[int | None, str]:
    """``(layer, module_type)`` of a module path, for the rank map.

    The layer is the first integer component (``model.layers.7.mlp.up_proj`` -> 7, kohya
    ``lora_te_text_model_encoder_layers_3_mlp_fc1`` -> 3); the type is the last dotted
    component (``up_proj``), with the one before it when the last is a number (diffusers'
    ``attn1.to_out.0`` -> ``to_out.0``, ``ff.net.2`` -> ``net.2``: a bare ``0`` names no module type)
    or, for underscore-only names, what follows the layer (``mlp_fc1``).
    """
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match and len(match.group(1)) <= _MAX_DIGITS else None
    if "." in name:
        parts = name.rsplit(".", 2)
        kind = ".".join(parts[-2:]) if parts[-1].isdecimal() and not parts[-2].isdecimal() else parts[-1]
    elif match:
        kind = name[match.end():].lstrip("._") or name
    else:
        kind = name
    return layer, kind or "(unnamed)"



def natural_key(name: str) -> list:
    """Sort key putting ``layers.2`` before ``layers.10``."""
    return [((0, int(part), "") if len(part) <= 18 else (0, 10**18 + len(part), part)) if part.isdecimal()
            else (1, 0, part) for part in re.split(r"(\d+)", name)]

