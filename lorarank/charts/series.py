"""Charts of rank over training (Adapter audit, a run's checkpoints): rank and phi over steps.

Pure builders: the rows of :meth:`lorarank.series.SeriesReport.table` in, an Altair chart out
(no streamlit). The layer x module heatmap at one step is :func:`lorarank.charts.audit.rank_map_chart`
on that checkpoint's audit. The tidy frames behind the charts are public so tests can read
exactly what is drawn.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import pandas as pd

from ..series import SERIES_METRICS  # defined with the table (the page's chooser needs no Altair)
from ._common import PALETTE

__all__ = [
    "SERIES_METRICS",
    "rank_over_steps_frame",
    "rank_over_steps_chart",
    "phi_over_steps_frame",
    "phi_over_steps_chart",
]

_PAD = {"top": 16, "left": 5, "right": 5, "bottom": 5}
_MODULE_COLOR = PALETTE[-1]  # mid grey, as PALETTE replaces black: black vanished on the dark theme
_NEXT, _LAST = "next checkpoint", "last checkpoint"  # legend "phi with": short enough for a phone


def _type_colors(types: Sequence[str], module: str | None) -> alt.Scale:
    domain = list(types) + ([module] if module else [])
    colors = [PALETTE[i % (len(PALETTE) - 1)] for i in range(len(types))] + ([_MODULE_COLOR] if module else [])
    return alt.Scale(domain=domain, range=colors)


def rank_over_steps_frame(rows: Sequence[Mapping[str, object]], *, metric: str = "recommended_rank",
                          module: str | None = None, label: str = "name") -> pd.DataFrame:
    """One row per (step, line): the mean of ``metric`` over the modules of a type, and one module.

    Parameters
    ----------
    rows : sequence of mapping
        :meth:`lorarank.series.SeriesReport.table` rows (``step``, ``module``, ``module_type``
        and ``metric``).
    metric : str
        A key of :data:`SERIES_METRICS` (any numeric column of the rows works).
    module : str, optional
        A module (its ``label`` field) drawn as its own line.
    label : str
        The row field naming a module, ``"module"`` by default in the engine's rows; a page may
        add a shortened ``name``.

    Returns
    -------
    DataFrame
        Columns ``step``, ``line`` (the module type, or the module's name), ``kind`` (``"type"``
        or ``"module"``), ``value`` (mean over the type's modules), ``min``, ``max`` and
        ``modules`` (how many were averaged).
    """
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=["step", "line", "kind", "value", "min", "max", "modules"])
    if metric not in frame:
        raise ValueError(f"metric should be a column of the rows ({', '.join(SERIES_METRICS)}); got {metric!r}")
    key = label if label in frame else "module"
    frame["value"] = frame[metric].astype(float)
    types = (frame.groupby(["step", "module_type"], sort=False)["value"]
             .agg(["mean", "min", "max", "count"]).reset_index())
    types = types.rename(columns={"module_type": "line", "mean": "value", "count": "modules"})
    types["kind"] = "type"
    parts = [types]
    if module is not None:
        one = frame[frame[key] == module][["step", "value"]].copy()
        one["line"], one["kind"], one["min"], one["max"], one["modules"] = module, "module", one["value"], one["value"], 1
        parts.append(one)
    out = pd.concat(parts, ignore_index=True)
    return out[["step", "line", "kind", "value", "min", "max", "modules"]].sort_values(
        ["kind", "line", "step"], kind="stable").reset_index(drop=True)


def rank_over_steps_chart(rows: Sequence[Mapping[str, object]], *, metric: str = "recommended_rank",
                          module: str | None = None, label: str = "name",
                          settled_step: int | None = None, height: int = 420) -> alt.LayerChart:
    """A module-type line per type (mean over layers) of ``metric`` against the step.

    Parameters
    ----------
    rows, metric, module, label
        As in :func:`rank_over_steps_frame`; ``module`` is drawn dashed in grey.
    settled_step : int, optional
        Marked with a vertical rule: from there on no module's recommended rank changed.

    Returns
    -------
    alt.LayerChart
        Tooltips give step, line, the mean and the min..max over the type's modules.
    """
    frame = rank_over_steps_frame(rows, metric=metric, module=module, label=label)
    name = SERIES_METRICS.get(metric, metric)
    types = list(dict.fromkeys(frame.loc[frame["kind"] == "type", "line"]))
    x = alt.X("step:Q", title="training step", axis=alt.Axis(format="d"))
    y = alt.Y("value:Q", title=f"{name} (mean over layers)", scale=alt.Scale(zero=True))
    color = alt.Color("line:N", title="module type / module", scale=_type_colors(types, module),
                      legend=alt.Legend(orient="bottom", labelLimit=360))
    tooltip = [alt.Tooltip("step:Q"), alt.Tooltip("line:N", title="module type / module"),
               alt.Tooltip("value:Q", title=f"{name} (mean)", format=".4~g"),
               alt.Tooltip("min:Q", format=".4~g"), alt.Tooltip("max:Q", format=".4~g"),
               alt.Tooltip("modules:Q", title="modules averaged")]
    dash = alt.StrokeDash("kind:N", legend=None,
                          scale=alt.Scale(domain=["type", "module"], range=[[1, 0], [6, 3]]))
    lines = alt.Chart(frame).mark_line(strokeWidth=2).encode(x=x, y=y, color=color, strokeDash=dash)
    points = alt.Chart(frame).mark_point(filled=True, size=60).encode(x=x, y=y, color=color, tooltip=tooltip)
    layers = [lines, points]
    if settled_step is not None:
        settled = pd.DataFrame({"step": [settled_step],
                                "what": [f"settled at step {settled_step}: no recommended rank changed after"]})
        layers.append(alt.Chart(settled).mark_rule(color="#888888", strokeDash=[4, 4], strokeWidth=2).encode(
            x=alt.X("step:Q"), tooltip=[alt.Tooltip("what:N", title="settled")]))
    return alt.layer(*layers).properties(height=height, padding=_PAD,
                                         title=f"{name[0].upper()}{name[1:]} over training steps")


def phi_over_steps_frame(rows: Sequence[Mapping[str, object]], *, module: str | None = None,
                         label: str = "name") -> pd.DataFrame:
    """phi with the next and with the last checkpoint, mean per module type (and one module).

    Parameters
    ----------
    rows : sequence of mapping
        :meth:`lorarank.series.SeriesReport.table` rows (``step``, ``module_type``,
        ``phi_next``, ``phi_last``); a row's missing ``phi_next`` (the last step) is skipped.
    module, label
        As in :func:`rank_over_steps_frame`.

    Returns
    -------
    DataFrame
        Columns ``step``, ``line``, ``kind``, ``measure`` (with the next / the last
        checkpoint), ``phi`` (mean), ``min``, ``max``, ``modules``.
    """
    frame = pd.DataFrame(list(rows))
    columns = ["step", "line", "kind", "measure", "phi", "min", "max", "modules"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    key = label if label in frame else "module"
    parts = []
    for measure, col in ((_NEXT, "phi_next"), (_LAST, "phi_last")):
        sub = frame[frame[col].notna()].copy()
        sub["phi"] = sub[col].astype(float)
        agg = (sub.groupby(["step", "module_type"], sort=False)["phi"]
               .agg(["mean", "min", "max", "count"]).reset_index()
               .rename(columns={"module_type": "line", "mean": "phi", "count": "modules"}))
        agg["kind"], agg["measure"] = "type", measure
        parts.append(agg)
        if module is not None:
            one = sub[sub[key] == module][["step", "phi"]].copy()
            one["line"], one["kind"], one["measure"] = module, "module", measure
            one["min"], one["max"], one["modules"] = one["phi"], one["phi"], 1
            parts.append(one)
    out = pd.concat(parts, ignore_index=True)
    return out[columns].sort_values(["measure", "kind", "line", "step"], kind="stable").reset_index(drop=True)


def phi_over_steps_chart(rows: Sequence[Mapping[str, object]], *, module: str | None = None,
                         label: str = "name", top: int = 4, chance: float | None = None,
                         height: int = 400) -> alt.LayerChart:
    """Subspace similarity phi(k, k) of each step's A factors with the next and the last checkpoint.

    Parameters
    ----------
    rows, module, label
        As in :func:`phi_over_steps_frame`.
    top : int
        The ``top`` of the series (k = min(top, r)), for the axis title.
    chance : float, optional
        Mean chance level ``k / d_in``, drawn as a dotted rule.

    Returns
    -------
    alt.LayerChart
        Solid lines: with the next checkpoint (drawn at the earlier step); dashed: with the
        last. Colour per module type (grey: the chosen module). y in [0, 1].
    """
    frame = phi_over_steps_frame(rows, module=module, label=label)
    types = list(dict.fromkeys(frame.loc[frame["kind"] == "type", "line"]))
    x = alt.X("step:Q", title="training step", axis=alt.Axis(format="d"))
    y = alt.Y("phi:Q", title=f"phi(k, k), k = min({top}, r)", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color("line:N", title="module type / module", scale=_type_colors(types, module),
                      legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=360))
    # Both legends in columns under the plot: side by side in rows the second ran off a phone.
    dash = alt.StrokeDash("measure:N", title="phi with", scale=alt.Scale(domain=[_NEXT, _LAST],
                                                                   range=[[1, 0], [6, 3]]),
                          legend=alt.Legend(orient="bottom", direction="vertical"))
    tooltip = [alt.Tooltip("step:Q"), alt.Tooltip("line:N", title="module type / module"),
               alt.Tooltip("measure:N", title="phi"), alt.Tooltip("phi:Q", title="phi (mean)", format=".4f"),
               alt.Tooltip("min:Q", format=".4f"), alt.Tooltip("max:Q", format=".4f"),
               alt.Tooltip("modules:Q", title="modules averaged")]
    detail = alt.Detail("measure:N")
    lines = alt.Chart(frame).mark_line(strokeWidth=2).encode(x=x, y=y, color=color, strokeDash=dash,
                                                             detail=detail)
    points = alt.Chart(frame).mark_point(filled=True, size=50).encode(x=x, y=y, color=color, tooltip=tooltip)
    layers = [lines, points]
    if chance is not None:
        level = pd.DataFrame({"phi": [float(chance)], "what": [f"chance k / d_in = {chance:.4f}"]})
        layers.append(alt.Chart(level).mark_rule(color="#888888", strokeDash=[2, 3]).encode(
            y=alt.Y("phi:Q"), tooltip=[alt.Tooltip("what:N", title="chance level")]))
    return alt.layer(*layers).properties(height=height, padding=_PAD,
                                         title="Subspace similarity of A over training")
