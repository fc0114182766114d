"""Full fine-tune, the Adapter audit page's section for fully fine-tuned models.

"What LoRA rank would my full fine-tune have needed?": the fine-tuned model and its base come
from two uploaders (``.safetensors`` files or shards, plus ``config.json``), from the Hub
(``?ft_hf=owner/name&ft_base_hf=owner/name``, read by byte ranges, pinned to commits after the
first load) or from a synthetic demo pair (``?ft_demo=true``). Every module's update is
measured by :func:`lorarank.finetune.audit_module`, one cached call per module, so a stopped
run keeps the modules it finished and a rerun reuses them. Work runs under the shared server's
budget (:mod:`ui.guard`: an estimate, Run above a few seconds, Stop, a queue of heavy work).

Shown: the reading (the rank a LoRA would need per energy share, per module type), the table
(CSV, the CLI's JSON, the HTML report), the rank map, the rank needed per module type, one
module's spectrum, what was not audited, and the extraction (a PEFT adapter, built when its
download is clicked). URL-bound keys start with ``ft_``; other session keys ``audit_ft_``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamlit as st

from lorarank.documents import csv_text, json_text
from lorarank.errors import LoraRankError
from lorarank.finetune import (ERROR_RANKS, FINETUNE_METRICS, FinetuneReport, FinetuneSettings, LeftOut,
                               ModulePair, Pairing, audit_module, check_others, demo_models, estimate,
                               extract_lora, finetune_reading, finetune_report, format_left, pair_models)
from lorarank.finetune_html import FINETUNE_COLUMNS, finetune_table
from lorarank.weights import ModelWeights, open_model_bytes

from . import guard, hub_models
from .audit import Upload, zip_files
from .common import (Markdown, Setting, check_url, error_line, md, md_code, md_text, notation, setting_widget,
                     show_chart, show_errors)

if TYPE_CHECKING:  # pandas loads with the first table, not with the page (a cold server's first render)
    import pandas as pd

__all__ = ["TAB", "SETTINGS", "URL_KEYS", "ModelSource", "linked", "section", "run_module", "plan",
           "demo_sources", "extracted_files", "module_table", "COLUMN_HELP"]

TAB = "Full fine-tune"

# ------------------------------------------------------------------------------ session keys
URL_ERRORS_KEY = "audit_ft_url_errors"
FT_UPLOAD_KEY = "audit_ft_upload"
BASE_UPLOAD_KEY = "audit_ft_upload_base"
GATE_KEY = "audit_ft_gate"
DOWNLOAD_KEY = "audit_ft_download"
#: URL-bound keys drawn by the section itself.
DEMO_KEY = "ft_demo"
EMBEDDINGS_KEY = "ft_embeddings"
INTRUDERS_KEY = "ft_intruders"
MODULE_KEY = "ft_module"
HF_KEY = "ft_hf"
HF_BASE_KEY = "ft_base_hf"

MAX_RANK = Setting("ft_max_rank", "singular values computed at most", 256,
                   "Per module, how many singular values may be computed to find the energy ranks. "
                   "A rank above it is shown as '> K' (never guessed).", min_value=8, max_value=4096)
MAP = Setting("ft_map", "rank map shows", "energy_rank_0.9",
              "The per-module number the rank map colours (definitions under the table).",
              kind="choice", options=tuple(FINETUNE_METRICS), select=True,
              labels=tuple(FINETUNE_METRICS.items()))
EXTRACT_BY = Setting("ft_extract_by", "extract a LoRA by", "energy",
                     "energy: each module at the smallest rank keeping the share below of its "
                     "update's energy (ranks in rank_pattern). rank: every module at the same rank.",
                     kind="choice", options=("energy", "rank"))
EXTRACT_ENERGY = Setting("ft_energy", "energy share kept", 0.9,
                         "Each module keeps at least this share of ||W_ft - W0||_F^2.",
                         kind="float", min_value=0.01, max_value=1.0, step=0.05, format="%.3f")
EXTRACT_RANK = Setting("ft_rank", "rank", 16, "The rank of every module of the extracted adapter.",
                       min_value=1, max_value=4096)
SETTINGS: tuple[Setting, ...] = (MAX_RANK, MAP, EXTRACT_BY, EXTRACT_ENERGY, EXTRACT_RANK)
URL_KEYS = (*(s.key for s in SETTINGS), DEMO_KEY, EMBEDDINGS_KEY, INTRUDERS_KEY, MODULE_KEY, HF_KEY, HF_BASE_KEY)


# ------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from: uploaded or demo files (in memory), or a pinned Hub repo."""

    kind: str
    ident: str
    label: str
    files: tuple[tuple[str, bytes], ...] = ()
    uri: str = ""

    @classmethod
    def from_upload(cls, upload: Upload) -> "ModelSource":
        return cls("upload", upload.ident, upload.label, upload.files)


