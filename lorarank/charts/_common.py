"""Theme and helpers shared by the chart builders (Altair only, no streamlit)."""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Mapping, Sequence

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
    "split_facets",
    "LOG_LABELS",
    "log_axis",
    "spectrum_axes",
]

#: Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), in order;
#: its black is replaced by a mid grey, which reads on a light and on a dark page alike.
PALETTE: tuple[str, ...] = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999",
)
#: The reference series (a target spectrum), the noise floor and reference rules (||T||, k).
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


#: Tick labels of a log axis that can span 1e-3 .. 1e16, in one style: plain numbers from 0.001
#: to below 10000 ("0.01", "300"), an exponent outside ("1e+4", "1e+16", "1e-5"). Vega's own
#: "~g" switches style at 1e6 and a layer without the format falls back to long integers
#: ("10000000000" beside "1e+16").
LOG_LABELS = ("datum.value >= 10000 || datum.value < 0.001 ? format(datum.value, '.0e') "
              ": format(datum.value, '~g')")


def log_axis(**kwargs: Any) -> alt.Axis:
    """The axis of a log-scale value channel, labelled with :data:`LOG_LABELS`."""
    return alt.Axis(labelExpr=LOG_LABELS, **{"tickCount": 6, **kwargs})


def log_scale() -> alt.Scale:
    """A base-10 logarithmic scale that does not pad to zero."""
    return alt.Scale(type="log", base=10, zero=False, nice=False)


def spectrum_axes(q: int, *, sigma_title: str) -> tuple[alt.X, alt.Y]:
    """The x and y channels of a chart of one module's ``q`` singular values: the index i
    (whole ticks, 1..q with half a step either side) and σᵢ on a log scale titled ``sigma_title``."""
    x = alt.X("index:Q", title="index i", scale=alt.Scale(domain=[0.5, max(q, 1) + 0.5], nice=False),
              axis=alt.Axis(tickMinStep=1, format="d"))
    y = alt.Y("sigma:Q", title=sigma_title, scale=log_scale(), axis=alt.Axis(tickCount=6, format="~g"))
    return x, y


def _field_values(rows: Sequence[Mapping[str, Any]], field: str) -> list[float]:
    out = []
    for row in rows:
        value = row.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def split_facets(spec: Mapping[str, Any], *, legend: bool = True) -> tuple[str | None, list[dict]]:
    """Split a faceted Vega-Lite dict into one single-view dict per panel, sized to a container.

    Vega-Lite sizes a facet in pixels (``width: "container"`` works for single and layered
    views only), so a faceted chart cannot follow its container: it overflows a narrow page. A
    page can instead lay the panels out in a responsive grid (Streamlit columns, which stack
    on a phone), one ``width: "container"`` chart each.

    The panels keep what made the facet one chart: every quantitative ``x``, ``y`` and
    ``color`` channel gets the domain of the whole data set (the union over the layers drawing
    into it, positive values only for a log scale) unless its scale already sets one, so the
    panels share their axes and colours. Each panel holds only its own rows of the data.

    Parameters
    ----------
    spec : dict
        ``chart.to_dict()`` of an ``alt.FacetChart`` with a ``facet`` field, one inline named
        data set (Altair's ``datasets``) and a single or layered inner ``spec``.

    Returns
    -------
    title : str or None
        The facet chart's title (the panels are titled with their facet value).
    panels : list of dict
        One Vega-Lite dict per facet value, in the facet's sort order (else first appearance).
        A spec without ``facet`` is returned as the only panel.
    legend : bool, default=True
        False drops the legends from the panels (say what the colours mean beside them):
        a legend repeated in every narrow panel takes a third of its width.
    """
    spec = copy.deepcopy(dict(spec))
    title = spec.pop("title", None)
    if isinstance(title, Mapping):
        title = title.get("text")
    if "facet" not in spec or "spec" not in spec:
        return title, [spec]
    facet = spec.pop("facet")
    inner = spec.pop("spec")
    spec.pop("columns", None)
    resolve = spec.pop("resolve", {}).get("scale", {})
    field = facet["field"]
    datasets = spec.pop("datasets", {})
    data_name = spec.pop("data", {}).get("name")
    rows = list(datasets.get(data_name, []))
    order = facet.get("sort") if isinstance(facet.get("sort"), list) else None
    if order is None:
        order = list(dict.fromkeys(row.get(field) for row in rows))
    layers = inner.get("layer", [inner])
    # shared domains: union over the layers' fields of each quantitative channel
    for channel in ("x", "y", "color"):
        if resolve.get(channel) == "independent":
            continue
        encs = [layer.get("encoding", {}).get(channel) for layer in layers]
        encs = [e for e in encs if isinstance(e, dict) and e.get("field")
                and e.get("type") == "quantitative"]
        if not encs or any("domain" in (e.get("scale") or {}) for e in encs):
            continue
        log = any((e.get("scale") or {}).get("type") == "log" for e in encs)
        values = [v for e in encs for v in _field_values(rows, e["field"]) if v > 0 or not log]
        if not values:
            continue
        for e in encs:
            e["scale"] = {**(e.get("scale") or {}), "domain": [min(values), max(values)]}
    if not legend:
        for layer in layers:
            for channel in ("color", "shape", "size", "opacity", "strokeDash"):
                enc = layer.get("encoding", {}).get(channel)
                if isinstance(enc, dict) and "field" in enc:
                    enc["legend"] = None
    y_encs = [layer.get("encoding", {}).get("y") for layer in layers]
    y_encs = [e for e in y_encs if isinstance(e, dict) and e.get("field")]
    y_discrete = bool(y_encs) and y_encs[0].get("type") in ("nominal", "ordinal")
    y_levels = {row.get(y_encs[0]["field"]) for row in rows} if y_discrete else set()
    panels = []
    for value in order:
        panel = {**spec, **{k: v for k, v in inner.items() if k not in ("width", "height")}}
        panel["data"] = {"values": [row for row in rows if row.get(field) == value]}
        panel["width"] = "container"
        # fit the width only: the height stays the plot's, so the title and axes add to it
        panel["autosize"] = {"type": "fit-x", "contains": "padding"}
        if isinstance(inner.get("height"), (int, float)) and y_discrete:
            # a discrete y axis takes a step height (Streamlit drops a fixed one there)
            panel["height"] = {"step": max(8, int(inner["height"]) // max(len(y_levels), 1))}
        elif "height" in inner:
            panel["height"] = inner["height"]
        panel["title"] = str(value)
        panels.append(panel)
    return title, panels
