"""The Adapter audit's "Against the base" view: intruder dimensions, amplification, mitigation,
and PiSSA / OLoRA adapters read right.

URL-bound settings: ``top_k``, ``epsilon`` (the intruder definition), ``lambda`` (mitigation)
and ``base_module`` (the module of the cosine picture). The base weights are an upload (never in
the URL); with the synthetic demo adapter on, a synthetic demo base is used, so a copied link
``?demo=true&tab=Against+the+base&...`` reproduces the view on a cold server.

Engine calls go through ``st.cache_data`` wrappers keyed by the uploads' identities; the base's
SVDs live in the process-wide :func:`lorarank.base_svd.shared_cache`, shared by every session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from lorarank.adapters import adapter_files, load_adapter_bytes, writable
from lorarank.against_base import (INTRUDER_COLUMNS, intruder_cost, intruder_csv_rows, intruder_rows, map_records,
                                   reading_facts)
from lorarank.audit import AuditReport, audit_adapter
from lorarank.base_svd import shared_cache
from lorarank.documents import audit_document, json_text, short_name
from lorarank.inits import convert_adapter, init_of
from lorarank.mitigate import mitigate_adapter

from . import guard, layout
from .loaded import inputs_label
from .audit import UPLOAD_HASH, Upload, demo_files, open_base_weights, zip_files
from .common import (Markdown, Setting, download_buttons, md, md_code, md_escape, progress_bar, setting_widget,
                     show_chart, show_errors, stop_on_error, table_height)

if TYPE_CHECKING:  # pandas loads with the first table, not with the page (a cold server's first render)
    import pandas as pd

__all__ = ["TAB", "TOP_K", "EPSILON", "LAMBDA", "MODULE_KEY", "SETTINGS", "demo_base", "run_against_base",
           "guarded_against_base", "module_cosines", "mitigated_files", "converted_files", "write_refusal", "intruder_table",
           "intruder_records", "reading", "section", "TABLE_HELP", "spectrum_is_update", "not_the_update"]

TAB = "Against the base"
MODULE_KEY = "base_module"
GATE_KEY = "audit_base_gate"
DOWNLOAD_KEY = "audit_base_download"
MITIGATE_KEY = "audit_base_mitigated"
CONVERT_KEY = "audit_base_converted"
COS_COLUMNS = 64

TOP_K = Setting("top_k", "top directions k", 10,
                "How many of the top left singular vectors of W0 + dW are tested (PEFT's top_k, default 10).",
                min_value=1, max_value=100)
EPSILON = Setting("epsilon", "epsilon", 0.5,
                  "A top direction is an intruder when its largest |cos| with every left singular vector "
                  "of W0 is below this (PEFT's threshold_epsilon, default 0.5).",
                  kind="float", min_value=0.0, max_value=1.0, step=0.05, format="%.3f")
LAMBDA = Setting("lambda", "mitigation lambda", 0.75,
                 "Share of each intruder direction the mitigated adapter keeps: W0 + dW + (lambda - 1) U_I S_I V_I^T "
                 "(PEFT's mitigation_lambda, default 0.75; 1 changes nothing, 0 removes them).",
                 kind="float", min_value=0.0, max_value=1.0, step=0.05, format="%.3f")
#: Every URL-bound setting of the view (checked against the URL with the page's others).
SETTINGS = (TOP_K, EPSILON, LAMBDA)

_HASH = {Upload: lambda u: u.ident}


# --------------------------------------------------------------------------------------- demo
@st.cache_data(show_spinner=False, max_entries=2)
def demo_base_files() -> dict[str, bytes]:
    """A synthetic base for the synthetic demo adapter: every adapted weight with singular values
    30 * 0.8^i along random directions (float32 safetensors), so the demo's planted directions
    (10 down to 5) rank among the top ten of W0 + dW and most of them are intruders."""
    from safetensors.numpy import save

    adapter = load_adapter_bytes(list(demo_files("a").items()))
    rng = np.random.default_rng(31)
    tensors = {}
    for m in adapter.modules:
        d_out, d_in = m.shape
        q = min(d_out, d_in)
        u = np.linalg.qr(rng.standard_normal((d_out, q)))[0]
        v = np.linalg.qr(rng.standard_normal((d_in, q)))[0]
        s = 30.0 * 0.8 ** np.arange(q)
        tensors[short_name(m.name) + ".weight"] = ((u * s) @ v.T).astype(np.float32)
    return {"model.safetensors": save(tensors, metadata={"format": "pt"})}


def demo_base() -> Upload:
    """The synthetic demo base as an :class:`Upload`."""
    return Upload.from_files(demo_base_files(), label="synthetic demo base")


# ------------------------------------------------------------------------------ engine calls
def _adapter(upload: Upload, alpha, scale):
    return load_adapter_bytes(list(upload.files), alpha=alpha, scale=scale)


def _base(adapter, base: Upload | None, base_hub: str | None):
    return open_base_weights(adapter, base=base, base_hub=base_hub)


def _base_ident(base: Upload | None, base_hub: str | None) -> str:
    return base.ident if base is not None else f"hub:{base_hub}"


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=_HASH)
def run_against_base(upload: Upload, base: Upload | None, *, alpha: float | None, scale: float | None,
                     top_k: int, epsilon: float, base_hub: str | None = None) -> AuditReport:
    """The audit with base weights (an upload, or a pinned ``hf://`` base read by byte ranges)
    and intruders (every module), progress per module."""
    with guard.heavy_work("the intruder dimensions"):
        adapter = _adapter(upload, alpha, scale)
        with progress_bar(f"Intruder dimensions of {len(adapter.modules):,} modules (the base's SVDs are "
                          "computed once and shared)") as progress:
            report = audit_adapter(adapter, base=_base(adapter, base, base_hub), intruders=True, top_k=top_k,
                                   epsilon=epsilon, svd_cache=shared_cache(), progress=progress)
    guard.mark_done(("base-svd", _base_ident(base, base_hub)))
    return report


def guarded_against_base(upload: Upload, base: Upload | None, *, shapes, alpha, scale, top_k: int,
                         epsilon: float, base_hub: str | None = None) -> AuditReport | None:
    """:func:`run_against_base` within the server's work budget (the base's SVDs dominate the
    first run on a base; later adapters on it cost their own products only)."""
    ident = _base_ident(base, base_hub)
    seconds = intruder_cost(shapes, cached=guard.is_done(("base-svd", ident))).seconds
    return guard.guarded_run(
        seconds, key=GATE_KEY, what=f"intruder dimensions of {len(shapes):,} modules", kept=False,
        ident=("against-base", upload.ident, ident, alpha, scale, top_k, epsilon),
        hint="Run `python -m lorarank audit PATH --base BASE --intruders` on your own machine (its disk "
             "cache keeps the base's SVDs for every later adapter).",
        run=lambda: run_against_base(upload, base, alpha=alpha, scale=scale, top_k=top_k, epsilon=epsilon,
                                     base_hub=base_hub))


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=_HASH)
def module_cosines(upload: Upload, base: Upload | None, *, alpha: float | None, scale: float | None, name: str,
                   top_k: int, epsilon: float, base_hub: str | None = None) -> dict:
    """The cosine picture of one module: ``|cos|`` of its top directions with the base's first 64."""
    from lorarank.against_base import prepare
    from lorarank.intruders import module_against_base

    adapter = _adapter(upload, alpha, scale)
    weights = _base(adapter, base, base_hub)
    work, _, _ = prepare(adapter, weights)
    module = work.module(name)
    analysis = module_against_base(module, weights, cache=shared_cache(), top_k=top_k, epsilon=epsilon,
                                   cos_columns=COS_COLUMNS)
    i = analysis.intruders
    return {"cosines": analysis.cosines, "max_cos": [float(c) for c in i.max_cos],
            "nearest": [int(j) for j in i.nearest], "indices": list(i.indices)}


