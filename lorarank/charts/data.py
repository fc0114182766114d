"""Charts of the data mode (LoRA trained on n pairs): held-out loss against rank for several n.

Pure builders: numbers in, an Altair chart out (no streamlit).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import altair as alt
import numpy as np
import pandas as pd

from ._common import FLOOR_COLOR, PALETTE, TARGET_COLOR, log_axis, log_scale

__all__ = ["data_loss_frame", "data_loss_chart", "loss_focus", "n_label"]

#: Series of :func:`data_loss_frame`, in legend order.
SERIES: tuple[str, ...] = ("held-out loss", "training loss", "rank-r optimum (training)")


def n_label(n: int) -> str:
    """The legend label of ``n`` training pairs: ``"n = 128"``."""
    return f"n = {int(n)}"


def data_loss_frame(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Long table of the losses drawn by :func:`data_loss_chart`.

    Parameters
    ----------
    rows : iterable of mapping
        One per (n, rank) with keys ``samples``, ``rank``, ``heldout_loss``, ``train_loss`` and
        ``optimal_train_loss`` (None for a diverged run's losses).

    Returns
    -------
    DataFrame
        Columns ``n`` (label), ``samples``, ``rank``, ``series`` (one of :data:`SERIES`) and
        ``loss``; missing and non-positive losses dropped (a log axis cannot place them).
    """
    keys = {"held-out loss": "heldout_loss", "training loss": "train_loss",
            "rank-r optimum (training)": "optimal_train_loss"}
    out = []
    for row in rows:
        for series, key in keys.items():
            value = row.get(key)
            if value is None or not np.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
                continue
            out.append((n_label(row["samples"]), int(row["samples"]), int(row["rank"]), series,  # type: ignore[call-overload]
                        float(value)))  # type: ignore[arg-type]
    return pd.DataFrame(out, columns=["n", "samples", "rank", "series", "loss"])


def loss_focus(frame: pd.DataFrame, *, noise_loss: float | None = None,
               margin: float = 1.12, min_gain: float = 3.0) -> tuple[float, float] | None:
    """The loss range worth a log axis's height: from the lowest loss drawn to ``margin`` times
    the highest loss at or past the rank where some n's held-out loss is lowest (the region where
    more rank stops helping or starts to hurt). None when nothing there rises past a
    smaller rank, or when the whole range is less than ``min_gain`` times taller (no zoom needed).

    ``frame`` is :func:`data_loss_frame`'s. Below that rank (r < k) the losses are often 20x
    higher; a log axis reaching them left the interesting region ~20 px tall.
    """
    held = frame[frame["series"] == SERIES[0]]
    if held.empty:
        return None
    best = held.loc[held.groupby("samples")["loss"].idxmin()]
    largest = held.groupby("samples")["rank"].max()
    if not any(int(r) < int(largest[n]) for n, r in zip(best["samples"], best["rank"])):
        return None  # every n's held-out loss falls to the largest rank: show all of it
    start = int(best["rank"].min())
    focus = frame[frame["rank"] >= start]["loss"]
    extra = [float(noise_loss)] if noise_loss is not None and noise_loss > 0 else []
    lo = min([float(frame["loss"].min())] + extra) / margin
    hi = max([float(focus.max())] + extra) * margin
    if float(frame["loss"].max()) <= hi * min_gain:
        return None
    return lo, hi


