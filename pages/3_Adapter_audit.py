"""Adapter audit: how many directions a trained adapter really uses, a resize, a comparison."""

import streamlit as st

from lorarank.documents import json_clean, short_name
from lorarank.errors import LoraRankError
from ui import audit, base_view, common, examples, finetune_view, hub, layout, loaded, resize_view, series
from ui import report as report_ui

page = common.setup_page(__file__)

layout.header(
    common.md_escape(page.label),
    "Upload a trained LoRA adapter: how many directions each module really uses, which rank a "
    "resize can keep, and whether two adapters learned the same directions.",
    about="The singular values of every module's update s·B·A are computed from the factors "
          "(QR of B and of Aᵀ, SVD of the r × r core), never from the dense matrix. Every "
          "setting on this page is kept in the link; the files are not.",
    hint=None,
    terms=("singular values σᵢ", "energy rank k(t)", "stable rank", "entropy rank",
           "recommended rank", "truncation error", "sv_ratio", "rank budget", "resize",
           "subspace similarity φ", "chance level", "settled step", "intruder dimensions", "DoRA",
           "LoKr"),
)
loaded_line = st.container()  # names the loaded adapter, under the title
alerts = st.container()
loaded.show_unreadable(alerts)  # files dropped on the last run that could not be read
bad_url = common.check_url(audit.ALL_SETTINGS + base_view.SETTINGS, state_key=audit.URL_ERRORS_KEY)

TABS = ["Per module", "Rank map", "Spectrum", "Budget", "Resize", "Compare", base_view.TAB, series.TAB,
        finetune_view.TAB]
DEFAULT_TAB = (series.TAB if series.linked() else finetune_view.TAB if finetune_view.linked()
               else None)
# ------------------------------------------- upload (folded away once an adapter is shown)
# the tabs with inputs of their own fold the adapter inputs away
ON_SERIES = layout.opening(TABS, default=DEFAULT_TAB) in (series.TAB, finetune_view.TAB)
# Rank over training and Full fine-tune have inputs of their own (uploaders, Hub fields, switches):
# drawn once their tab was opened in this session or the link names their settings, so a first
# visit's browser does not load the scripts of every widget kind of every tab before the uploader
OPENED = layout.opened(TABS, default=DEFAULT_TAB, key=audit.TABS_OPENED_KEY)
inputs = loaded.inputs_box(elsewhere=ON_SERIES)
with inputs:
    uploaded = st.file_uploader(
        "Adapter files" if loaded.loaded() is None else "Other adapter files (replace the loaded one)",
        type=["safetensors", "npz", "gguf", "json"], accept_multiple_files=True,
        key=loaded.uploader_key(),
        help="One weights file (.safetensors, .npz or a llama.cpp LoRA .gguf) plus, for PEFT and mlx-lm, its "
             "adapter_config.json. New weights replace the loaded adapter; a config alone joins it. "
             "Read in memory only; never stored, logged or put in the URL.")
    hub.privacy_note()
upload = loaded.take(uploaded)  # files dropped now replace (or complete) the loaded adapter
with inputs:
    hub_upload = hub.hub_input(notices=alerts)
upload = upload or hub_upload
if upload is None:
    with inputs:
        st.markdown(
            "**What to upload:** the `adapter_model.safetensors` and `adapter_config.json` that "
            "PEFT's `save_pretrained` wrote (select both; LoRA, DoRA, AdaLoRA, LoHa, LoKr), a kohya / "
            "sd-scripts, LyCORIS or diffusers `.safetensors`, an mlx-lm `adapters.safetensors` with its "
            "config, a llama.cpp LoRA `.gguf`, or an `.npz` of "
            "`<module>.A` / `<module>.B` factors. Without a config the scale is assumed to be 1 "
            "and you can set alpha."
        )
    examples.from_link()
    with inputs:  # real adapters of every family, shipped in examples/: one click each
        picked = st.pills(
            "…or open a real example (one click)", [e.key for e in examples.EXAMPLES],
            format_func=lambda key: examples.by_key(key).label, key=examples.EXAMPLE_KEY,
            bind="query-params",
            help="Small adapters written by the real libraries (peft, LyCORIS, diffusers, mlx-lm, "
                 "gguf) on tiny models trained a few steps; the files are in the repository's "
                 "examples/ folder, with their provenance. Kept in the link.")
    if picked is not None:
        upload = examples.example_upload(picked)
        st.caption(common.md(":material/folder_open: Showing the real example **{label}**: {about}. "
                             "Its files are in the repository's `examples/` folder.",
                             label=examples.by_key(picked).label, about=examples.by_key(picked).about))