def mitigated_files(upload: Upload, base: Upload | None, *, alpha, scale, top_k: int, epsilon: float,
                    lam: float, base_hub: str | None = None) -> dict[str, bytes]:
    """The intruder-reduced adapter's files (the input's format), built when a button asks."""
    with guard.QUEUE.slot():
        adapter = _adapter(upload, alpha, scale)
        result = mitigate_adapter(adapter, _base(adapter, base, base_hub), mitigation_lambda=lam, top_k=top_k,
                                  epsilon=epsilon, cache=shared_cache())
        return adapter_files(result.adapter)


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=UPLOAD_HASH)
def write_refusal(upload: Upload, *, alpha, scale, format: str | None = None) -> str | None:
    """Why the intruder-reduced (``format`` None: the input's) or converted (``"peft"``) copy of
    the upload could not be written, in the writer's sentence, or None: the writer's dry run
    (:func:`lorarank.adapters.writable`) on what the copy keeps of the input (its modules'
    families and layouts, its other tensors), made before a download button is drawn
    (Streamlit 1.67 says of a failed deferred download only "Failed to generate file for
    download"). The new factors' values are known only when the copy is made; the engine
    refuses any that its dtype cannot hold rather than write inf."""
    return writable(_adapter(upload, alpha, scale), format, values=True)


