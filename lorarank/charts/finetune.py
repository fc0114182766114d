"""Charts of a full fine-tune's update ``W_ft - W0``: rank map, rank a LoRA needs, spectrum.

Pure builders (numbers in, an Altair chart out). An energy rank that was not reached within
the values computed is unknown ("> K"): the map draws it as a grey cell labelled "> K", the
rank chart as a hollow marker at K with a tooltip that says so; it is never drawn as a number.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from ..finetune import FINETUNE_METRICS  # defined with the table (the page's chooser needs no Altair)
from ._common import FLOOR_COLOR, PALETTE, TARGET_COLOR, log_scale, spectrum_axes

__all__ = ["FINETUNE_METRICS", "finetune_map_frame", "finetune_map_chart", "rank_needed_frame",
           "rank_needed_chart", "finetune_spectrum_frame", "finetune_spectrum_chart"]

_UNKNOWN = "#9e9e9e"
_PAD = {"top": 16, "left": 5, "right": 5, "bottom": 5}


def _layer_label(layer: object) -> str:
    return "-" if layer is None else str(int(layer))


def finetune_map_frame(records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """One row per module: ``layer``, ``layer_num``, ``module_type``, ``name``, ``value`` (NaN
    when unknown), ``label`` (the value as text, ``"> K"`` when unknown).

    Parameters
    ----------
    records : sequence of mapping
        ``{"layer", "module_type", "name", "value", "computed"}``; ``value`` None means more
        than ``computed``.
    """
    rows = []
    for r in records:
        value = r.get("value")
        known = value is not None
        rows.append((_layer_label(r.get("layer")), -1 if r.get("layer") is None else int(r["layer"]),
                     str(r.get("module_type")), str(r.get("name")),
                     float(value) if known else float("nan"),
                     f"{float(value):.3g}" if known else f"> {int(r.get('computed') or 0)}"))
    return pd.DataFrame(rows, columns=["layer", "layer_num", "module_type", "name", "value", "label"])


def finetune_map_chart(records: Sequence[Mapping[str, object]], *, metric: str,
                       cell: int = 22, max_height: int = 700) -> alt.LayerChart:
    """Heatmap layer x module type of one per-module number, unknown cells grey "> K".

    Cells sharing a layer and a type (e.g. ``embed_tokens`` and ``lm_head``, both without a
    layer) are drawn side by side by name, never averaged.
    """
    frame = finetune_map_frame(records)
    frame["column"] = frame["module_type"]
    dup = frame.duplicated(["layer", "column"], keep=False)
    frame.loc[dup, "column"] = frame.loc[dup, "name"]
    layers = sorted(set(zip(frame["layer_num"], frame["layer"])))
    order = [label for _, label in layers]
    columns = list(dict.fromkeys(frame.sort_values("layer_num", kind="stable")["column"]))
    step = max(8, min(cell, max_height // max(len(order), 1)))
    x = alt.X("column:N", title="module type", sort=columns,
              axis=alt.Axis(labelAngle=-45, labelOverlap=len(columns) > 12))
    y = alt.Y("layer:N", title="layer", sort=order)
    tooltip = [alt.Tooltip("name:N", title="module"), alt.Tooltip("layer:N"),
               alt.Tooltip("module_type:N", title="type"), alt.Tooltip("label:N", title=metric)]
    known = frame[frame["value"].notna()]
    unknown = frame[frame["value"].isna()]
    layers_ = [alt.Chart(known).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=x, y=y, tooltip=tooltip,
        color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis", zero=True),
                        legend=alt.Legend(orient="bottom", titleLimit=360)))]
    if len(unknown):
        layers_.append(alt.Chart(unknown).mark_rect(stroke="white", strokeWidth=0.5, color=_UNKNOWN)
                       .encode(x=x, y=y, tooltip=tooltip))
    if len(columns) <= 12 and len(order) * len(columns) <= 600:
        lo = min(0.0, float(known["value"].min())) if len(known) else 0.0
        hi = float(known["value"].max()) if len(known) else 1.0
        frame["ink"] = np.where(frame["value"].isna(), "black",
                                np.where(((frame["value"] - lo) / (hi - lo) if hi > lo else frame["value"] * 0 + 1) > 0.55,
                                         "black", "white"))
        layers_.append(alt.Chart(frame).mark_text(fontSize=10).encode(
            x=x, y=y, text=alt.Text("label:N"), tooltip=tooltip,
            color=alt.condition(alt.datum.ink == "black", alt.value("black"), alt.value("white"))))
    return alt.layer(*layers_).properties(height=alt.Step(step), title=f"Rank map: {metric}")


def rank_needed_frame(modules: Sequence[Mapping[str, object]],
                      thresholds: Sequence[float] = (0.5, 0.9, 0.99)) -> pd.DataFrame:
    """One row per (module, energy share): ``module_type``, ``name``, ``share`` (``"50 %"``),
    ``rank`` (the energy rank, or the values computed when unknown), ``known``, ``label``.

    ``modules`` are ``FinetuneModule.to_dict()`` documents; unchanged modules are left out.
    """
    rows = []
    # layered module types first, in layer order; then embeddings, lm_head and the like
    ordered = sorted(modules, key=lambda m: (m.get("layer") is None, m.get("layer") or 0))
    for m in ordered:
        if "unchanged" in (m.get("flags") or []):
            continue
        for t in thresholds:
            k = (m.get("energy_rank") or {}).get(f"{t:g}")
            rows.append((str(m.get("module_type")), str(m.get("name")), f"{100 * t:g} %",
                         float(k if k is not None else m.get("computed") or 1), k is not None,
                         str(k) if k is not None else f"> {m.get('computed')}"))
    return pd.DataFrame(rows, columns=["module_type", "name", "share", "rank", "known", "label"])


def rank_needed_chart(modules: Sequence[Mapping[str, object]], *,
                      thresholds: Sequence[float] = (0.5, 0.9, 0.99), height: int = 320) -> alt.LayerChart:
    """The LoRA rank each module needs per energy share, by module type (log scale).

    One point per module and share (filled: the rank; a hollow triangle at K: more than the K
    values computed), a tick at each type's median of the known ranks.
    """
    frame = rank_needed_frame(modules, thresholds)
    shares = [f"{100 * t:g} %" for t in thresholds]
    types = list(dict.fromkeys(frame["module_type"]))
    color = alt.Color("share:N", title="energy kept", sort=shares,
                      scale=alt.Scale(domain=shares, range=list(PALETTE[:len(shares)])),
                      legend=alt.Legend(orient="bottom"))
    x = alt.X("module_type:N", title="module type", sort=types, axis=alt.Axis(labelAngle=-45))
    xo = alt.XOffset("share:N", sort=shares)
    y = alt.Y("rank:Q", title="LoRA rank needed (log)", scale=log_scale(),
              axis=alt.Axis(format="~g"))
    tooltip = [alt.Tooltip("name:N", title="module"), alt.Tooltip("share:N", title="energy kept"),
               alt.Tooltip("label:N", title="rank needed")]
    points = alt.Chart(frame[frame["known"]]).mark_point(size=45, filled=True, opacity=0.9).encode(
        x=x, xOffset=xo, y=y, color=color, tooltip=tooltip)
    more = alt.Chart(frame[~frame["known"]]).mark_point(size=70, filled=False, shape="triangle-up",
                                                        strokeWidth=1.5).encode(
        x=x, xOffset=xo, y=y, color=color, tooltip=tooltip)
    known = frame[frame["known"]]
    med = (known.groupby(["module_type", "share"], as_index=False, sort=False)
           .agg(median=("rank", "median"), modules=("name", "count")))
    ticks = alt.Chart(med).mark_tick(thickness=2, size=18).encode(
        x=x, xOffset=xo, y=alt.Y("median:Q", scale=log_scale()), color=color,
        tooltip=[alt.Tooltip("module_type:N", title="type"), alt.Tooltip("share:N", title="energy kept"),
                 alt.Tooltip("median:Q", title="median rank", format=".3~g"),
                 alt.Tooltip("modules:Q", title="modules with a known rank")])
    return alt.layer(points, more, ticks).properties(height=height, padding=_PAD,
                                               title="LoRA rank each module needs")


def finetune_spectrum_frame(singular_values: object, *, energy: float) -> pd.DataFrame:
    """``index``, ``sigma`` and ``share`` (``sum_{j<=i} sigma_j^2 / ||dW||_F^2``, the exact
    total) of the values given; zeros dropped (a log axis cannot place them)."""
    s = np.asarray(singular_values, dtype=np.float64).ravel()
    share = np.cumsum(s * s) / energy if energy > 0 else np.zeros_like(s)
    frame = pd.DataFrame({"index": np.arange(1, s.size + 1), "sigma": s, "share": share})
    return frame[np.isfinite(frame["sigma"]) & (frame["sigma"] > 0)].reset_index(drop=True)


def finetune_spectrum_chart(singular_values: object, *, energy: float, name: str = "",
                            energy_rank: Mapping[str, int | None] | None = None,
                            height: int = 300) -> alt.LayerChart:
    """Log-scale top singular values of one module's ``W_ft - W0`` with its energy ranks marked.

    Tooltips give each value and the share of the update's whole energy up to it; dashed
    rules sit after k(t) for each known energy rank.
    """
    frame = finetune_spectrum_frame(singular_values, energy=energy)
    q = int(np.asarray(singular_values).size)
    x, y = spectrum_axes(q, sigma_title="singular value σᵢ of W_ft - W0 (log)")
    tooltip = [alt.Tooltip("index:Q", title="i"), alt.Tooltip("sigma:Q", title="σᵢ", format=".4~g"),
               alt.Tooltip("share:Q", title="share of ||dW||_F^2 up to i", format=".4f")]
    line = alt.Chart(frame).mark_line(color=TARGET_COLOR, strokeWidth=1).encode(x=x, y=y)
    points = alt.Chart(frame).mark_point(size=50, filled=True, color=PALETTE[0]).encode(
        x=x, y=y, tooltip=tooltip)
    marks = [(t, k) for t, k in (energy_rank or {}).items() if k is not None and 0 < k <= q]
    layers = [line, points]
    if marks:
        rules = pd.DataFrame({"at": [k + 0.5 for _, k in marks],
                              "label": [f"k({t}) = {k}: {100 * float(t):g} % of the energy" for t, k in marks]})
        layers.append(alt.Chart(rules).mark_rule(color=FLOOR_COLOR, strokeDash=[6, 4], strokeWidth=1.5)
                      .encode(x=alt.X("at:Q"), tooltip=[alt.Tooltip("label:N", title="energy rank")]))
    title = f"Spectrum of {name}" if name else "Spectrum"
    return alt.layer(*layers).properties(height=height, title=title, padding=_PAD)