if upload is None:
    # on the Rank over training tab the demo switch folds away with the other adapter inputs
    if (inputs if ON_SERIES else st.container()).toggle("Use the synthetic demo adapter", key=audit.DEMO_KEY, bind="query-params",
                 help="A small PEFT-format adapter generated here (Llama-shaped, 2 layers x 7 "
                      "modules, r = 16) whose modules have 2 to 8 planted directions plus a "
                      "noise tail: synthetic, not a trained model."):
        upload = audit.demo_upload("a")
        st.info("Showing the **synthetic demo** (planted ranks: q_proj and k_proj 2, gate_proj "
                "3, up_proj 4, o_proj 5, v_proj 6, down_proj 8; r = 16). Upload a file to "
                "audit your own adapter.", icon=":material/science:")
demo = upload is not None and upload.ident == audit.demo_upload("a").ident
summary = st.container()  # what was detected and the reading, filled once there is an upload

# ------------------------------------------------- sections, each with its own inputs first
tabs = layout.sections(TABS, default=DEFAULT_TAB)


def drawn(*keys: str) -> bool:
    """Whether a tab's settings are drawn: once there is an adapter (or a run to follow) they
    set what the tab shows; before, only when the link or this session already set them (a
    copied link shows its settings), so a first visit loads no widget kind it does not use."""
    return (upload is not None or ON_SERIES
            or any(key in st.query_params or key in st.session_state for key in keys))


with tabs["Per module"]:
    if drawn(audit.RULE.key, *(v.key for v in audit.RULE_VALUES.values())):
        cols = st.columns([1.3, 1, 3])
        rule = common.setting_widget(audit.RULE, cols[0])
        value_setting = audit.RULE_VALUES.get(rule)
        if value_setting is not None:
            value = common.setting_widget(value_setting, cols[1])
        else:
            value = None
            cols[1].caption("The entropy rule has no value: it keeps ceil(entropy rank) directions.")
    else:  # nothing to apply them to: the defaults
        rule = audit.RULE.default
        value = audit.RULE_VALUES[rule].default if rule in audit.RULE_VALUES else None
with tabs["Rank map"]:
    metric = (common.setting_widget(audit.MAP_METRIC, st.columns([1, 2])[0]) if drawn(audit.MAP_METRIC.key)
              else audit.MAP_METRIC.default)
with tabs["Budget"]:
    budget = (common.setting_widget(audit.BUDGET, st.columns([1, 2])[0]) if drawn(audit.BUDGET.key)
              else audit.BUDGET.default)
with tabs["Resize"]:
    resize_by = (common.setting_widget(audit.RESIZE_BY, st.columns([1, 2])[0]) if drawn(audit.RESIZE_BY.key)
                 else audit.RESIZE_BY.default)
with tabs["Compare"]:
    compare = drawn(audit.COMPARE_KEY) and st.toggle(
        "Compare with a second adapter", key=audit.COMPARE_KEY, bind="query-params",
        help="Upload a second adapter (e.g. the same task at another rank) and see whether both "
             "learned the same directions.")
with alerts:
    common.show_errors(bad_url)

# ------------------------------------------------- rank over training (its own upload)
with tabs[series.TAB]:
    if series.TAB in OPENED or series.linked():
        series.section(rule=rule, value=value)