_HASH = {ModelSource: lambda s: s.ident}


def open_source(source: ModelSource) -> ModelWeights:
    """The model's weights: views of the bytes, or the Hub model with a byte count of its own."""
    if source.kind == "hub":
        return hub_models.open_hub(source.uri)
    return open_model_bytes(source.files, label=source.label)


@st.cache_data(show_spinner=False, max_entries=1)
def demo_sources() -> tuple[ModelSource, ModelSource]:
    """The synthetic demo pair ``(fine-tuned, base)`` (:func:`lorarank.finetune.demo_models`)."""
    base, ft = demo_models()
    return (ModelSource("demo", "demo:finetuned", "synthetic demo fine-tune", tuple(ft.items())),
            ModelSource("demo", "demo:base", "synthetic demo base", tuple(base.items())))


# -------------------------------------------------------------------------- cached engine
@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=_HASH)
def plan(ft: ModelSource, base: ModelSource, embeddings: bool) -> tuple[Pairing, tuple[LeftOut, ...]]:
    """The module pairs and what is left out (small tensors compared), before any module is
    measured; a Hub model whose pairs need more bytes than the limit is refused here."""
    with guard.heavy_work("pairing the two models"):
        fm, bm = open_source(ft), open_source(base)
        pairing = pair_models(fm, bm, embeddings=embeddings)
        for model, keys in ((fm, [p.ft_key for p in pairing.pairs]), (bm, [p.base_key for p in pairing.pairs])):
            if getattr(model, "remote", False):
                model.check_plan(keys)
        return pairing, check_others(pairing, fm, bm)


@st.cache_data(show_spinner=False, max_entries=4096, hash_funcs=_HASH)
def run_module(ft: ModelSource, base: ModelSource, pair: ModulePair, settings: FinetuneSettings):
    """One module's update measured (a cache entry per module: Stop keeps the finished ones)."""
    with guard.heavy_work("measuring the fine-tune"):
        module = audit_module(pair, open_source(ft), open_source(base), settings=settings)
    guard.mark_done(_module_ident(ft, base, pair, settings))
    return module


def _ident(ft: ModelSource, base: ModelSource, settings: FinetuneSettings) -> tuple:
    return ("finetune", ft.ident, base.ident, settings)


def _module_ident(ft: ModelSource, base: ModelSource, pair: ModulePair, settings: FinetuneSettings) -> tuple:
    return (*_ident(ft, base, settings), pair.name)


def extracted_files(ft: ModelSource, base: ModelSource, *, by: str, value: float, settings: FinetuneSettings,
                    base_name: str) -> dict[str, bytes]:
    """The extracted PEFT adapter's files (built when its download is clicked; not cached)."""
    with guard.QUEUE.slot():  # called by a download button, outside the script run
        kwargs = {"energy": float(value)} if by == "energy" else {"rank": int(value)}
        ex = extract_lora(open_source(ft), open_source(base), settings=settings, base_model=base_name, **kwargs)
        return ex.files(dtype="float32")


