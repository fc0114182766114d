"""adapter_config.json and override parsing shared by the readers."""

from __future__ import annotations

import math
import re
from typing import Iterable

from .._validate import check_real
from ..bounded import MAX_JSON_BYTES, load_json
from ..errors import AdapterError, ConfigError

__all__ = ["parse_config", "peft_pattern_key", "number", "check_override"]


def parse_config(name: str, data: bytes) -> dict:
    """An ``adapter_config.json`` as a dict, parsed within bounds (:func:`lorarank.bounded.load_json`)."""
    if len(data) > MAX_JSON_BYTES:
        raise AdapterError(f"{name} is {len(data) / 2**20:.0f} MiB; an adapter config is a small JSON file")
    config = load_json(name, data, what="config")
    if not isinstance(config, dict):
        raise AdapterError(f"{name} should hold a JSON object, got {type(config).__name__}")
    return config


#: Bounds on PEFT rank_pattern / alpha_pattern keys (issue 12): count, length, time per match.
MAX_PATTERNS = 10_000
MAX_PATTERN_LENGTH = 1_000
PATTERN_TIMEOUT = 0.05   # seconds for one key against one module name


def peft_pattern_key(patterns: Iterable[str], module: str, *, field_name: str = "rank_pattern") -> str | None:
    """The first key of ``patterns`` that PEFT would apply to ``module``, or None.

    PEFT (``peft.utils.other.get_pattern_key``) tries the keys of ``rank_pattern`` /
    ``alpha_pattern`` in insertion order and takes the first ``key`` for which
    ``re.match(rf"(.*\\.)?({key})$", module)`` matches, where ``module`` is the name inside the
    base model (``model.layers.0.self_attn.q_proj``, without PEFT's ``base_model.model.``).
    A key is therefore a regular expression matched against a dotted suffix of the name.

    The same semantics are kept with bounded work: each key must compile with ``re`` (as PEFT
    compiles it), is at most :data:`MAX_PATTERN_LENGTH` characters, and is matched with the
    ``regex`` engine under a :data:`PATTERN_TIMEOUT` per match, so a key such as ``(.+)+z``
    (exponential backtracking) is refused with one sentence instead of freezing the server.
    """
    keys = list(patterns)
    if not keys:  # most configs: no import of the regex engine (0.1 s without a bytecode cache)
        return None
    import regex

    if len(keys) > MAX_PATTERNS:
        raise AdapterError(f"adapter_config.json: `{field_name}` has {len(keys):,} keys; lorarank reads at most "
                           f"{MAX_PATTERNS:,}")
    for key in keys:
        key = str(key)
        if len(key) > MAX_PATTERN_LENGTH:
            raise AdapterError(f"adapter_config.json: a `{field_name}` key is {len(key):,} characters long; "
                               f"lorarank reads keys up to {MAX_PATTERN_LENGTH:,}")
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error as exc:
            raise AdapterError(f"adapter_config.json pattern {key!r} is not a valid regular expression ({exc})") from exc
        try:
            hit = regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_TIMEOUT)
        except TimeoutError as exc:
            raise AdapterError(f"adapter_config.json: `{field_name}` key {key!r} takes over "
                               f"{PATTERN_TIMEOUT * 1000:g} ms to match one module name (exponential backtracking); "
                               "lorarank refuses it") from exc
        except regex.error as exc:
            raise AdapterError(f"adapter_config.json pattern {key!r} is not a valid regular expression ({exc})") from exc
        if hit:
            return key
    return None


def number(config_name: str, field_name: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError(f"{config_name}: `{field_name}` should be a number, got {value!r}")
    if positive and value <= 0:
        raise AdapterError(f"{config_name}: `{field_name}` should be positive, got {value!r}")
    return float(value)


def check_override(alpha: float | None, scale: float | None) -> tuple[float | None, float | None]:
    if alpha is not None and scale is not None:
        raise ConfigError("give `alpha` or `scale`, not both")
    if alpha is not None:
        alpha = check_real("alpha", alpha, minimum=0.0, strict_minimum=True)
    if scale is not None:
        scale = check_real("scale", scale)
    return alpha, scale

