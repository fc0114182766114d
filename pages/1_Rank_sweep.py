"""Rank sweep: fit LoRA at several ranks to a synthetic update of intrinsic rank k."""

import streamlit as st

from ui import common, datamode, layout, sweep

page = common.setup_page(__file__)

layout.header(
    common.md_escape(page.label),
    "LoRA fitted at each rank r to a synthetic update T of intrinsic rank k plus noise: which r "
    "are too small, which match k.",
    about="T has k planted directions plus a noise floor; each rank r is fitted by gradient "
          "descent on the loss 0.5·||s·B·A − T||², as PEFT trains (B = 0, A random). The table "
          "puts each r's final error beside the best any rank-r matrix can do (Eckart-Young), "
          "and the spectra show what the extra directions of a large r are spent on. The "
          "defaults are the article's setup.",
    terms=("intrinsic rank k", "Eckart-Young theorem", "effective rank", "noise floor",
           "Gavish-Donoho threshold", "held-out loss", "rank-r optimum (training)", "diverged"),
)
common.show_errors(common.check_url(sweep.SETTINGS + datamode.SWEEP_SETTINGS,
                                    state_key=sweep.URL_ERRORS_KEY))

target_values = layout.settings_group("Target update T", sweep.TARGET_SETTINGS)
training_values = layout.settings_group(
    "LoRA training", sweep.TRAINING_SETTINGS,
    disabled={"alpha": lambda values: sweep.alpha_unused([values.get("rule", "")])})
data_values = datamode.sweep_inputs()

with common.stop_on_error():
    config = sweep.SweepConfig.from_values({**target_values, **training_values})

if datamode.is_data_mode(data_values):
    # Results first: the finite-data reading and table; the exact target's (n → ∞) in a tab.
    tabs = datamode.sweep_results(config, data_values)
    if tabs is None:  # the finite-data sweep waits for Run or is past the cap: the exact one shows
        sweep.show_results(config, note=datamode.EXACT_WAITING_NOTE)
    elif layout.is_open(tabs["Exact target"]):
        with tabs["Exact target"]:
            shown = sweep.show_results(config, note=datamode.EXACT_NOTE)
            if shown is not None:
                from ui import report as report_ui  # pandas and the report's libraries: after the results

                report_ui.sweep_button(*shown)
    st.stop()

shown = sweep.show_results(config)
if shown is None:
    st.stop()
run, charts = shown
tabs = layout.sections(["Spectra", "Loss curves", datamode.SWITCH_TAB])
if layout.is_open(tabs[datamode.SWITCH_TAB]):
    with tabs[datamode.SWITCH_TAB]:
        datamode.switch_hint()
if layout.is_open(tabs["Spectra"]):
    with tabs["Spectra"]:
        layout.show_panels(
            charts.spectrum, columns=4, legend=False,
            caption=common.md(
                "Grey: the target's first {n} singular values. Blue: the trained s·B·A's. Dashed: "
                "the noise floor {floor:.3g} (Gavish-Donoho threshold for the noise level); "
                "directions below it fit noise, not the task.", n=charts.max_index,
                floor=run.noise_floor),
        )
if layout.is_open(tabs["Loss curves"]):
    with tabs["Loss curves"]:
        common.show_chart(
            charts.loss,
            caption="Loss 0.5·||s·B·A − T||_F² after each optimiser step, log scale. A curve "
                    "that ends early with a cross diverged.",
        )

from ui import report as report_ui  # noqa: E402 - pandas and the report's libraries: after the results

report_ui.sweep_button(run, charts)
