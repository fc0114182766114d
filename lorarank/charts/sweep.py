"""Charts of the Rank sweep: trained spectra against the target, and loss curves.

Pure builders: numbers in, an Altair chart out (no streamlit). The tidy frames behind them are
public so tests and downloads can read exactly what is drawn.
"""

from __future__ import annotations

from typing import Mapping

import altair as alt
import numpy as np
import pandas as pd

from ._common import (FLOOR_COLOR, TARGET_COLOR, downsample_index, log_axis, log_scale,
                      rank_color_scale, rank_label)

__all__ = ["LOG_INDEX_ABOVE", "spectrum_frame", "spectrum_chart", "loss_frame", "loss_chart"]

#: The spectrum chart switches its index axis to a log scale above this many indices.
LOG_INDEX_ABOVE = 40


def spectrum_frame(target_values: object, fitted: Mapping[int, object], *,
                   max_index: int | None = None) -> pd.DataFrame:
    """Long table of the singular values drawn by :func:`spectrum_chart`.

    Parameters
    ----------
    target_values : array_like of shape (q,)
        The target's singular values, descending.
    fitted : mapping of int to array_like of shape (<= r,)
        For each rank r, the singular values of the trained ``s * B @ A`` (empty if diverged).
    max_index : int, optional
        Draw the target's first ``max_index`` values only (default: all).

    Returns
    -------
    DataFrame
        Columns ``panel`` (``"r = 4"``), ``rank``, ``series`` (``"target"`` or ``"trained"``),
        ``index`` (1-based) and ``sigma``. The target is repeated in every panel. Zero values
        are dropped (a log axis cannot place them).
    """
    target = np.asarray(target_values, dtype=np.float64).ravel()
    if max_index is not None:
        target = target[:max_index]
    rows = []
    for rank, values in fitted.items():
        panel = rank_label(rank)
        for series, vals in (("target", target),
                             ("trained", np.asarray(values, dtype=np.float64).ravel())):
            for i, s in enumerate(vals, start=1):
                if np.isfinite(s) and s > 0:
                    rows.append((panel, int(rank), series, i, float(s)))
    return pd.DataFrame(rows, columns=["panel", "rank", "series", "index", "sigma"])


def spectrum_chart(target_values: object, fitted: Mapping[int, object], *,
                   noise_floor: float | None = None, max_index: int | None = None,
                   columns: int = 4, panel_width: int = 230, panel_height: int = 220,
                   log_index: bool | None = None) -> alt.FacetChart:
    """One log-scale panel per rank: the target's spectrum, the trained one, the noise floor.

    Parameters
    ----------
    target_values, fitted, max_index
        As in :func:`spectrum_frame`.
    noise_floor : float, optional
        Singular value below which a direction is noise, drawn as a dashed rule. Not drawn
        when None or not positive (a log axis has no zero).
    columns : int, default=4
        Panels per row.
    log_index : bool, optional
        Draw the index axis on a log scale, so that the first few directions (the ones that
        matter) are not squeezed against the left edge when hundreds are drawn. Default: when
        more than :data:`LOG_INDEX_ABOVE` indices are drawn.

    Returns
    -------
    alt.FacetChart
        Faceted by ``panel``; tooltips give the series, index and value of every point.
    """
    frame = spectrum_frame(target_values, fitted, max_index=max_index)
    frame["noise_floor"] = float(noise_floor) if noise_floor and noise_floor > 0 else np.nan
    tooltip = [alt.Tooltip("panel:N", title="rank"), alt.Tooltip("series:N"),
               alt.Tooltip("index:Q", title="i"), alt.Tooltip("sigma:Q", title="σᵢ", format=".4~g")]
    if log_index is None:
        log_index = bool(len(frame)) and int(frame["index"].max()) > LOG_INDEX_ABOVE
    x = (alt.X("index:Q", title="index i (log)", scale=log_scale(), axis=alt.Axis(format="d"))
         if log_index else
         alt.X("index:Q", title="index i", axis=alt.Axis(tickMinStep=1, format="d")))
    y = alt.Y("sigma:Q", title="singular value σᵢ (log)", scale=log_scale(), axis=log_axis())
    series_color = alt.Color("series:N", title="spectrum",
                             scale=alt.Scale(domain=["target", "trained"],
                                             range=[TARGET_COLOR, "#0072B2"]))
    base = alt.Chart(frame)
    target = base.transform_filter(alt.datum.series == "target").mark_line(
        point=alt.OverlayMarkDef(size=18), strokeWidth=1.5).encode(x=x, y=y, color=series_color,
                                                                   tooltip=tooltip)
    trained = base.transform_filter(alt.datum.series == "trained").mark_point(
        size=70, filled=True, opacity=0.9).encode(x=x, y=y, color=series_color, tooltip=tooltip)
    layers = [target, trained]
    if noise_floor and noise_floor > 0:
        floor = base.transform_aggregate(
            noise_floor="mean(noise_floor)", groupby=["panel"]).mark_rule(
            color=FLOOR_COLOR, strokeDash=[6, 4], strokeWidth=1.5).encode(
            y=alt.Y("noise_floor:Q", scale=log_scale(), axis=log_axis()),
            tooltip=[alt.Tooltip("noise_floor:Q", title="noise floor", format=".4~g")])
        layers.append(floor)
    order = [rank_label(r) for r in sorted(fitted)]
    return (alt.layer(*layers, data=frame)
            .properties(width=panel_width, height=panel_height)
            .facet(facet=alt.Facet("panel:N", title=None, sort=order), columns=columns)
            .resolve_scale(y="shared")
            .properties(title="Singular values of the trained s·B·A against the target "
                              "(dashed: noise floor)"))