# ------------------------------------------------------------------------------ the run
def _run(pairing: Pairing, ft: ModelSource, base: ModelSource, settings: FinetuneSettings,
         place: Any) -> tuple[list, bool] | None:
    """Every module within the server's budget; ``(modules, stopped)``, or None when nothing
    can be shown (the gate drew why). A stop keeps the modules finished."""
    pairs = pairing.pairs
    ident = _ident(ft, base, settings)
    seconds = estimate(pairs, settings).seconds
    with place:
        go = guard.gate(seconds, key=GATE_KEY, what=f"measurement of {len(pairs):,} weight matrices",
                        ident=ident, kept=True, item="modules",
                        hint="Leave the embeddings out, or run `python -m lorarank audit --finetuned` "
                             "on your own machine.")
    if not go:
        done = [p for p in pairs if guard.is_done(_module_ident(ft, base, p, settings))]
        if not done:
            return None
        modules = [run_module(ft, base, p, settings) for p in done]
        place.caption(f"Showing the {len(done):,} of {len(pairs):,} modules measured before the stop.")
        return modules, True
    if guard.is_done(ident):  # every module is a cache hit: no progress bar
        return [run_module(ft, base, p, settings) for p in pairs], False
    asked = seconds > guard.ASK_SECONDS
    with place:
        remove = (guard.stop_button(GATE_KEY, ident, kept="the modules finished are kept")
                  if asked else (lambda: None))
        bar = st.progress(0.0, text=f"Measuring {len(pairs):,} weight matrices (one pair in memory at a time)")
    modules = []
    started = time.perf_counter()
    costs = [p.cost for p in pairs]
    for i, pair in enumerate(pairs):
        guard.check_alive()
        modules.append(run_module(ft, base, pair, settings))
        done_cost = sum(costs[:i + 1])
        left = (time.perf_counter() - started) * (sum(costs) - done_cost) / done_cost if done_cost else None
        bar.progress((i + 1) / len(pairs), text=f"Measured {i + 1:,} of {len(pairs):,} weight matrices"
                                                f"{format_left(left if i + 1 < len(pairs) else None)}")
    bar.empty()
    remove()
    guard.mark_done(ident)
    return modules, False


# ------------------------------------------------------------------------------- tables
#: The table's columns and their definitions: the report's (:data:`FINETUNE_COLUMNS`), in the
#: pages' notation.
COLUMN_HELP: dict[str, str] = {name: notation(text) for name, text in FINETUNE_COLUMNS.items()}


def module_table(report: FinetuneReport) -> pd.DataFrame:
    """The page's table: one row per module (:func:`finetune_table`); unknown ranks as "> K"."""
    import pandas as pd
    columns, rows = finetune_table(report)
    return pd.DataFrame(rows, columns=columns)


def _others_table(others) -> pd.DataFrame:
    import pandas as pd
    return pd.DataFrame([{"tensor": o.name, "kind": o.kind,
                          "changed": {True: "yes", False: "no", None: "not compared"}[o.changed],
                          "why": o.reason} for o in others], columns=["tensor", "kind", "changed", "why"])


# ------------------------------------------------------------------------------- section
def linked() -> bool:
    """True when the link carries a setting of this section (its tab opens first)."""
    return any(key in st.query_params for key in URL_KEYS)


def _showing() -> bool:
    """Whether results are shown (then the inputs fold into an expander under them)."""
    return bool(st.session_state.get(DEMO_KEY) or st.query_params.get(DEMO_KEY) == "true"
                or st.query_params.get(HF_KEY) or st.session_state.get(FT_UPLOAD_KEY))


def _hub_form() -> None:
    """The Hub form (both repos): the link names them (``ft_hf``, ``ft_base_hf``)."""
    with st.form("audit_ft_hub_form", border=False, enter_to_submit=True):
        cols = st.columns([2, 2, 0.8], vertical_alignment="bottom")
        ft_text = cols[0].text_input("…or the fine-tuned model on the Hub", value=st.query_params.get(HF_KEY, ""),
                                     key="audit_ft_hub_ft", placeholder="owner/name[@revision]", max_chars=300,
                                     help="A model repo with .safetensors weights. Only the headers and the "
                                          "weights measured are read (byte ranges), never the whole repo.")
        base_text = cols[1].text_input("its base on the Hub", value=st.query_params.get(HF_BASE_KEY, ""),
                                       key="audit_ft_hub_base", placeholder="owner/name[@revision]", max_chars=300,
                                       help="The model it was fine-tuned from. After loading, the link pins "
                                            "both to their commits.")
        if cols[2].form_submit_button("Load", icon=":material/cloud_download:"):
            for key, text in ((HF_KEY, ft_text), (HF_BASE_KEY, base_text)):
                if text.strip():
                    st.query_params[key] = text.strip().removeprefix("hf://")
                elif key in st.query_params:
                    del st.query_params[key]


