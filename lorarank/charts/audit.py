"""Charts of the Adapter audit: rank map, one module's spectrum, budget curve, comparison.

Pure builders: numbers in, an Altair chart out (no streamlit). The tidy frames behind them are
public so tests can read exactly what is drawn.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from ._common import FLOOR_COLOR, PALETTE, TARGET_COLOR, downsample_index, spectrum_axes

__all__ = [
    "rank_map_frame",
    "rank_map_chart",
    "module_spectrum_frame",
    "module_spectrum_chart",
    "budget_frame",
    "budget_chart",
    "overlap_frame",
    "overlap_chart",
    "phi_frame",
    "phi_chart",
]

_KEPT, _DROPPED = "kept", "dropped"
#: Room above a titled chart with a continuous y axis: Streamlit 1.67 otherwise clips the title.
_PAD = {"top": 16, "left": 5, "right": 5, "bottom": 5}
#: Marker shapes of the budget chart's labelled points, in order.
_SHAPES = ("circle", "square", "diamond", "triangle-up", "cross")


def _layer_label(layer: object) -> str:
    return "-" if layer is None or (isinstance(layer, float) and not np.isfinite(layer)) else str(int(layer))


def rank_map_frame(records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Table of the rank map: one row per module.

    Parameters
    ----------
    records : sequence of mapping
        ``{"layer", "module_type", "name", "value"}`` per module
        (:meth:`lorarank.audit.AuditReport.rank_map`); ``layer`` may be None.

    Returns
    -------
    DataFrame
        Columns ``layer`` (label, ``"-"`` when the name has no layer number), ``layer_num``
        (for sorting; -1 without a layer), ``module_type``, ``name`` and ``value``. Two modules
        with the same layer and type (e.g. a text encoder and a UNet) keep their own rows.
    """
    rows = [(_layer_label(r.get("layer")), -1 if r.get("layer") is None else int(r["layer"]),
             str(r.get("module_type")), str(r.get("name")), float(r["value"])) for r in records]
    return pd.DataFrame(rows, columns=["layer", "layer_num", "module_type", "name", "value"])


def rank_map_chart(records: Sequence[Mapping[str, object]], *, metric: str = "recommended rank",
                   cell: int = 22, max_height: int = 700) -> alt.LayerChart:
    """Heatmap layer x module type of one per-module number, values written in the cells.

    Parameters
    ----------
    records
        As in :func:`rank_map_frame`.
    metric : str
        Name of the number, for the title, legend and tooltip.
    cell : int
        Row height in pixels; rows shrink (down to 8 px) to keep the map within ``max_height``.

    Returns
    -------
    alt.LayerChart
        Tooltips give the module, its layer and type and the value. Cells sharing a layer and
        type are averaged by the heatmap; the tooltip lists how many.
    """
    frame = rank_map_frame(records)
    layers = sorted(set(zip(frame["layer_num"], frame["layer"])))
    order = [label for _, label in layers]
    types = list(dict.fromkeys(frame["module_type"]))
    # A step height (not a fixed one): Streamlit 1.67 drops a fixed height of a discrete axis.
    step = max(8, min(cell, max_height // max(len(order), 1)))
    agg = (frame.groupby(["layer", "module_type"], as_index=False, sort=False)
           .agg(value=("value", "mean"), modules=("name", "count"), name=("name", "first")))
    # Every module type keeps its label on a phone: Vega's overlap check compares the rotated
    # labels' upright bounding boxes and dropped every other one of seven (q_proj among them),
    # though at -45° the slanted texts themselves stay ~29 px apart. Past 12 types the columns
    # are too narrow for that, and Vega thins the labels (the tooltip names every cell).
    x = alt.X("module_type:N", title="module type", sort=types,
              axis=alt.Axis(labelAngle=-45, labelOverlap=len(types) > 12))
    y = alt.Y("layer:N", title="layer", sort=order)
    tooltip = [alt.Tooltip("name:N", title="module"), alt.Tooltip("layer:N"),
               alt.Tooltip("module_type:N", title="type"),
               alt.Tooltip("value:Q", title=metric, format=".4~g"),
               alt.Tooltip("modules:Q", title="modules in cell")]
    base = alt.Chart(agg).encode(x=x, y=y)
    heat = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        # The legend under the map: beside it, it took half a phone's width and the module
        # type labels no longer fit (Vega dropped the overlapping ones, e.g. q_proj).
        color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis", zero=True),
                        legend=alt.Legend(orient="bottom", titleLimit=360)),
        tooltip=tooltip)
    layers_ = [heat]
    # Numbers only where a cell can hold one: past 12 module types a phone's cells are a few
    # pixels wide and the numbers ran into each other (a kohya LoKr has ~50 types).
    if len(types) <= 12 and len(order) * len(types) <= 600:
        # Text colour follows the cell's place on the colour scale (domain [min(0, lo), hi],
        # zero=True): black on viridis's light upper part, white on its dark lower part. With
        # every cell equal (one shared rank) the cells are all at the yellow top: black.
        lo, hi = min(0.0, float(agg["value"].min())), float(agg["value"].max())
        frac = (agg["value"] - lo) / (hi - lo) if hi > lo else agg["value"] * 0.0 + (hi > 0)
        agg["ink"] = np.where(frac > 0.55, "black", "white")
        text = alt.Chart(agg).encode(x=x, y=y).mark_text(fontSize=10).encode(
            text=alt.Text("value:Q", format=".3~g"),
            # a condition, not a colour field: a field with scale=None merges with the heat
            # layer's colour scale into null, which Vega-Lite cannot compile
            color=alt.condition(alt.datum.ink == "black", alt.value("black"), alt.value("white")),
            tooltip=tooltip)
        layers_.append(text)
    # The title names the metric only ("per module" is what a map is): a long title is cut
    # with an ellipsis on a phone.
    return alt.layer(*layers_).properties(height=alt.Step(step), title=f"Rank map: {metric}")