with tabs[finetune_view.TAB]:  # a full fine-tune and its base (its own inputs)
    if finetune_view.TAB in OPENED or finetune_view.linked():
        finetune_view.section(shown=layout.is_open(tabs[finetune_view.TAB]))

if upload is None:
    for name, tab in tabs.items():  # said in the open tab (opening another reruns the page)
        if name not in (series.TAB, finetune_view.TAB) and layout.is_open(tab):
            tab.caption("Upload an adapter above (or switch on the synthetic demo) to see this.")
    st.stop()

# ------------------------------------------------------------------------ detection
try:
    detected = audit.detect(upload)
except LoraRankError as exc:  # one line; dropped files that cannot be read are not kept as loaded
    loaded.unreadable(upload, common.error_line(exc), alerts)
with loaded_line:
    loaded.header_row(upload, demo=demo).markdown(loaded.adapter_name(upload, detected),
                                                  width="stretch")
with summary:
    finish = audit.audit_gate(upload, detected)  # the server's work budget; Stop while it works
if finish is None:
    st.stop()
with summary:
    alpha, scale = audit.scale_override(detected)  # only when the file states no scale
    base = audit.base_uploader(container=inputs)
    base_hub = None if base else audit.base_hub_input(detected, container=inputs, notices=alerts)
    try:
        report = audit.run_audit(upload, alpha=alpha, scale=scale, rule=rule, value=value or 0.0,
                                 base=base, base_hub=base_hub)
    except LoraRankError as exc:  # as above: not kept as the loaded adapter
        loaded.unreadable(upload, common.error_line(exc), alerts)
    st.markdown(audit.reading(report))  # the headline first, what was detected under it
    lines = audit.detected_lines(detected, report)
    st.markdown(" · ".join(common.md("**{}:** {}", label, text) for label, text in lines))
    audit.show_family_details(report)
if not base_view.spectrum_is_update(report):  # a PiSSA / OLoRA file without its base: B@A is not the update
    base_view.not_the_update(tabs, report, skip=(series.TAB, finetune_view.TAB))
    finish()
    st.stop()

# --------------------------------------------------------------------------- table
with tabs["Per module"]:
    # The first result: by module type, a markdown table that draws with the page's text (the full
    # grid under it loads the data grid's scripts first, see ui.common.markdown_table)
    with st.container(key=audit.TYPE_TABLE_KEY):
        st.markdown(common.markdown_table(audit.type_rows(report), list(audit.TYPE_COLUMNS),
                                          right=("modules",)))
        st.caption(common.md_text("One row per module type (every module, sortable, in the table below). "
                                  + "; ".join(f"{name}: {text}" for name, text in list(audit.TYPE_COLUMNS.items())[1:])
                                  + "."))
    numbers = ("alpha", "scale s", "stable rank", "entropy rank", "truncation error", "|dW|/|W0|")
    table = common.dash_missing(audit.module_table(report), numbers)  # "-", never "None"
    st.dataframe(
        table, hide_index=True, key="audit_table",
        height=audit.table_height(len(report.modules)),
        column_config={
            **{name: st.column_config.Column(name, help=text) for name, text in audit.COLUMN_HELP.items()},
            "module": st.column_config.Column("module", help=audit.COLUMN_HELP["module"], pinned=True),
            **{name: common.number_column(table, name, help=audit.COLUMN_HELP[name])
               for name in numbers if name in table},
        },
    )
    st.caption(
        "σᵢ are the singular values of what *spectrum of* names above (s·B·A for plain LoRA). "
        "Energy rank k(t): smallest k with "
        "Σ_{i≤k} σᵢ² ≥ t·Σσ². Stable rank: Σσ² / σ₁². Entropy rank: "
        "exp(−Σ p log p), pᵢ = σᵢ / Σσ. Recommended rank: what "
        + common.md("**{}**", audit.rule_text(rule, value)) + " keeps. Truncation error at k: "
        "√(Σ_{i>k} σᵢ² / Σσ²). Hover a column header for its definition."
    )
    common.download_buttons(audit.module_records(report), stem="lorarank-audit",
                            key=audit.DOWNLOAD_KEY, json_bytes=audit.cli_json_bytes(report))