def converted_files(upload: Upload, base: Upload | None, *, alpha, scale,
                    base_hub: str | None = None) -> dict[str, bytes]:
    """PEFT's conversion of a PiSSA / OLoRA adapter (rank 2r, plain LoRA), built when asked."""
    with guard.QUEUE.slot():
        adapter = _adapter(upload, alpha, scale)
        return adapter_files(convert_adapter(adapter, _base(adapter, base, base_hub)), format="peft")


# ------------------------------------------------------------------------------------ tables
#: Column -> definition of the page's table (the engine's, shared with the HTML report).
TABLE_HELP = INTRUDER_COLUMNS


def intruder_table(report: AuditReport) -> pd.DataFrame:
    """One row per module, as the page shows it (numbers as numbers)."""
    import pandas as pd
    return pd.DataFrame(intruder_rows(report), columns=list(TABLE_HELP))


def intruder_records(report: AuditReport) -> pd.DataFrame:
    """The CSV download: one flat row per module, PEFT's 0-based indices, every max|cos|."""
    import pandas as pd
    frame = pd.DataFrame(intruder_csv_rows(report))
    if "layer" in frame:
        frame["layer"] = frame["layer"].astype("Int64")
    return frame


def reading(report: AuditReport) -> Markdown:
    """What the numbers say, in plain words (the engine's facts, :func:`lorarank.against_base.reading_facts`)."""
    f = reading_facts(report)
    if f is None:
        return Markdown("No module could be compared with the base (see the note above).")
    amp = Markdown("")
    if f["amplification"] is not None:
        amp = (md(" The update amplifies directions W0 barely uses: median amplification factor **{a:.3g}** "
                  "(Hu et al. 2021; about 1 when an update only reweights W0's own strong directions).",
                  a=f["amplification"]) if f["amplification"] >= 2 else
               md(" The update mostly works along directions W0 already uses strongly: median amplification "
                  "factor **{a:.3g}** (Hu et al. 2021; large when an update amplifies directions W0 barely uses).",
                  a=f["amplification"]))
    if not f["total"]:
        return md("**No intruder dimensions** in {n:d} modules: each of the top {k:d} directions of every W0 + dW "
                  "has a direction of W0 within |cos| >= {e:g}.{amp}", n=f["modules"], k=f["top_k"],
                  e=f["epsilon"], amp=amp)
    share = (md(" Where they occur they carry a median **{p:.0f} %** of the update's energy.", p=100 * f["share_of_update"])
             if f["share_of_update"] is not None else Markdown(""))
    return md("**{t:d} intruder dimensions in {w:d} of {n:d} modules**: directions among the top {k:d} of W0 + dW "
              "with no direction of W0 within |cos| {e:g}. The most in {name!c}: {c:d} of its top {k:d}, holding "
              "{s:.0f} % of its merged weight's energy.{share}{amp} Shuttleworth et al. (2024) tie such new "
              "high-ranking directions to forgetting outside the task; the intruder-reduced adapter below scales "
              "them down.", t=f["total"], w=f["modules_with_intruders"], n=f["modules"], k=f["top_k"],
              e=f["epsilon"], name=f["worst"], c=f["worst_count"], s=100 * f["worst_share"], share=share, amp=amp)


# ----------------------------------------------------------------------------------- section
def _intro_without_base(tab, report: AuditReport) -> None:
    init = init_of_report(report)
    box = inputs_label()  # the folded inputs above, by the name they show
    if init.get("moves_base"):
        tab.warning(md("This adapter's B@A is not its update (its init was cut out of the base; see the note at "
                       "the top). Upload the **original** base model's weights above (*{}*) to audit the exact "
                       "update, see its intruders and download the converted adapter.", box),
                    icon=":material/warning:")
    tab.markdown(md("**Upload the base model's weights** (its `.safetensors`, or the shards) under *{}* above, "
                    "or name the base on the Hugging Face Hub there (the link then keeps it): then this tab shows "
                    "which modules got *intruder dimensions* (new top directions of W0 + dW unlike any of W0's, "
                    "Shuttleworth et al. 2024), how much the update amplifies weak directions of W0 (Hu et al. "
                    "2021), and offers the intruder-reduced adapter for download. Or switch on the synthetic "
                    "demo.", box))


def init_of_report(report: AuditReport) -> dict:
    """The summary's ``init`` entry (empty when absent)."""
    return dict(report.summary.get("init") or {})