def module_spectrum_frame(singular_values: object, *, cut: int) -> pd.DataFrame:
    """The singular values drawn by :func:`module_spectrum_chart`.

    Parameters
    ----------
    singular_values : array_like of shape (q,)
        Of ``scale * B @ A``, descending.
    cut : int
        The recommended rank k: values 1..k are ``kept``, the rest ``dropped``.

    Returns
    -------
    DataFrame
        Columns ``index`` (1-based), ``sigma``, ``status`` and ``energy`` (cumulative share of
        ``sum sigma^2`` up to and including this index). Zero values are dropped (a log axis
        cannot place them).
    """
    s = np.asarray(singular_values, dtype=np.float64).ravel()
    total = float(np.sum(s * s))
    cum = np.cumsum(s * s) / total if total > 0 else np.ones_like(s)
    frame = pd.DataFrame({"index": np.arange(1, s.size + 1), "sigma": s,
                          "status": np.where(np.arange(1, s.size + 1) <= cut, _KEPT, _DROPPED),
                          "energy": cum})
    return frame[np.isfinite(frame["sigma"]) & (frame["sigma"] > 0)].reset_index(drop=True)


def module_spectrum_chart(singular_values: object, *, cut: int, name: str = "",
                          rule: str = "", height: int = 300) -> alt.LayerChart:
    """Log-scale spectrum of one module with the recommended cut marked.

    Parameters
    ----------
    singular_values, cut
        As in :func:`module_spectrum_frame`.
    name : str
        Module name for the title.
    rule : str
        Text of the rule that chose ``cut`` (tooltip of the cut line).

    Returns
    -------
    alt.LayerChart
        Points coloured kept / dropped, a dashed rule between index k and k + 1; tooltips give
        index, value and the cumulative energy share.
    """
    frame = module_spectrum_frame(singular_values, cut=cut)
    q = int(np.asarray(singular_values).size)
    x, y = spectrum_axes(q, sigma_title="singular value σᵢ (log)")
    color = alt.Color("status:N", title=f"at rank {cut}",
                      scale=alt.Scale(domain=[_KEPT, _DROPPED], range=[PALETTE[0], TARGET_COLOR]))
    tooltip = [alt.Tooltip("index:Q", title="i"), alt.Tooltip("sigma:Q", title="σᵢ", format=".4~g"),
               alt.Tooltip("energy:Q", title="energy share up to i", format=".4f"),
               alt.Tooltip("status:N")]
    line = alt.Chart(frame).mark_line(color=TARGET_COLOR, strokeWidth=1).encode(x=x, y=y)
    points = alt.Chart(frame).mark_point(size=70, filled=True).encode(x=x, y=y, color=color,
                                                                      tooltip=tooltip)
    cut_frame = pd.DataFrame({"at": [cut + 0.5], "label": [f"recommended rank {cut}"],
                              "rule": [rule or "-"]})
    rule_mark = alt.Chart(cut_frame).mark_rule(color=FLOOR_COLOR, strokeDash=[6, 4], strokeWidth=2).encode(
        x=alt.X("at:Q"), tooltip=[alt.Tooltip("label:N", title="cut"), alt.Tooltip("rule:N")])
    title = f"Spectrum of {name}" if name else "Spectrum"
    return alt.layer(line, points, rule_mark).properties(height=height, title=title, padding=_PAD)