# Altair loads here, after the first table (a page without an audit never needs it)
from lorarank.charts import (budget_chart, module_spectrum_chart, overlap_chart, phi_chart,  # noqa: E402
                             rank_map_chart)

# ------------------------------------------------------------------------- rank map
if layout.is_open(tabs["Rank map"]):
    with tabs["Rank map"]:
        common.show_chart(
            rank_map_chart(report.rank_map(metric), metric=audit.MAP_METRICS[metric]),
            caption="One cell per layer and module type (the first number in a module's name is "
                    "its layer). Hover a cell for the module and its value.")

# ------------------------------------------------------------------- module spectrum
with tabs["Spectrum"]:
    names = [short_name(m.name) for m in report.modules]
    bad_module = audit.module_url_error(names)
    if bad_module:
        common.show_errors([bad_module])
    chosen = st.selectbox("module", names, key=audit.MODULE_KEY, bind="query-params",
                          help="The module whose singular values are drawn below (kept in the "
                               "link).")
    module = report.modules[names.index(chosen)]
    if layout.is_open(tabs["Spectrum"]):
        common.show_chart(
            module_spectrum_chart(module.singular_values, cut=module.recommended_rank, name=chosen,
                                  rule=audit.rule_text(rule, value)),
            caption=common.md(
                "Singular values of the {what} for {name!c} (r = {r}, s = {s:.4g}), log scale. Dashed: "
                "the recommended rank {k} under {rule}; truncating there loses {err:.3g} of ||dW||_F. "
                "Zero values are not drawn.", what=common.notation(module.spectrum_of), name=chosen, r=module.rank,
                s=module.scale, k=module.recommended_rank, rule=audit.rule_text(rule, value),
                err=module.truncation_error))

# ----------------------------------------------------------------------- budget curve
with tabs["Budget"]:
    with common.stop_on_error():
        curve, allocation = audit.run_budget(upload, alpha=alpha, scale=scale, rule=rule,
                                             value=value or 0.0, mean_rank=budget)
    n_modules = len(report.modules)
    marks = audit.budget_marks(report, allocation, budget=budget)
    if layout.is_open(tabs["Budget"]):
        common.show_chart(
            budget_chart(curve, marks=marks),
            caption=common.md(
                "Keeping the adapter's top directions by σ² wherever they are: a budget of {budget} x "
                "{n} modules = {directions:,} directions keeps {kept:.2f} % of Σσ² with {params:,} "
                "parameters (each direction costs d_out + d_in). By Eckart-Young no other allocation "
                "of as many directions keeps more.", budget=budget, n=n_modules,
                directions=allocation["directions"], kept=100 * allocation["retained_energy"],
                params=allocation["params"]))

# ---------------------------------------------------------------------------- resize
with tabs["Resize"]:
    target = resize_view.ResizeTarget(by=resize_by, rule=rule, value=value or 0.0,
                                      rank_budget=int(budget) * n_modules)
    if layout.is_open(tabs["Resize"]):  # the preview resizes every module: only when shown
        with common.stop_on_error():
            resize_view.section(upload, report, target, alpha=alpha, scale=scale, base=base, base_hub=base_hub)


