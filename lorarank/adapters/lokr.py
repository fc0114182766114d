"""LoKr: recognised by key name; refused until its reader lands (issue 8)."""

from __future__ import annotations

from ._registry import refuse

refuse(r"(^|[._])lokr_(w1|w2|t1|t2)", "LoKr")