def loss_frame(losses: Mapping[int, object], *, max_points: int = 400) -> pd.DataFrame:
    """Long table of the loss curves drawn by :func:`loss_chart`.

    Parameters
    ----------
    losses : mapping of int to array_like of shape (steps + 1,)
        For each rank, the loss ``0.5 ||s B A - T||_F^2`` after 0, 1, ... steps.
    max_points : int, default=400
        Points kept per curve (geometrically spread: dense over the first steps, where the
        symlog step axis is widest; first and last kept).

    Returns
    -------
    DataFrame
        Columns ``rank`` (label ``"r = 4"``), ``step``, ``loss``; non-positive and non-finite
        values dropped.
    """
    parts = []
    for rank, curve in losses.items():
        curve = np.asarray(curve, dtype=np.float64).ravel()
        idx = downsample_index(curve.size, max_points, log=True)
        part = pd.DataFrame({"rank": rank_label(rank), "step": idx, "loss": curve[idx]})
        parts.append(part[np.isfinite(part["loss"]) & (part["loss"] > 0)])
    if not parts:
        return pd.DataFrame(columns=["rank", "step", "loss"])
    return pd.concat(parts, ignore_index=True)


def loss_chart(losses: Mapping[int, object], *, diverged_at: Mapping[int, int | None] | None = None,
               max_points: int = 400, height: int = 300, title: str = "Training loss per rank",
               loss_title: str = "0.5·||s·B·A − T||²") -> alt.LayerChart:
    """Loss against optimiser step, one line per rank; log-scale loss, symlog steps.

    Parameters
    ----------
    losses, max_points
        As in :func:`loss_frame`.
    diverged_at : mapping of int to int or None, optional
        Step at which each rank diverged; such a curve ends with a cross marked "diverged".
    title, loss_title : str
        The chart's title and the loss's name in the tooltips (the exact mode's loss by
        default; the data mode's is a batch mean over pairs).

    Returns
    -------
    alt.LayerChart
    """
    frame = loss_frame(losses, max_points=max_points)
    color = alt.Color("rank:N", title="rank", scale=rank_color_scale(losses))
    tooltip = [alt.Tooltip("rank:N"), alt.Tooltip("step:Q"),
               alt.Tooltip("loss:Q", title=loss_title, format=".4~g")]
    # symlog keeps step 0 and shows the first few dozen steps, where most of the drop happens.
    last = int(frame["step"].max()) if len(frame) else 1
    ticks = [t for t in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000,
                         300_000, 1_000_000) if t <= last]
    x = alt.X("step:Q", title="optimiser step (symlog)", scale=alt.Scale(type="symlog"),
              axis=alt.Axis(values=ticks, format="d"))
    # one y for every layer: a layer without the axis format would bring its own labels
    y = alt.Y("loss:Q", title="loss (log)", scale=log_scale(), axis=log_axis())
    lines = alt.Chart(frame).mark_line(strokeWidth=2).encode(
        x=x, y=y, color=color, tooltip=tooltip)
    layers = [lines]
    ends = [(rank_label(r), int(step)) for r, step in (diverged_at or {}).items() if step is not None]
    if ends:
        last = frame.groupby("rank", as_index=False).last()
        marks = last[last["rank"].isin([lab for lab, _ in ends])].copy()
        marks["status"] = [f"diverged at step {dict(ends)[lab]}" for lab in marks["rank"]]
        layers.append(alt.Chart(marks).mark_point(shape="cross", size=140, filled=True).encode(
            x=x, y=y, color=color,
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("status:N")]))
    return alt.layer(*layers).properties(height=height, title=title)
