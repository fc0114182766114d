"""DoRA magnitude vectors: recognised by key name; refused until its reader lands (issue 8)."""

from __future__ import annotations

from ._registry import refuse

refuse(r"(^|[._])(lora_magnitude_vector|dora_scale)", "DoRA magnitude vectors")