def _hub_sources() -> tuple[ModelSource | None, ModelSource | None, list[str]]:
    """The models the link names on the Hub, pinned to their commits (the link is updated)."""
    out: list[ModelSource | None] = []
    errors = []
    for key in (HF_KEY, HF_BASE_KEY):
        text = st.query_params.get(key, "").strip()
        if not text:
            out.append(None)
            continue
        try:
            uri = hub_models.pin(text)
        except LoraRankError as exc:
            errors.append(error_line(exc))
            out.append(None)
            continue
        pinned = uri.removeprefix("hf://")
        if st.query_params.get(key) != pinned:
            st.query_params[key] = pinned
        out.append(ModelSource("hub", "hub:" + uri, uri, uri=uri))
    return out[0], out[1], errors


def section(*, shown: bool = True) -> None:
    """Draw the whole "Full fine-tune" section: inputs, reading, table, charts, extraction.

    ``shown``: whether its tab is open; when closed only the inputs are drawn (they keep their
    values and their place in the link) and nothing is computed.
    """
    show_errors(check_url(SETTINGS, state_key=URL_ERRORS_KEY))
    results = st.container()
    head = results.container()
    inputs = (st.expander("Audit another fine-tune (uploads, the Hub, or the synthetic demo)", expanded=False,
                          icon=":material/upload_file:") if _showing() else st.container())
    with inputs:
        st.markdown("**What LoRA rank would a full fine-tune have needed?** Give the fine-tuned model and "
                    "the base it was trained from: each weight matrix's update W_ft − W0 is measured, "
                    "one pair in memory at a time.")
        c1, c2 = st.columns(2)
        ft_files = c1.file_uploader("Fine-tuned model", type=["safetensors", "json"], accept_multiple_files=True,
                                    key=FT_UPLOAD_KEY,
                                    help="model.safetensors (or its shards) and, optionally, config.json. Read "
                                         "in memory only; never stored, logged or put in the URL.")
        base_files = c2.file_uploader("Base model", type=["safetensors", "json"], accept_multiple_files=True,
                                      key=BASE_UPLOAD_KEY, help="The model it was fine-tuned from, as above.")
        _hub_form()
        demo = st.toggle("Use the synthetic demo pair", key=DEMO_KEY, bind="query-params",
                         help="A small Llama-shaped base (2 layers, hidden 64) and a synthetic full fine-tune "
                              "whose updates are full rank with spectra decaying as i^-a (a from 0.5 for "
                              "down_proj to 1.4 for k_proj): synthetic, not a trained model.")
        cols = st.columns([1.4, 1, 1])
        max_rank = setting_widget(MAX_RANK, cols[0])
        embeddings = cols[1].toggle("audit the embeddings", value=True, key=EMBEDDINGS_KEY, bind="query-params",
                                    help="Embedding matrices are large (vocabulary x hidden); they are never "
                                         "extracted.")
        intruders = cols[2].toggle("count intruder dimensions", value=False, key=INTRUDERS_KEY,
                                   bind="query-params",
                                   help="PEFT's definition (top 10, epsilon 0.5); costs a dense SVD of every base "
                                        "weight.")
    if not shown:
        return
    hub_ft, hub_base, hub_errors = _hub_sources()
    for message in (m for m in hub_errors if isinstance(m, Markdown)):
        head.error(message, icon=":material/error:")
    ft_up, base_up = Upload.from_uploaded(ft_files), Upload.from_uploaded(base_files)
    ft = ModelSource.from_upload(ft_up) if ft_up else hub_ft
    base = ModelSource.from_upload(base_up) if base_up else hub_base
    if ft is None and base is None:
        if not demo:
            return
        ft, base = demo_sources()
        head.caption(":material/science: **Synthetic demo pair** (not a trained model): your own models go "
                     "in **Audit another fine-tune** below.")
    if ft is None or base is None:
        head.info("Give the " + ("fine-tuned model" if ft is None else "base model") + " too: the update is "
                  "W_ft − W0.", icon=":material/info:")
        return
    settings = FinetuneSettings(max_rank=int(max_rank), embeddings=bool(embeddings), intruders=bool(intruders))
    try:
        pairing, others = plan(ft, base, settings.embeddings)
        outcome = _run(pairing, ft, base, settings, head)
    except LoraRankError as exc:
        head.error(error_line(exc), icon=":material/error:")
        return
    if outcome is None:
        return
    modules, stopped = outcome
    report = finetune_report(pairing, modules, settings=settings, others=others, stopped=stopped)
    _show(report, head, ft, base, settings)


