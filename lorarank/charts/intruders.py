"""Charts of an update against its base: where the intruder dimensions are, and one module's cosines.

Pure builders (no streamlit): :func:`intruder_map_chart` is a layer x module-type heatmap of
intruder counts, :func:`cosine_chart` the picture of Shuttleworth et al.'s figures, the
``|cos|`` between the fine-tuned weight's top singular vectors and the base's.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from ._common import FLOOR_COLOR

__all__ = ["intruder_map_frame", "intruder_map_chart", "cosine_frame", "cosine_chart"]


def _layer_label(layer: object) -> str:
    return "-" if layer is None or (isinstance(layer, float) and not np.isfinite(layer)) else str(int(layer))


def intruder_map_frame(records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """One row per module: ``layer``, ``layer_num``, ``module_type``, ``name``, ``count``,
    ``indices`` (text), ``min_cos``, ``share``, ``amplification``.

    Parameters
    ----------
    records : sequence of mapping
        ``{"layer", "module_type", "name", "count", "indices", "max_cos", "share",
        "amplification"}``; a module whose intruders were not computed has ``count`` None
        (drawn grey, "not computed").
    """
    rows = []
    for r in records:
        count = r.get("count")
        cos = list(r.get("max_cos") or [])
        amp = r.get("amplification")
        rows.append({
            "layer": _layer_label(r.get("layer")),
            "layer_num": -1 if r.get("layer") is None else int(r["layer"]),
            "module_type": str(r.get("module_type")), "name": str(r.get("name")),
            "count": None if count is None else int(count),
            "indices": ", ".join(str(i) for i in (r.get("indices") or [])) or "-",
            "min_cos": float(min(cos)) if cos else None,
            "share": None if r.get("share") is None else float(r["share"]),
            "amplification": None if amp is None else float(amp),
        })
    return pd.DataFrame(rows, columns=["layer", "layer_num", "module_type", "name", "count", "indices",
                                       "min_cos", "share", "amplification"])


def intruder_map_chart(records: Sequence[Mapping[str, object]], *, top_k: int, epsilon: float,
                       cell: int = 22, max_height: int = 700) -> alt.LayerChart:
    """Heatmap layer x module type of intruder counts, the counts written in the cells.

    Tooltips: the module, its count, which of the top-k directions are intruders, the smallest
    ``max|cos|``, the intruders' share of ``||W0 + dW||_F^2`` and the amplification factor.
    """
    frame = intruder_map_frame(records)
    order = [label for _, label in sorted(set(zip(frame["layer_num"], frame["layer"])))]
    types = list(dict.fromkeys(frame["module_type"]))
    step = max(8, min(cell, max_height // max(len(order), 1)))
    frame["shown"] = frame["count"].map(lambda c: "not computed" if c is None or pd.isna(c) else str(int(c)))
    x = alt.X("module_type:N", title="module type", sort=types,
              axis=alt.Axis(labelAngle=-45, labelOverlap=len(types) > 12))
    y = alt.Y("layer:N", title="layer", sort=order)
    tooltip = [alt.Tooltip("name:N", title="module"), alt.Tooltip("shown:N", title="intruders"),
               alt.Tooltip("indices:N", title="which of the top directions"),
               alt.Tooltip("min_cos:Q", title="smallest max|cos|", format=".3f"),
               alt.Tooltip("share:Q", title="share of ||W0+dW||²", format=".3f"),
               alt.Tooltip("amplification:Q", title="amplification", format=".3g")]
    title = f"Intruders per module (top {top_k}, ε {epsilon:g})"  # fits a phone's width
    heat = alt.Chart(frame).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=x, y=y, tooltip=tooltip,
        color=alt.condition("datum.count === null", alt.value("#cccccc"), alt.Color(
            "count:Q", title="intruders", scale=alt.Scale(scheme="oranges", domain=[0, max(1, top_k)]),
            legend=alt.Legend(orient="bottom"))))
    layers = [heat]
    if len(types) <= 12 and len(order) * len(types) <= 600:
        frame["ink"] = np.where(frame["count"].fillna(0) > 0.55 * max(1, top_k), "white", "black")
        layers.append(alt.Chart(frame).mark_text(fontSize=10).encode(
            x=x, y=y, text=alt.Text("shown:N"), tooltip=tooltip,
            color=alt.condition(alt.datum.ink == "white", alt.value("white"), alt.value("black"))))
    return alt.layer(*layers).properties(height=alt.Step(step), title=title)


def cosine_frame(cosines: object, *, intruders: Sequence[int] = ()) -> pd.DataFrame:
    """Long table of ``|cos|``: one row per (fine-tuned direction i, base direction j).

    Parameters
    ----------
    cosines : array_like of shape (k, c)
        ``|cos|`` of ``W0 + dW``'s top-k left singular vectors with ``W0``'s first c.
    intruders : sequence of int
        Which rows are intruders (labelled in the row names).
    """
    cos = np.asarray(cosines, dtype=np.float64)
    marks = set(int(i) for i in intruders)
    rows = [{"direction": _row_label(i, i in marks), "i": i, "j": j, "cos": float(cos[i, j])}
            for i in range(cos.shape[0]) for j in range(cos.shape[1])]
    return pd.DataFrame(rows, columns=["direction", "i", "j", "cos"])


def _row_label(i: int, intruder: bool) -> str:
    return f"{i + 1} (intruder)" if intruder else str(i + 1)


def cosine_chart(cosines: object, *, max_cos: Sequence[float], nearest: Sequence[int],
                 intruders: Sequence[int], epsilon: float, name: str = "") -> tuple[alt.Chart, alt.LayerChart]:
    """The cosine picture of one module, and each direction's best match: two charts, each the
    width of its container (a page draws them side by side, or stacked on a phone).

    Left: ``|cos|`` of every top direction of ``W0 + dW`` (rows, 1 = largest singular value)
    with the base's left singular vectors 1..c (columns); a base direction kept by the update
    is a dark cell (greys: 0 white, 1 black), an intruder a row without one. Right: each row's largest ``|cos|`` over
    *all* base directions, with ``epsilon`` as a rule (bars left of it are intruders).
    """
    frame = cosine_frame(cosines, intruders=intruders)
    k = len(max_cos)
    marks = set(int(i) for i in intruders)
    labels = [_row_label(i, i in marks) for i in range(k)]
    y = alt.Y("direction:N", sort=labels, title="top directions of W0 + dW")
    heat = alt.Chart(frame).mark_rect().encode(
        x=alt.X("j:O", title="left singular vectors of W0 (1 = largest)",
                axis=alt.Axis(labelExpr="datum.value + 1", values=[j for j in range(0, frame["j"].max() + 1, 8)]
                              if len(frame) else [])),
        y=y,
        color=alt.Color("cos:Q", title="|cos|", scale=alt.Scale(scheme="greys", domain=[0, 1]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("direction:N", title="direction of W0 + dW"),
                 alt.Tooltip("j:Q", title="W0 vector (0-based)"), alt.Tooltip("cos:Q", title="|cos|", format=".3f")],
    ).properties(title=alt.Title(["|cos| with the base's directions", name] if name else
                                 "|cos| with the base's directions"),  # two lines: a phone's width
                 height=alt.Step(18),
                 # the container's width: 64 columns at Vega's default step (20 px) are 1280 px
                 width="container")
    best = pd.DataFrame({"direction": labels, "max_cos": [float(c) for c in max_cos],
                         "nearest": [int(j) + 1 for j in nearest],
                         "intruder": ["yes" if i in marks else "no" for i in range(k)]})
    bars = alt.Chart(best).mark_bar().encode(
        x=alt.X("max_cos:Q", title="largest |cos| over all", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("direction:N", sort=labels, title=None),  # its own labels: stacked on a phone
        color=alt.Color("intruder:N", scale=alt.Scale(domain=["yes", "no"], range=[FLOOR_COLOR, "#7f7f7f"]),
                        legend=alt.Legend(orient="bottom", title="intruder")),
        tooltip=[alt.Tooltip("direction:N"), alt.Tooltip("max_cos:Q", title="largest |cos|", format=".3f"),
                 alt.Tooltip("nearest:Q", title="nearest W0 vector (1-based)"), alt.Tooltip("intruder:N")])
    rule = alt.Chart(pd.DataFrame({"epsilon": [float(epsilon)]})).mark_rule(strokeDash=[4, 3]).encode(
        x="epsilon:Q", tooltip=[alt.Tooltip("epsilon:Q", title="epsilon")])
    side = alt.layer(bars, rule).properties(width="container", height=alt.Step(18), title="best match")
    return heat, side
