"""Charts of the Fleet page: stored against recommended rank, energy kept against the cap.

Pure builders (altair and pandas, never streamlit) taking fleet rows
(:func:`lorarank.fleet.audit_member`); failed and screened rows carry no spectra and are left
out of what needs one.
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

from ._common import PALETTE, TARGET_COLOR

__all__ = ["rank_points", "fleet_rank_chart", "cap_curves", "fleet_cap_chart", "MAX_CURVE_POINTS"]

#: Points a cap chart draws at most (curves are thinned past it, every cap kept up to 256).
MAX_CURVE_POINTS = 40_000


def rank_points(rows: Sequence[dict]) -> pd.DataFrame:
    """One point per audited adapter: ``source``, ``stored`` (max_rank), ``recommended`` (the
    largest recommended rank of a module), ``median`` and ``params``."""
    data = [{"source": r["source"], "stored": r["max_rank"], "recommended": r["recommended_rank"]["max"],
             "median": r["recommended_rank"]["median"], "family": r["family"], "params": r["params"]}
            for r in rows if r.get("ok") and r.get("recommended_rank") and r.get("max_rank")]
    return pd.DataFrame(data, columns=["source", "stored", "recommended", "median", "family", "params"])


def fleet_rank_chart(rows: Sequence[dict], *, rule_text: str = "energy 0.99") -> alt.LayerChart:
    """Stored rank (x) against the recommended rank (y), one point per adapter, log2 axes.

    Points under the diagonal hold more rank than the rule needs: shrinking them keeps what the
    rule keeps. Tooltips name the adapter and its numbers.
    """
    frame = rank_points(rows)
    top = float(max([2.0, *frame["stored"].tolist(), *frame["recommended"].tolist()]))
    scale = alt.Scale(type="log", base=2, domain=[1, top * 1.2])
    points = alt.Chart(frame).mark_circle(size=70, opacity=0.75).encode(
        x=alt.X("stored:Q", scale=scale, title="stored rank (largest module)"),
        y=alt.Y("recommended:Q", scale=scale, title=f"recommended rank ({rule_text})"),
        color=alt.Color("family:N", title="family",
                        scale=alt.Scale(range=list(PALETTE)), legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("source:N", title="adapter"), alt.Tooltip("stored:Q", title="stored rank"),
                 alt.Tooltip("recommended:Q", title="recommended (largest module)"),
                 alt.Tooltip("median:Q", title="recommended (median module)"),
                 alt.Tooltip("family:N"), alt.Tooltip("params:Q", format=",")])
    diagonal = alt.Chart(pd.DataFrame({"x": [1, top * 1.2], "y": [1, top * 1.2]})).mark_line(
        color=TARGET_COLOR, strokeDash=[4, 4]).encode(x="x:Q", y="y:Q")
    return (diagonal + points).properties(
        height=360, title="Stored against recommended rank (under the dashed line: more rank than needed)")


def cap_curves(rows: Sequence[dict], *, top: int) -> pd.DataFrame:
    """Long frame ``source, cap, energy`` for caps 1..top (1.0 past an adapter's rank)."""
    records = []
    step = 1
    audited = [r for r in rows if r.get("ok") and r.get("energy_curve")]
    while audited and len(audited) * max(1, top // step) > MAX_CURVE_POINTS:
        step *= 2
    caps = sorted(set([*range(1, top + 1, step), top]))
    for r in audited:
        curve = r["energy_curve"]
        for c in caps:
            records.append({"source": r["source"], "cap": c,
                            "energy": 1.0 if c >= (r["max_rank"] or 0) else curve[min(c, len(curve)) - 1]})
    return pd.DataFrame(records, columns=["source", "cap", "energy"])


def fleet_cap_chart(rows: Sequence[dict], *, cap: int, keep: float, top: int | None = None) -> alt.LayerChart:
    """Energy kept (y) against the serving cap (x), one line per adapter; the chosen cap and the
    energy share to keep drawn as rules. Adapters that fit the cap are drawn in one colour,
    those that must shrink in another."""
    audited = [r for r in rows if r.get("ok") and r.get("energy_curve")]
    top = int(top or max([cap, *(r["max_rank"] or 1 for r in audited)]))
    frame = cap_curves(rows, top=top)
    fits = {r["source"]: (r["max_rank"] or 0) <= cap for r in audited}
    frame["at the cap"] = frame["source"].map(lambda s: "fits as it is" if fits.get(s) else "shrunk")
    lines = alt.Chart(frame).mark_line(strokeWidth=1.5, opacity=0.7, interpolate="step-after").encode(
        x=alt.X("cap:Q", title="serving cap (max_lora_rank)", scale=alt.Scale(domain=[1, top])),
        y=alt.Y("energy:Q", title="share of energy kept", scale=alt.Scale(zero=False)),
        detail="source:N",
        color=alt.Color("at the cap:N", scale=alt.Scale(domain=["fits as it is", "shrunk"],
                                                        range=[PALETTE[2], PALETTE[5]]),
                        legend=alt.Legend(orient="bottom", title=f"at cap {cap}")),
        tooltip=[alt.Tooltip("source:N", title="adapter"), alt.Tooltip("cap:Q"),
                 alt.Tooltip("energy:Q", format=".4f", title="energy kept")])
    rules = alt.Chart(pd.DataFrame({"cap": [cap]})).mark_rule(color=TARGET_COLOR, strokeDash=[4, 4]).encode(
        x="cap:Q", tooltip=[alt.Tooltip("cap:Q", title="chosen cap")])
    keep_rule = alt.Chart(pd.DataFrame({"energy": [keep]})).mark_rule(color=TARGET_COLOR).encode(
        y="energy:Q", tooltip=[alt.Tooltip("energy:Q", title="energy to keep", format=".3f")])
    return (lines + rules + keep_rule).properties(height=360, title="Energy kept against the serving cap")
