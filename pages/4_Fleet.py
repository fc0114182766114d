"""Fleet: many adapters at once, and the serving rank cap that fits them."""

import streamlit as st

from lorarank.fleet import plan_caps
from ui import common, layout
from ui import fleet as fl

page = common.setup_page(__file__)
layout.header(
    common.md_escape(page.label),
    "Many adapters at once: which fit a server's rank cap (vLLM max_lora_rank, LoRAX, TGI), what "
    "shrinking the others keeps, and the cap to set.",
    about="Each row is the single-adapter audit of that adapter: its largest module rank (what the "
          "server's cap must allow), the rank the energy rule recommends, and the share of the whole "
          "update's energy Σσ² kept when every module is cut to its best rank-c approximation "
          "(Eckart-Young: no rank-c adapter keeps more). The Hub sources, the cap and the planner's "
          "settings are kept in the link; uploaded files are not.",
    terms=("recommended rank", "energy Σσ²", "Eckart-Young theorem", "resize"),
)
answer = st.container()   # the planner's answer, first
bad_url = common.check_url(fl.SETTINGS, state_key=fl.URL_ERRORS_KEY)
# The planner's settings (energy to keep, share of the fleet) are drawn under the sources once
# there is a fleet to plan (or the link or the session set them): a first visit loads no widget
# kind it does not use before its uploader shows (benchmarks/bench_app.py)
box = st.sidebar.expander("Fleet", expanded=True)
settings = layout.settings_group("Fleet", (fl.Q, fl.SCREEN), container=box)
common.show_errors(bad_url)

with st.expander("Adapters", expanded=True):
    uploaded = st.file_uploader(
        "Adapter files, or a zip of adapter folders", type=["safetensors", "npz", "gguf", "json", "zip"],
        accept_multiple_files=True, key=fl.UPLOAD_KEY,
        help="Weights files (.safetensors, .npz, .gguf), each one adapter; PEFT adapters as folders "
             "(adapter_model.safetensors + adapter_config.json) inside a zip. Read in memory only.")
    st.caption("Or name Hub adapters in the sidebar (kept in the link): hf://owner/name, hf://owner/* "
               "for every adapter of a user or organisation, hf://?base_model=owner/name for the "
               "adapters of a base model.")
    examples = st.toggle("Add the real example adapters (one of every family)", key=fl.EXAMPLES_KEY,
                         bind="query-params",
                         help="The 11 real adapters in the repository's examples/ folder (PEFT LoRA, "
                              "DoRA, AdaLoRA, LoHa, LoKr, LyCORIS, diffusers, mlx-lm, GGUF), each written "
                              "by its own library: a fleet to try the page on.")

with common.stop_on_error():
    fleet = fl.members(uploaded, settings["q"], examples=examples)
planner = (fl.KEEP, fl.SHARE)
if fleet is not None or any(p.key in st.query_params or p.key in st.session_state for p in planner):
    settings.update(layout.settings_group("Fleet", planner, container=box))
if fleet is None:
    answer.info("Drop adapter files or a zip below, name Hub adapters in the sidebar, or add the real "
                "examples, to see which fit a serving cap.", icon=":material/dataset:")
    st.stop()
for note in fleet.notes:
    st.caption(common.md_escape(note))

opts = fl.options(settings["screen"])
with common.stop_on_error():
    screened = fl.screen_rows(fleet)
seconds, size = fl.estimate(fleet, screened, opts)
if size > fl.MAX_FLEET_BYTES:
    common.show_errors([common.md(
        "These {n} adapters hold {size} of files; this shared server audits at most {cap} per run "
        "(LORARANK_FLEET_MAX_BYTES). Read the headers only, or run lorarank fleet locally.",
        n=len(fleet.members), size=fl.fmt_bytes(size), cap=fl.fmt_bytes(fl.MAX_FLEET_BYTES))])
    st.stop()
ident = ("fleet", fleet.ident, opts.key())
if opts.screen:
    rows = screened
elif fl.guard.gate(seconds, key=fl.GATE_KEY, what=f"audit of {len(fleet.members)} adapters", ident=ident,
                   hint="Read the headers only (sidebar), or run lorarank fleet locally.",
                   item="adapters"):
    remove = fl.guard.stop_button(fl.GATE_KEY, ident, kept="finished adapters are kept") \
        if seconds > fl.guard.ASK_SECONDS and not fl.guard.is_done(ident) else (lambda: None)
    rows = fl.run_rows(fleet, opts)
    fl.guard.mark_done(ident)
    remove()