# --------------------------------------------------------------------------- compare
comparison = None
pick = None  # the compare heatmap's module
with tabs["Compare"]:
    if compare:
        uploaded_b = st.file_uploader(
            "Second adapter (B)", type=["safetensors", "npz", "gguf", "json"], accept_multiple_files=True,
            key=audit.UPLOAD_B_KEY, help="Same kind of files as above; modules are matched by name.")
        top = common.setting_widget(audit.TOP, st.columns(4)[0])
        hub_b = hub.hub_input(hub.HubInput("_b"), label="…or a second adapter on the Hub")
        upload_b = audit.Upload.from_uploaded(uploaded_b) or hub_b
        if upload_b is None and demo:
            upload_b = audit.demo_upload("b")
            st.info("Comparing with the **synthetic demo B** (r = 8, same planted input directions, "
                    "its own noise).", icon=":material/science:")
        if upload_b is None:
            st.markdown("Upload the second adapter to see the subspace similarity phi per module.")
        else:
            with common.stop_on_error():
                # which file is B: the uploader's chips cut names short ("ada…el.safetensors")
                st.markdown(loaded.adapter_name(upload_b, audit.detect(upload_b), label="Adapter B"))
                comparison = audit.guarded_compare(upload, upload_b, top=top)
        shown_open = comparison is not None and layout.is_open(tabs["Compare"])
        if shown_open:
            st.markdown(audit.compare_reading(comparison))
            st.dataframe(audit.compare_table(comparison), hide_index=True, key="audit_compare_table",
                         height=audit.table_height(len(comparison.modules)),
                         column_config={
                             **{n: st.column_config.Column(n, help=t) for n, t in audit.COMPARE_HELP.items()},
                             "module": st.column_config.Column("module", help=audit.COMPARE_HELP["module"],
                                                               pinned=True),
                             **{n: st.column_config.NumberColumn(n, help=audit.COMPARE_HELP[n], format="%.4f")
                                for n in ("phi(1, 1)", "phi(k, k)", "chance")},
                             "smallest angle (deg)": st.column_config.NumberColumn(
                                 "smallest angle (deg)", help=audit.COMPARE_HELP["smallest angle (deg)"],
                                 format="%.2f")})
            common.download_buttons(audit.compare_table(comparison), stem="lorarank-compare",
                                    key=audit.COMPARE_DOWNLOAD_KEY,
                                    json_data=json_clean(comparison.to_dict()))
        if comparison is not None:
            left, right = st.columns([3, 2])
            if shown_open:
                rows = [{**r, "name": short_name(r["name"])} for r in comparison.table()]
                with left:
                    common.show_chart(overlap_chart(rows),
                                      caption="phi(i, j) = ||U_iᵀV_j||_F² / min(i, j) on the right "
                                              "singular vectors of the two A factors (Hu et al. 2022, "
                                              "section 7.2). Tick: chance level k / d_in.")
            with right:  # the heatmap's module chooser sits on it (drawn on every run: it is in the link)
                by_name = {short_name(m.name): m for m in comparison.modules}
                bad_pick = series.url_choice_error(audit.COMPARE_MODULE_KEY, list(by_name),
                                                   "shared module", "the first one",
                                                   where="the comparison")
                if bad_pick:
                    common.show_errors([bad_pick])
                pick = st.selectbox("module of the heatmap", list(by_name),
                                    index=list(by_name).index(chosen) if chosen in by_name else 0,
                                    key=audit.COMPARE_MODULE_KEY, bind="query-params",
                                    help="The module whose phi(i, j) is drawn below (kept in the link).")
                shown = by_name[pick]
                if shown_open:
                    common.show_chart(phi_chart(shown.phi, name=short_name(shown.name)),
                                      caption="phi(i, j) for the module chosen above the chart: the "
                                              "top-i directions of A against the top-j of B.")

# ------------------------------------------------------------------ against the base
against = base_view.section(tabs[base_view.TAB], upload=upload, base=base, demo=demo, alpha=alpha,
                            scale=scale, report=report, shapes=detected.shapes, base_hub=base_hub)

finish()  # the work on the upload is done: no Stop button any more
# ---------------------------------------------------------------------------- report
report_ui.audit_button(upload=upload, report=report, detected=lines, alpha=alpha, scale=scale,
                       rule=rule, value=value, metric=metric, module=chosen, budget=budget,
                       comparison=comparison, compare_module=pick, against=against)
