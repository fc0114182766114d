"""Charts of the alpha/r stability lab: error heatmaps, loss curves and update norms.

Pure builders: records of :func:`lorarank.stability.run_stability` (or their dicts) in, an
Altair chart out (no streamlit). The tidy frames behind them are public so tests and downloads
read exactly what is drawn.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from ._common import (TARGET_COLOR, downsample_index, log_axis, log_scale, rank_color_scale,
                      rank_label)

__all__ = [
    "records_frame",
    "stability_heatmap",
    "cell_label",
    "stability_loss_frame",
    "stability_loss_chart",
    "update_norm_chart",
]

#: Colour of a diverged cell (Okabe-Ito vermillion): no error to show, and no colour of the
#: error scale (viridis) is near it.
DIVERGED_COLOR = "#D55E00"

_COLUMNS = ["rule", "rank", "lr", "scale", "rel_err", "diverged", "diverged_at",
            "max_update_norm", "steps_run"]


def _as_dict(record: Any) -> Mapping[str, Any]:
    return record if isinstance(record, Mapping) else record.to_dict()


def records_frame(records: Iterable[Any]) -> pd.DataFrame:
    """One row per cell: the ``stability --json`` record without its loss curve.

    Parameters
    ----------
    records : iterable of StabilityRecord or dict
        Cells of a grid.

    Returns
    -------
    DataFrame
        Columns ``rule, rank, lr, scale, rel_err, diverged, diverged_at, max_update_norm,
        steps_run`` (``steps_run`` = length of the loss curve minus one). ``rel_err`` and
        ``diverged_at`` are missing (NaN/None) where they do not apply.
    """
    rows = []
    for rec in records:
        d = _as_dict(rec)
        rows.append({
            "rule": d["rule"], "rank": int(d["rank"]), "lr": float(d["lr"]),
            "scale": float(d["scale"]),
            "rel_err": np.nan if d["rel_err"] is None else float(d["rel_err"]),
            "diverged": bool(d["diverged"]), "diverged_at": d["diverged_at"],
            "max_update_norm": float(d["max_update_norm"]),
            "steps_run": max(len(d["loss_curve"]) - 1, 0),
        })
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame["diverged_at"] = frame["diverged_at"].astype("Int64")
    return frame


def cell_label(lr: float) -> str:
    """The axis label of a learning rate: ``"0.003"``."""
    return f"{float(lr):g}"


def _heat_frame(records: Iterable[Any]) -> pd.DataFrame:
    frame = records_frame(records)
    frame["lr_label"] = [cell_label(v) for v in frame["lr"]]
    frame["status"] = [f"diverged at step {int(s)}" if d else "trained"
                       for d, s in zip(frame["diverged"], frame["diverged_at"].fillna(0))]
    frame["error_text"] = ["div" if d else f"{e:.3g}"
                           for d, e in zip(frame["diverged"], frame["rel_err"])]
    # the tooltip's error: a word where there is no number (a missing value reads "null")
    frame["error_tip"] = ["diverged" if d else f"{e:.4g}"
                          for d, e in zip(frame["diverged"], frame["rel_err"])]
    return frame


def stability_heatmap(records: Iterable[Any], *, rules: Sequence[str] | None = None,
                      columns: int = 2, panel_width: int = 260,
                      panel_height: int = 190) -> alt.FacetChart:
    """One heatmap per rule: final relative error over (rank, learning rate), diverged marked.

    Parameters
    ----------
    records : iterable of StabilityRecord or dict
        The grid's cells.
    rules : sequence of str, optional
        Panel order (default: order of first appearance).
    columns : int, default=2
        Panels per row.

    Returns
    -------
    alt.FacetChart
        Colour: log-scale final relative error (lighter is better); diverged cells are
        orange with ``div``. The text in each cell is the error (3 significant digits). Tooltips give
        rule, r, s, lr, the error, the step of divergence and the largest update norm.
    """
    frame = _heat_frame(records)
    if rules is None:
        rules = list(dict.fromkeys(frame["rule"]))
    lr_order = [cell_label(v) for v in sorted(set(frame["lr"]))]
    rank_order = sorted(set(int(r) for r in frame["rank"]))
    tooltip = [alt.Tooltip("rule:N"), alt.Tooltip("rank:O", title="r"),
               alt.Tooltip("scale:Q", title="s", format=".4~g"),
               alt.Tooltip("lr:Q", title="learning rate", format="~g"),
               alt.Tooltip("error_tip:N", title="final relative error"),
               alt.Tooltip("status:N"),
               alt.Tooltip("max_update_norm:Q", title="max ||s·B·A||_F", format=".4~g")]
    x = alt.X("rank:O", title="rank r", sort=rank_order, axis=alt.Axis(labelAngle=0))
    y = alt.Y("lr_label:O", title="learning rate", sort=list(reversed(lr_order)))
    errors = frame["rel_err"].dropna()
    lo = float(max(errors.min(), 1e-6)) if len(errors) else 1e-3
    hi = float(max(errors.max(), lo * 10)) if len(errors) else 1.0
    base = alt.Chart(frame)
    trained = base.transform_filter(alt.datum.diverged == False).mark_rect(  # noqa: E712
        stroke="white", strokeWidth=1).encode(
        x=x, y=y, tooltip=tooltip,
        color=alt.Color("rel_err:Q", title="final rel. error (log)",
                        scale=alt.Scale(type="log", scheme="viridis", reverse=True,
                                        domain=[lo, hi]),
                        # under the panel: beside it, it left a phone's panel ~125 px and
                        # the cells' numbers ran into each other
                        legend=alt.Legend(format=".2~g", orient="bottom", titleLimit=360)))
    diverged = base.transform_filter(alt.datum.diverged == True).mark_rect(  # noqa: E712
        stroke="white", strokeWidth=1, color=DIVERGED_COLOR).encode(x=x, y=y, tooltip=tooltip)
    text = base.mark_text(fontSize=11).encode(
        x=x, y=y, text="error_text:N", tooltip=tooltip,
        # white text on the dark half of the scale (and on diverged cells), black elsewhere
        color=alt.condition(f"datum.diverged || datum.rel_err > {math.sqrt(lo * hi)!r}",
                            alt.value("white"), alt.value("black")))
    return (alt.layer(trained, diverged, text, data=frame)
            .properties(width=panel_width, height=panel_height)
            .facet(facet=alt.Facet("rule:N", title=None, sort=list(rules)), columns=columns)
            .properties(title="Final relative error ||s·B·A − T|| / ||T|| per rule "
                              "(orange 'div': diverged)"))


def stability_loss_frame(records: Iterable[Any], *, max_points: int = 300) -> pd.DataFrame:
    """Long table of loss curves, one series per cell.

    Parameters
    ----------
    records : iterable of StabilityRecord or dict
        The cells to draw (a row of the grid, or one cell).
    max_points : int, default=300
        Points kept per curve, denser over the first steps.

    Returns
    -------
    DataFrame
        Columns ``series`` (``"fixed-alpha, r = 4, lr 0.01"``), ``rule``, ``rank``, ``lr``,
        ``step``, ``loss``; non-positive values dropped (log axis).
    """
    parts = []
    for rec in records:
        d = _as_dict(rec)
        curve = np.asarray(d["loss_curve"], dtype=np.float64).ravel()
        idx = downsample_index(curve.size, max_points, log=True)
        part = pd.DataFrame({
            "series": f"{d['rule']}, {rank_label(d['rank'])}, lr {cell_label(d['lr'])}",
            "rule": d["rule"], "rank": int(d["rank"]), "lr": float(d["lr"]),
            "step": idx, "loss": curve[idx]})
        parts.append(part[np.isfinite(part["loss"]) & (part["loss"] > 0)])
    if not parts:
        return pd.DataFrame(columns=["series", "rule", "rank", "lr", "step", "loss"])
    return pd.concat(parts, ignore_index=True)


def stability_loss_chart(records: Sequence[Any], *, color_by: str = "rank",
                         height: int = 300, title: str | None = None) -> alt.LayerChart:
    """Loss against step for the given cells; diverged runs end in a cross.

    Parameters
    ----------
    records : sequence of StabilityRecord or dict
        The cells to draw.
    color_by : {"rank", "lr", "series"}, default="rank"
        What the colour tells apart (``rank`` for a row at one lr, ``lr`` for one rank across
        learning rates).
    title : str, optional

    Returns
    -------
    alt.LayerChart
        Log-scale loss, symlog steps; tooltips give the cell, step and loss.
    """
    if color_by not in ("rank", "lr", "series"):
        raise ValueError(f"color_by should be rank, lr or series, got {color_by!r}")
    dicts = [_as_dict(r) for r in records]
    frame = stability_loss_frame(dicts)
    frame["rank_label"] = [rank_label(r) for r in frame["rank"]]
    frame["lr_label"] = [cell_label(v) for v in frame["lr"]]
    if color_by == "rank":
        color = alt.Color("rank_label:N", title="rank",
                          scale=rank_color_scale(frame["rank"].unique()))
    elif color_by == "lr":
        lrs = sorted(set(frame["lr"]))
        color = alt.Color("lr_label:N", title="learning rate",
                          sort=[cell_label(v) for v in lrs])
    else:
        color = alt.Color("series:N", title="cell")
    tooltip = [alt.Tooltip("rule:N"), alt.Tooltip("rank:Q", title="r"),
               alt.Tooltip("lr:Q", title="learning rate", format="~g"), alt.Tooltip("step:Q"),
               alt.Tooltip("loss:Q", title="0.5·||s·B·A − T||²", format=".4~g")]
    last = int(frame["step"].max()) if len(frame) else 1
    ticks = [t for t in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000)
             if t <= last]
    x = alt.X("step:Q", title="optimiser step (symlog)", scale=alt.Scale(type="symlog"),
              axis=alt.Axis(values=ticks, format="d"))
    y = alt.Y("loss:Q", title="loss (log)", scale=log_scale(),
              axis=log_axis())
    lines = alt.Chart(frame).mark_line(strokeWidth=2).encode(
        x=x, y=y, color=color, detail="series:N", tooltip=tooltip)
    layers = [lines]
    diverged = {f"{d['rule']}, {rank_label(d['rank'])}, lr {cell_label(d['lr'])}": d["diverged_at"]
                for d in dicts if d["diverged"]}
    if diverged and len(frame):
        ends = frame.groupby("series", as_index=False).last()
        ends = ends[ends["series"].isin(list(diverged))].copy()
        ends["status"] = [f"diverged at step {diverged[s]}" for s in ends["series"]]
        layers.append(alt.Chart(ends).mark_point(shape="cross", size=150, filled=True).encode(
            x=x, y=y, color=color,
            tooltip=[alt.Tooltip("series:N", title="cell"), alt.Tooltip("status:N")]))
    return alt.layer(*layers).properties(height=height, title=title or "Training loss")


def update_norm_chart(records: Iterable[Any], *, rule: str | None = None,
                      target_norm: float | None = None, height: int = 280) -> alt.LayerChart:
    """Largest update norm ``||s B A||_F`` over learning rate, one line per rank.

    Parameters
    ----------
    records : iterable of StabilityRecord or dict
        The grid's cells.
    rule : str, optional
        Draw this rule's cells only (default: all cells; pass a rule to read one clearly).
    target_norm : float, optional
        ``||T||_F``, drawn as a dashed rule: a trained update ends near it, a diverging one
        overshoots.

    Returns
    -------
    alt.LayerChart
        Learning rates in order on x, log norm on y; diverged cells drawn as crosses; tooltips
        give the cell and its norm.
    """
    frame = records_frame(records)
    if rule is not None:
        frame = frame[frame["rule"] == rule]
    frame = frame.copy()
    frame["rank_label"] = [rank_label(r) for r in frame["rank"]]
    frame["status"] = ["diverged" if d else "trained" for d in frame["diverged"]]
    tooltip = [alt.Tooltip("rule:N"), alt.Tooltip("rank:Q", title="r"),
               alt.Tooltip("scale:Q", title="s", format=".4~g"),
               alt.Tooltip("lr:Q", title="learning rate", format="~g"),
               alt.Tooltip("max_update_norm:Q", title="max ||s·B·A||_F", format=".4~g"),
               alt.Tooltip("status:N")]
    color = alt.Color("rank_label:N", title="rank", scale=rank_color_scale(frame["rank"].unique()))
    x = alt.X("lr:Q", title="learning rate (log; ticks at the tested values)",
              scale=log_scale(),
              axis=alt.Axis(values=sorted(set(frame["lr"])), format="~g", labelAngle=0,
                            grid=False))
    y = alt.Y("max_update_norm:Q", title="max ||s·B·A||_F over steps (log)", scale=log_scale(),
              axis=log_axis())
    base = alt.Chart(frame)
    layers = [base.mark_line(strokeWidth=1.5, opacity=0.7).encode(x=x, y=y, color=color,
                                                                  detail="rank_label:N",
                                                                  tooltip=tooltip),
              base.mark_point(size=90, filled=True, opacity=1).encode(
                  x=x, y=y, color=color, tooltip=tooltip,
                  shape=alt.Shape("status:N", title="run",
                                  scale=alt.Scale(domain=["trained", "diverged"],
                                                  range=["circle", "cross"]),
                                  legend=None))]  # the title says it; a 2nd legend is clipped
    if target_norm is not None and target_norm > 0:
        rule_frame = pd.DataFrame({"norm": [float(target_norm)], "what": ["||T||_F"]})
        # mid grey: readable on the light and the dark theme (#555 vanished on dark)
        layers.append(alt.Chart(rule_frame).mark_rule(strokeDash=[6, 4], color=TARGET_COLOR,
                                                      strokeWidth=1.5).encode(
            y=alt.Y("norm:Q", scale=log_scale(), axis=log_axis()),
            tooltip=[alt.Tooltip("what:N", title="reference"),
                     alt.Tooltip("norm:Q", title="value", format=".4~g")]))
    # Short, one line: a phone cut "Largest update norm per cell of <rule> (cross: diverged)"
    # before the rule's name, and a two-line title lost its first line's top. The page's
    # caption says what the crosses are.
    title = "Update norm per cell (cross: diverged)"
    if rule:
        title = f"Update norm per cell: {rule}"
    return alt.layer(*layers).properties(height=height, title=title)