else:
    rows = fl.done_rows(fleet, opts)
    if rows is None:
        st.stop()
    st.caption(f"Showing the {len(rows)} adapters already audited of {len(fleet.members)}.")

top = fl.cap_range(rows)
cap = st.slider("serving cap (max_lora_rank)", 1, top, 16, key=fl.CAP_KEY, bind="query-params",
                help="The rank the server preallocates for every adapter. Adapters whose largest "
                     "module rank is above it must be shrunk to load.")
plan = plan_caps(rows, cap=cap, keep=settings["keep"], share=settings["share"], caps=opts.caps)
with answer:
    st.success(common.md_text(plan.sentence()), icon=":material/target:")
    ok = sum(1 for r in rows if r["ok"])
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("adapters", f"{len(rows)}", help="Adapters read (failed ones included).")
    m2.metric("failed", f"{len(rows) - ok}", help="Adapters that could not be read; the table says why.")
    m3.metric(f"fit cap {cap}", f"{len(plan.fit)}", help="Largest module rank at most the cap.")
    m4.metric("smallest cap", "–" if plan.smallest_cap is None else f"{plan.smallest_cap}",
              help=f"The smallest cap at which {100 * plan.share:g} % of the adapters keep at least "
                   f"{100 * plan.keep:g} % of their energy" + (" (headers only: fit as they are)."
                                                              if plan.screened else "."))

from lorarank.charts.fleet import fleet_cap_chart, fleet_rank_chart  # noqa: E402 - Altair loads with the results

tabs = layout.sections(["Table", "Ranks", "Cap", "Downloads"])
with tabs["Table"]:
    if layout.is_open(tabs["Table"]):
        frame = fl.table(rows, opts.caps, cap)
        st.dataframe(frame, hide_index=True, key="fleet_table",
                     column_config={c: st.column_config.Column(c, help=fl.COLUMN_CONFIG_HELP.get(
                         c, "Share of the adapter's energy Σσ² kept with every module cut to this "
                            "rank (1 when it fits)." if c.startswith("energy") else
                         "Whether the adapter's largest module rank is at most the cap."))
                         for c in frame.columns})
        st.caption("Click a column header to sort. Energy at a cap: the share of Σσ² over all "
                   "modules kept by the best rank-cap approximation of each module.")
with tabs["Ranks"]:
    if layout.is_open(tabs["Ranks"]):
        if opts.screen:
            st.info("Headers only: no spectra, so no recommended ranks. Choose audit in the sidebar.")
        else:
            common.show_chart(fleet_rank_chart(rows),
                              caption="One point per adapter: its largest module rank against the largest "
                                      "rank the energy rule (0.99 of Σσ²) recommends for a module. "
                                      "Hover a point for the adapter.")
with tabs["Cap"]:
    if layout.is_open(tabs["Cap"]):
        if opts.screen:
            st.info("Headers only: no spectra, so no energy. Choose audit in the sidebar.")
        else:
            common.show_chart(fleet_cap_chart(rows, cap=cap, keep=settings["keep"]),
                              caption=common.md("Energy kept by each adapter when every module is cut "
                                                "to rank c; dashed: the cap {cap} (move the slider "
                                                "above), solid: the {keep:g} to keep.",
                                                cap=cap, keep=settings["keep"]))
with tabs["Downloads"]:
    notes = list(fleet.notes)
    common.download_buttons(stem="lorarank-fleet", key=fl.DOWNLOAD_KEY,
                            csv_bytes=fl.csv_bytes(rows, opts),
                            json_bytes=fl.document_bytes(rows, plan, opts, notes))
    b1, b2 = st.columns([1, 1])
    b1.download_button("Download report (HTML)", data=lambda: fl.report_bytes(rows, plan, opts, notes),
                       file_name="lorarank-fleet.html", mime="text/html", key=f"{fl.DOWNLOAD_KEY}_html",
                       on_click="ignore", icon=":material/download:")
    if not opts.screen:
        pad = st.toggle("pad every adapter to the cap (hot-swap)", key="fleet_pad",
                        help="Zero rows and columns up to rank = cap: the update is unchanged bit for bit.")
        b2.download_button(f"Download adapters at cap {cap} (.zip)",
                           data=lambda: fl.zip_bytes(fleet, rows, cap=cap, pad_to=cap if pad else None),
                           file_name=f"lorarank-fleet-cap{cap}.zip", mime="application/zip",
                           key=f"{fl.DOWNLOAD_KEY}_zip", on_click="ignore", icon=":material/download:",
                           help="One folder per adapter: shrunk to the cap with the resize (the best "
                                "rank-cap approximation), unchanged when it fits; padded if asked.")