def section(tab: Any, *, upload: Upload, base: Upload | None, demo: bool, alpha, scale, report: AuditReport,
            shapes, base_hub: str | None = None) -> AuditReport | None:
    """Draw the "Against the base" tab; returns its audit with intruders (None when not computed)."""
    from lorarank.charts import intruder_map_chart
    with tab:
        cols = st.columns(3)
        top_k = setting_widget(TOP_K, cols[0])
        epsilon = setting_widget(EPSILON, cols[1])
        if base is None and not base_hub and not demo:
            _intro_without_base(st, report)
            return None
        if not layout.is_open(tab):  # the base's SVDs and the charts: only when the tab is shown
            st.caption("Open this tab to compute the intruder dimensions.")
            return None
        if base is None and not base_hub:
            base = demo_base()
            st.info("Against the **synthetic demo base** (singular values 30 x 0.8^i along random directions): "
                    "upload your own adapter and its base to audit them.", icon=":material/science:")
        with stop_on_error():
            result = guarded_against_base(upload, base, shapes=shapes, alpha=alpha, scale=scale, top_k=int(top_k),
                                          epsilon=float(epsilon), base_hub=base_hub)
        if result is None:
            return None
        for note in result.summary.get("warnings", []):
            if note.startswith("intruders not computed") or note.startswith("the base is"):
                st.warning(md_escape(note), icon=":material/warning:")
        st.markdown(reading(result))
        s = result.summary.get("intruders") or {}
        show_chart(intruder_map_chart(map_records(result), top_k=s.get("top_k", top_k), epsilon=float(epsilon)),
                   caption="One cell per layer and module type: how many of the top-k directions of W0 + dW are "
                           "intruders. Hover a cell for which ones, the smallest largest-|cos|, their share of "
                           "||W0 + dW||² and the amplification factor.")
        _cosine_picture(upload, base, result, alpha=alpha, scale=scale, top_k=int(top_k), epsilon=float(epsilon),
                        base_hub=base_hub)
        table = intruder_table(result)
        st.dataframe(table, hide_index=True, key="audit_base_table", height=table_height(len(table), max_rows=16),
                     column_config={
                         **{n: st.column_config.Column(n, help=h) for n, h in TABLE_HELP.items()},
                         "module": st.column_config.Column("module", help=TABLE_HELP["module"], pinned=True),
                         **{n: st.column_config.NumberColumn(n, help=TABLE_HELP[n], format="%.4g")
                            for n in ("smallest max|cos|", "share of W0 + dW", "share of dW", "amplification",
                                      "|dW|/|W0|")}})
        download_buttons(intruder_records(result), stem="lorarank-intruders", key=DOWNLOAD_KEY,
                         json_bytes=json_text(audit_document([result])).encode("utf-8"))
        st.caption("The JSON is what `python -m lorarank audit PATH --base BASE --intruders --json` prints "
                   "(indices 0-based, as in PEFT); the CSV has one row per module.")
        _mitigation(upload, base, result, alpha=alpha, scale=scale, top_k=int(top_k), epsilon=float(epsilon),
                    base_hub=base_hub)
        _conversion(upload, base, result, alpha=alpha, scale=scale, base_hub=base_hub)
    return result


def _cosine_picture(upload, base, result, *, alpha, scale, top_k, epsilon, base_hub) -> None:
    from lorarank.charts import cosine_chart
    computed = [m for m in result.modules if (m.intruders or {}).get("count") is not None]
    if not computed:
        return
    names = [short_name(m.name) for m in computed]
    default = max(range(len(computed)), key=lambda i: (computed[i].intruders["count"], -i))
    if MODULE_KEY in st.query_params and st.query_params[MODULE_KEY] not in names:
        show_errors([f"The link sets {md_code(MODULE_KEY + '=' + st.query_params[MODULE_KEY])}, but this adapter has "
                     f"no such module compared with the base; {md_code(names[default])} is shown instead."])
        del st.query_params[MODULE_KEY]
    pick = st.selectbox("module of the cosine picture", names, index=default, key=MODULE_KEY, bind="query-params",
                        help="The module whose top directions are compared with the base's below (kept in the "
                             "link). Default: the one with the most intruders.")
    module = computed[names.index(pick)]
    with stop_on_error():
        pic = module_cosines(upload, base, alpha=alpha, scale=scale, name=module.name, top_k=top_k, epsilon=epsilon,
                             base_hub=base_hub)
    heat, side = cosine_chart(pic["cosines"], max_cos=pic["max_cos"], nearest=pic["nearest"],
                              intruders=pic["indices"], epsilon=epsilon, name=pick)
    left, right = st.columns([3, 1])  # stacked on a phone
    with left:
        show_chart(heat)
    with right:
        show_chart(side)
    st.caption(md("Heatmap: |cos| between the top {k:d} left singular vectors of W0 + dW (rows, 1 = largest) "
                  "and the first {c:d} of W0 (columns), as in Shuttleworth et al.'s figures: a direction the "
                  "update kept from the base is a dark cell (|cos| near 1), an intruder a row without one. Best match: each "
                  "row's largest |cos| over all {q:d} directions of W0; the dashed rule is epsilon = {e:g}.",
                  k=len(pic["max_cos"]), c=int(pic["cosines"].shape[1]), q=int(min(module.shape)),
                  e=float(epsilon)))