def data_loss_chart(rows: Iterable[Mapping[str, object]], *, noise_loss: float | None = None,
                    true_rank: int | None = None, height: int = 420) -> alt.LayerChart:
    """Held-out loss against rank r, one colour per n; training loss and its bound dashed.

    Parameters
    ----------
    rows
        As in :func:`data_loss_frame`.
    noise_loss : float, optional
        What ``T`` itself scores on held-out pairs, ``0.5 d_out noise^2``: drawn as a rule.
    true_rank : int, optional
        The target's intrinsic rank k, drawn as a vertical rule.

    Returns
    -------
    alt.LayerChart
        Log-scale rank and loss axes; tooltips give n, r, the series and the loss. When the
        losses of ranks below the best one are far higher than the rest (:func:`loss_focus`),
        the loss axis shows the region from the best rank on and those points sit on the top
        edge as triangles, with their values in the tooltip.
    """
    frame = data_loss_frame(rows)
    focus = loss_focus(frame, noise_loss=noise_loss)
    y_scale = log_scale() if focus is None else alt.Scale(type="log", base=10, zero=False,
                                                          nice=False, domain=list(focus))
    labels = [n_label(n) for n in sorted(frame["samples"].unique())] if len(frame) else []
    # Legends under the plot: beside it they took half a phone's width from the rank axis. The
    # page fits the whole chart, legends included, into ``height``.
    color = alt.Color("n:N", title="training pairs", sort=labels,
                      scale=alt.Scale(domain=labels, range=[PALETTE[i % len(PALETTE)] for i in range(len(labels))]),
                      legend=alt.Legend(orient="bottom", direction="vertical"))
    dash = alt.StrokeDash("series:N", title="loss", sort=list(SERIES),
                          scale=alt.Scale(domain=list(SERIES), range=[[1, 0], [6, 3], [2, 2]]),
                          legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=360))
    ranks = sorted(frame["rank"].unique()) if len(frame) else [1]
    x = alt.X("rank:Q", title="LoRA rank r (log)", scale=alt.Scale(type="log", base=2),
              axis=alt.Axis(values=[int(r) for r in ranks], format="d"))
    # A short axis title (the page's caption defines the loss): the long formula was cut at
    # the plot's height on a phone, where the legends under the plot leave it ~250 px.
    y = alt.Y("loss:Q", title="mean loss per pair (log)", scale=y_scale, axis=log_axis())
    tooltip = [alt.Tooltip("n:N", title="training pairs"), alt.Tooltip("rank:Q", title="r"),
               alt.Tooltip("series:N", title="loss"), alt.Tooltip("loss:Q", format=".5~g")]
    base = alt.Chart(frame)
    clip = focus is not None  # lines leave through the top edge instead of drawing over the title
    lines = base.mark_line(strokeWidth=2, clip=clip).encode(x=x, y=y, color=color, strokeDash=dash,
                                                            detail="series:N", tooltip=tooltip)
    points = base.transform_filter(alt.datum.series == SERIES[0]).mark_point(
        size=60, filled=True, clip=clip).encode(x=x, y=y, color=color, tooltip=tooltip)
    layers: list = [lines, points]
    if noise_loss is not None and noise_loss > 0:
        rule = pd.DataFrame({"loss": [float(noise_loss)], "what": ["T itself on held-out pairs"]})
        layers.append(alt.Chart(rule).mark_rule(color=FLOOR_COLOR, strokeDash=[4, 4]).encode(
            y=alt.Y("loss:Q", scale=y_scale, axis=log_axis()),
            tooltip=[alt.Tooltip("what:N", title="floor"), alt.Tooltip("loss:Q", format=".5~g")]))
    if true_rank is not None:
        k = pd.DataFrame({"rank": [int(true_rank)], "what": ["intrinsic rank k"]})
        layers.append(alt.Chart(k).mark_rule(color=TARGET_COLOR, strokeDash=[2, 3]).encode(
            x=alt.X("rank:Q", scale=alt.Scale(type="log", base=2)),
            tooltip=[alt.Tooltip("what:N", title=" "), alt.Tooltip("rank:Q", title="k")]))
    if focus is not None:
        # One triangle on the top edge per rank whose losses are off the scale, naming them.
        above = frame[frame["loss"] > focus[1]]
        marks = [{"rank": int(rank), "shown": focus[1],
                  "held-out": ", ".join(f"{n}: {loss:.5g}" for n, loss in
                                        zip(group[group["series"] == SERIES[0]]["n"],
                                            group[group["series"] == SERIES[0]]["loss"])) or "-",
                  "training": ", ".join(f"{n}: {loss:.5g}" for n, loss in
                                        zip(group[group["series"] == SERIES[1]]["n"],
                                            group[group["series"] == SERIES[1]]["loss"])) or "-"}
                 for rank, group in above.groupby("rank")]
        layers.append(alt.Chart(pd.DataFrame(marks)).mark_point(
            shape="triangle-up", size=110, filled=True, color=TARGET_COLOR, opacity=1).encode(
            x=x, y=alt.Y("shown:Q", scale=y_scale, axis=log_axis()),
            tooltip=[alt.Tooltip("rank:Q", title="r (losses above the axis)"),
                     alt.Tooltip("held-out:N", title="held-out loss"),
                     alt.Tooltip("training:N", title="training loss")]))
    return alt.layer(*layers).properties(
        height=height, title="Held-out loss against rank for each n (dashed: training loss and its bound)")