def _show(report: FinetuneReport, head: Any, ft: ModelSource, base: ModelSource,
          settings: FinetuneSettings) -> None:
    from lorarank.charts.finetune import finetune_map_chart, finetune_spectrum_chart, rank_needed_chart
    with head:
        st.markdown(f"**Fine-tuned:** {md_code(report.finetuned)} · **base:** {md_code(report.base)} · "
                    f"{report.total:,} weight matrices in common")
        for sentence in finetune_reading(report):
            st.markdown(md_text(sentence))
        if not report.modules:
            return
        st.dataframe(module_table(report), hide_index=True, key="audit_ft_table",
                     height=38 + 35 * min(len(report.modules), 16),
                     column_config={
                         **{n: st.column_config.Column(n, help=t) for n, t in COLUMN_HELP.items()},
                         **{n: st.column_config.NumberColumn(n, help=COLUMN_HELP[n], format="%.4g")
                            for n in (*(f"error @ {k}" for k in ERROR_RANKS), "sigma_1", "|dW|/|W0|",
                                      "stable rank")}})
        s = report.summary
        st.caption(f"σᵢ are the singular values of dW = W_ft − W0, each within "
                   f"{s['max_sv_bound']:.1g}·σ₁ of the true value (randomized block subspace iteration "
                   "with a residual bound, or LAPACK). k(t): the smallest rank holding share t of "
                   "||dW||_F²; '> K' when more than the K values computed would be needed. Hover a column "
                   "header for its definition.")
        rows = report.table()
        buttons = st.container(horizontal=True)
        buttons.download_button("Download CSV", csv_text(rows, columns=list(rows[0])).encode(),
                                file_name="lorarank-finetune.csv", mime="text/csv", key=f"{DOWNLOAD_KEY}_csv",
                                on_click="ignore", icon=":material/download:")
        buttons.download_button("Download JSON", json_text(report.to_dict()).encode(),
                                file_name="lorarank-finetune.json", mime="application/json",
                                key=f"{DOWNLOAD_KEY}_json", on_click="ignore", icon=":material/download:",
                                help="What `python -m lorarank audit --finetuned MODEL --base BASE --json` prints.")
    metric = setting_widget(MAP, st.columns([1, 2])[0])
    records = [{**r, "computed": m.computed} for r, m in zip(report.rank_map(metric), report.modules)]
    show_chart(finetune_map_chart(records, metric=FINETUNE_METRICS[metric]),
               caption="One cell per layer and module type; grey '> K': more than the K singular values "
                       "computed. Hover a cell for the module and its value.")
    # a height for the whole chart: Streamlit 1.67 drops a fixed height beside a discrete x axis
    st.altair_chart(rank_needed_chart([m.to_dict() for m in report.modules]), width="stretch", height=460)
    st.caption("The LoRA rank each module needs to hold 50 / 90 / 99 % of its update's energy, by "
               "module type (log scale): a point per module, a tick at the median; a hollow "
               "triangle at K: more than K.")
    names = [m.name for m in report.modules]
    if st.query_params.get(MODULE_KEY) not in (None, *names):
        show_errors([f"The link sets {md_code(MODULE_KEY + '=' + st.query_params[MODULE_KEY])}, but this "
                     "fine-tune has no such module; the first module it changed is shown instead."])
    first = next((i for i, m in enumerate(report.modules) if "unchanged" not in m.flags), 0)
    chosen = st.selectbox("module", names, index=first, key=MODULE_KEY, bind="query-params",
                          help="The module whose spectrum is drawn below (kept in the link); the "
                               "first one the fine-tune changed unless chosen.")
    m = report.modules[names.index(chosen)]
    show_chart(finetune_spectrum_chart(m.singular_values, energy=m.energy, name=m.name, energy_rank=m.energy_rank),
               caption=md("Top {n} singular values of W_ft − W0 for {name!c} ({d_out} x {d_in}), log "
                          "scale; dashed: k(0.5), k(0.9), k(0.99) where known. Hover a point for the "
                          "share of ||dW||_F² up to it.", n=m.singular_values.size, name=m.name,
                          d_out=m.shape[0], d_in=m.shape[1]))
    if report.others:
        changed = sum(1 for o in report.others if o.changed)
        with st.expander(f"Not audited: {len(report.others):,} tensors ({changed:,} changed by the fine-tune)"):
            st.dataframe(_others_table(report.others), hide_index=True, key="audit_ft_others")
    _extraction(report, ft, base, settings)
    from lorarank.finetune_html import finetune_html

    st.download_button("Download the report (HTML)", key=f"{DOWNLOAD_KEY}_html",
                       data=lambda: finetune_html(report, metric=metric, module=chosen).encode(),
                       file_name="lorarank-finetune-report.html", mime="text/html", on_click="ignore",
                       icon=":material/description:",
                       help="One self-contained file: the reading, the table, the charts, what was not "
                            "audited, and the JSON document; opens offline.")


