"""Theme and helpers shared by the chart builders (Altair only, no streamlit)."""

from __future__ import annotations

from typing import Iterable

import altair as alt
import numpy as np

__all__ = [
    "PALETTE",
    "TARGET_COLOR",
    "FLOOR_COLOR",
    "rank_label",
    "rank_color_scale",
    "downsample_index",
    "log_scale",
]

#: Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), in order.
PALETTE: tuple[str, ...] = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
)
#: The reference series (a target spectrum) and the noise floor.
TARGET_COLOR = "#8a8a8a"
FLOOR_COLOR = "#D55E00"


def rank_label(rank: int) -> str:
    """The legend label of rank ``rank``: ``"r = 16"``."""
    return f"r = {int(rank)}"


def rank_color_scale(ranks: Iterable[int]) -> alt.Scale:
    """A colour scale giving each rank label a fixed colour, ranks in ascending order."""
    labels = [rank_label(r) for r in sorted(set(int(r) for r in ranks))]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]
    return alt.Scale(domain=labels, range=colors)


def downsample_index(n: int, max_points: int, *, log: bool = False) -> np.ndarray:
    """At most ``max_points`` sorted indices into ``range(n)``, first and last kept.

    Evenly spread, or with ``log=True`` geometrically spread (dense at the start), which suits
    a curve drawn on a log or symlog step axis.
    """
    if n <= max_points:
        return np.arange(n)
    if log:
        idx = np.geomspace(1, n, max_points).round().astype(int) - 1
    else:
        idx = np.linspace(0, n - 1, max_points).round().astype(int)
    return np.unique(np.concatenate(([0, n - 1], idx)))


def log_scale() -> alt.Scale:
    """A base-10 logarithmic scale that does not pad to zero."""
    return alt.Scale(type="log", base=10, zero=False, nice=False)