def budget_frame(curve: Mapping[str, Sequence[float]], *, max_points: int = 800) -> pd.DataFrame:
    """The budget curve drawn by :func:`budget_chart`.

    Parameters
    ----------
    curve : mapping
        :func:`lorarank.audit.budget_curve`: ``directions``, ``params``, ``retained_energy``,
        ``mean_rank`` lists of equal length.
    max_points : int
        Points kept (evenly spread, first and last kept).

    Returns
    -------
    DataFrame
        Columns ``directions``, ``mean_rank``, ``params``, ``retained_energy``.
    """
    frame = pd.DataFrame({k: list(curve[k]) for k in ("directions", "mean_rank", "params",
                                                      "retained_energy")})
    idx = downsample_index(len(frame), max_points)
    return frame.iloc[idx].reset_index(drop=True)


def budget_chart(curve: Mapping[str, Sequence[float]], *,
                 marks: Sequence[Mapping[str, object]] = (), height: int = 380) -> alt.LayerChart:
    """Retained energy of the whole adapter against a global budget (mean rank per module).

    Parameters
    ----------
    curve
        As in :func:`budget_frame`.
    marks : sequence of mapping
        Points to mark, each ``{"label", "mean_rank", "retained_energy", "params"}`` (the chosen
        budget, the rule's recommendation, the adapter as stored).

    height : int
        Of the whole chart, title, axis titles and the three-line legend included (at 300 the
        plot itself was ~100 px high).

    Returns
    -------
    alt.LayerChart
        A step-like line (directions added by largest sigma^2 first) and labelled points;
        tooltips give directions, parameters and retained energy.
    """
    frame = budget_frame(curve)
    x = alt.X("mean_rank:Q", title="global budget: mean rank per module")
    # a short title: Streamlit fits the whole chart, axis titles included, into its height,
    # so a y title longer than the plot squeezes the plot (the caption defines the share)
    y = alt.Y("retained_energy:Q", title="retained energy",
              scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    tooltip = [alt.Tooltip("directions:Q", title="directions kept", format=","),
               alt.Tooltip("mean_rank:Q", title="mean rank", format=".3~f"),
               alt.Tooltip("params:Q", title="parameters", format=","),
               alt.Tooltip("retained_energy:Q", title="retained energy", format=".4f")]
    line = alt.Chart(frame).mark_line(color=PALETTE[0], strokeWidth=2, interpolate="step-after").encode(
        x=x, y=y, tooltip=tooltip)
    layers = [line]
    if marks:
        mframe = pd.DataFrame([{"label": str(m["label"]), "mean_rank": float(m["mean_rank"]),
                                "retained_energy": float(m["retained_energy"]),
                                "params": int(m["params"])} for m in marks])
        labels = list(mframe["label"])
        # one entry per line: three entries side by side run past a phone's width, where
        # Vega clips them inside the chart
        legend = alt.Legend(orient="bottom", direction="vertical")
        color = alt.Color("label:N", title=None, legend=legend,
                          scale=alt.Scale(domain=labels, range=[PALETTE[(i + 1) % len(PALETTE)]
                                                                for i in range(len(labels))]))
        mtip = [alt.Tooltip("label:N", title="point"),
                alt.Tooltip("mean_rank:Q", title="mean rank", format=".3~f"),
                alt.Tooltip("params:Q", title="parameters", format=","),
                alt.Tooltip("retained_energy:Q", title="retained energy", format=".4f")]
        # colour and shape share field and title, so Vega-Lite draws one legend with both
        shape = alt.Shape("label:N", title=None, legend=legend,
                          scale=alt.Scale(domain=labels, range=[_SHAPES[i % len(_SHAPES)]
                                                                for i in range(len(labels))]))
        layers.append(alt.Chart(mframe).mark_point(size=140, filled=True, opacity=1).encode(
            x=x, y=y, color=color, shape=shape, tooltip=mtip))
    return alt.layer(*layers).properties(
        height=height, padding=_PAD,
        title="Retained energy against a global budget")


def overlap_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Per-module overlap of two adapters, long format, for :func:`overlap_chart`.

    Parameters
    ----------
    rows : sequence of mapping
        :meth:`lorarank.compare.Comparison.table` rows (``name``, ``top``, ``top_overlap``,
        ``phi_1_1``, ``chance``), with ``name`` already shortened for display if wanted.

    Returns
    -------
    DataFrame
        Columns ``name``, ``measure`` (``"phi(k, k)"`` or ``"phi(1, 1)"``), ``phi``, ``top``
        and ``chance``.
    """
    out = []
    for r in rows:
        for measure, key in (("phi(k, k)", "top_overlap"), ("phi(1, 1)", "phi_1_1")):
            out.append((str(r["name"]), measure, float(r[key]), int(r["top"]), float(r["chance"])))
    return pd.DataFrame(out, columns=["name", "measure", "phi", "top", "chance"])


def overlap_chart(rows: Sequence[Mapping[str, object]], *, bar: int = 14,
                  max_height: int = 900) -> alt.LayerChart:
    """Bars of subspace similarity per shared module, with the chance level ticked.

    Returns
    -------
    alt.LayerChart
        Grouped horizontal bars phi(k, k) and phi(1, 1) in [0, 1] per module; a grey tick
        at the chance level ``k / d_in``. Tooltips give all three numbers.
    """
    frame = overlap_frame(rows)
    names = list(dict.fromkeys(frame["name"]))
    step = max(6, min(bar, max_height // max(2 * len(names), 1)))
    y = alt.Y("name:N", title=None, sort=names, axis=alt.Axis(labelLimit=360))
    x = alt.X("phi:Q", title="subspace similarity phi", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color("measure:N", title=None,
                      scale=alt.Scale(domain=["phi(k, k)", "phi(1, 1)"], range=[PALETTE[0], PALETTE[1]]),
                      legend=alt.Legend(orient="bottom"))
    tooltip = [alt.Tooltip("name:N", title="module"), alt.Tooltip("measure:N"),
               alt.Tooltip("phi:Q", format=".4f"), alt.Tooltip("top:Q", title="k"),
               alt.Tooltip("chance:Q", title="chance k / d_in", format=".4f")]
    bars = alt.Chart(frame).mark_bar().encode(x=x, y=y, yOffset=alt.YOffset("measure:N"),
                                              color=color, tooltip=tooltip)
    chance = (alt.Chart(frame[frame["measure"] == "phi(k, k)"])
              .mark_tick(color=PALETTE[-1], thickness=2, size=step * 1.6)  # grey: black vanished on dark
              .encode(x=alt.X("chance:Q"), y=y,
                      tooltip=[alt.Tooltip("name:N", title="module"),
                               alt.Tooltip("chance:Q", title="chance k / d_in", format=".4f")]))
    return alt.layer(bars, chance).properties(
        height=alt.Step(2 * step), title="Top-direction overlap per module")  # short: a phone cuts a long one (the caption says the rest)


def phi_frame(phi: object) -> pd.DataFrame:
    """Long table of a ``phi(i, j)`` matrix: columns ``i``, ``j`` (1-based) and ``phi``."""
    m = np.asarray(phi, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D phi matrix, got shape {m.shape}")
    i, j = np.meshgrid(np.arange(1, m.shape[0] + 1), np.arange(1, m.shape[1] + 1), indexing="ij")
    return pd.DataFrame({"i": i.ravel(), "j": j.ravel(), "phi": m.ravel()})


def phi_chart(phi: object, *, name: str = "", label_a: str = "A", label_b: str = "B",
              size: int = 320) -> alt.Chart:
    """Heatmap of ``phi(i, j)`` for one module (Hu et al. 2022, figure 3 style).

    Returns
    -------
    alt.Chart
        ``i`` (top-i directions of adapter A) down, ``j`` (of B) across, colour in [0, 1];
        tooltips give i, j and phi.
    """
    frame = phi_frame(phi)
    title = f"phi(i, j) of {name}" if name else "phi(i, j)"
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("j:O", title=f"j: top directions of {label_b}"),
        y=alt.Y("i:O", title=f"i: top directions of {label_a}"),
        color=alt.Color("phi:Q", title="phi", scale=alt.Scale(domain=[0, 1], scheme="viridis")),
        tooltip=[alt.Tooltip("i:O"), alt.Tooltip("j:O"), alt.Tooltip("phi:Q", format=".4f")],
    ).properties(width=alt.Step(max(6, size // max(frame["j"].max(), 1))),
                 height=alt.Step(max(6, size // max(frame["i"].max(), 1))), title=title)