#: Largest float32: an update with sigma_1 above it has no float32 LoRA factors (A = S V^T).
_FLOAT32_MAX = 3.4028234663852886e38  # np.finfo(np.float32).max


def _extraction(report: FinetuneReport, ft: ModelSource, base: ModelSource, settings: FinetuneSettings) -> None:
    st.markdown("**Extract a LoRA** from the fine-tune: a PEFT adapter (adapter_model.safetensors + "
                "adapter_config.json) whose update is the best rank-k approximation of each module's "
                "W_ft − W0, loadable onto the base with `PeftModel.from_pretrained`.")
    cols = st.columns([1, 1, 2])
    by = setting_widget(EXTRACT_BY, cols[0])
    value = setting_widget(EXTRACT_ENERGY if by == "energy" else EXTRACT_RANK, cols[1])
    ms = [m for m in report.modules if m.kind != "embedding" and "unchanged" not in m.flags]
    if not ms:
        st.info("No linear or conv weight changed: there is nothing to extract.", icon=":material/info:")
        return
    too_big = [m for m in ms if m.singular_values.size and float(m.singular_values[0]) > _FLOAT32_MAX]
    if too_big:   # the download would fail with a generic "Failed to generate file": say why here
        st.error(md("{name}: the update W_ft − W0 is too large for float32 LoRA factors (σ₁ = {s}); no LoRA "
                    "of it can be written.", name=too_big[0].name, s=f"{float(too_big[0].singular_values[0]):.4g}"),
                 icon=":material/error:")
        return
    if by == "energy":
        ranks = [m.energy_rank[f"{value:g}"] if f"{value:g}" in m.energy_rank else None for m in ms]
        known = [k for k in ranks if k is not None]
        what = (f"each module at the smallest rank keeping **{100 * value:g} %** of its energy"
                + (f" (ranks {min(known)} to {max(known)} for the shares computed above)" if known and
                   len(known) == len(ranks) else "; the ranks are computed when you download"))
    else:
        errors = [m.lora_error[str(int(value))] for m in ms if str(int(value)) in m.lora_error]
        what = (f"every module at rank **{int(value)}**"
                + (f", leaving {100 * min(errors):.1f} to {100 * max(errors):.1f} % of ||dW||_F" if errors else ""))
    left = [o for o in report.others if o.changed] + [m for m in report.modules if m.kind == "embedding"
                                                      and "unchanged" not in m.flags]
    left_out = (md("{names}{more}", names=Markdown(", ").join(md_code(getattr(o, "name", "")) for o in left[:6]),
                more=f" and {len(left) - 6} more" if len(left) > 6 else "")
             if left else Markdown("nothing that changed"))
    st.markdown(md("It holds {n:,} modules, {what}. Left out (a LoRA cannot hold them): {shown}. "
                   "`lorarank extract` builds the same adapter and prints the energy each module keeps.",
                   n=len(ms), what=md_text(what), shown=left_out))
    base_name = base.uri.removeprefix("hf://").split("@")[0] if base.kind == "hub" else base.label
    st.download_button("Download the extracted LoRA (.zip)", key=f"{DOWNLOAD_KEY}_lora",
                       data=lambda: zip_files(extracted_files(ft, base, by=by, value=float(value), settings=settings,
                                                              base_name=base_name), folder="extracted_lora"),
                       file_name="lorarank-extracted-lora.zip", mime="application/zip", on_click="ignore",
                       icon=":material/download:",
                       help="Built when clicked: adapter_model.safetensors (float32) + adapter_config.json, "
                            "lora_alpha = r so the scale is 1, per-module ranks in rank_pattern.")