def _mitigation(upload, base, result, *, alpha, scale, top_k, epsilon, base_hub) -> None:
    st.markdown("**Intruder-reduced adapter** (PEFT's `reduce_intruder_dimension`, computed here without torch)")
    lam = setting_widget(LAMBDA, st.columns(3)[0])
    s = result.summary.get("intruders") or {}
    if any(m.family != "lora" for m in result.modules):
        st.caption("Mitigation is defined for plain LoRA modules only (as PEFT's).")
        return
    if not s.get("total"):
        st.caption("Nothing to reduce: no module has intruders under these settings.")
        return
    if init_of_report(result).get("moves_base"):
        st.caption("Download the converted adapter below first and mitigate that one: PEFT's mitigation of an "
                   "unconverted PiSSA / OLoRA adapter would replay the init a second time.")
        return
    files_of = (lambda: mitigated_files(upload, base, alpha=alpha, scale=scale, top_k=top_k, epsilon=epsilon,
                                        lam=float(lam), base_hub=base_hub))
    _downloads(files_of, refusal=write_refusal(upload, alpha=alpha, scale=scale), stem="intruder_reduced",
               key=MITIGATE_KEY,
               label=f"Download the intruder-reduced adapter (lambda {float(lam):g})",
               note=md("Each of the {n:d} intruders keeps {lam:g} of its weight: W0 + dW + ({lam:g} - 1) "
                       "U_I S_I V_I^T, then the best rank-r factors of the new update (PEFT re-truncates it to the "
                       "adapter's rank); modules without intruders are copied. Written in the input's format.",
                       n=int(s["total"]), lam=float(lam)))


def _conversion(upload, base, result, *, alpha, scale, base_hub) -> None:
    init = init_of_report(result)
    if not init.get("moves_base"):
        return
    st.markdown("**Converted adapter** (PEFT's `path_initial_model_for_weight_conversion`)")
    if not init.get("replayed"):
        st.caption("This init cannot be replayed from the base (see the note at the top), so there is no conversion.")
        return
    _downloads(lambda: converted_files(upload, base, alpha=alpha, scale=scale, base_hub=base_hub), stem="converted",
               refusal=write_refusal(upload, alpha=alpha, scale=scale, format="peft"), key=CONVERT_KEY,
               label="Download the converted adapter (plain LoRA, rank 2r)",
               note=Markdown("A' = [A; A0], B' = [B, -B0] with the init replayed from the base you uploaded: a "
                             "plain LoRA of rank 2r (init_lora_weights true) that loads on the original base and "
                             "gives the trained model."))


def _downloads(files_of, *, refusal: str | None, stem: str, key: str, label: str, note: Markdown) -> None:
    if refusal is not None:  # no button whose click could only fail
        st.warning(md("**No download:** {}.", refusal), icon=":material/block:")
        return
    row = st.container(horizontal=True)
    row.download_button(f"{label} (.zip)", data=lambda: zip_files(files_of(), folder=stem),
                        file_name=f"lorarank-{stem}.zip", mime="application/zip", key=f"{key}_zip",
                        on_click="ignore", icon=":material/download:")
    st.caption(note)


def spectrum_is_update(report: AuditReport) -> bool:
    """False when the adapter's init moved the base and the base was not given (or cannot replay
    it): its B@A is then not its update."""
    return report.summary.get("spectrum_is_update", True) is not False


def not_the_update(tabs: dict, report: AuditReport, *, skip: tuple[str, ...]) -> None:
    """In place of the views of the update: one sentence each, and this view's explanation."""
    for name, tab in tabs.items():
        if name in skip:
            continue
        if name == TAB:
            with tab:
                _intro_without_base(st, report)
        else:
            tab.caption("Not shown: this file's B@A is not the adapter's update (see the note at the top), so its "
                        "ranks, spectra and resize would be of the wrong matrix. Upload the original base weights "
                        "to audit the exact update.")
