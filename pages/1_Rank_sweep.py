"""Rank sweep: fit LoRA at several ranks to a synthetic update of intrinsic rank k."""

import streamlit as st

from ui import common, sweep

common.setup_page("Rank sweep", icon=":material/stacked_line_chart:")

st.title("Rank sweep")
st.caption(
    "A synthetic fine-tuning update T with k planted directions plus a noise floor, fitted by "
    "LoRA at each rank r with the loss 0.5·||s·B·A − T||². Which r are too small, which match "
    "k, and what the rest spend their directions on. The defaults are the article's setup."
)
common.show_errors(common.check_url(sweep.SETTINGS, state_key=sweep.URL_ERRORS_KEY))

with st.container(border=True):
    st.markdown("**Target update T**")
    target_values = common.url_settings(sweep.TARGET_SETTINGS, columns=6)
with st.container(border=True):
    st.markdown("**LoRA training**")
    training_values = common.url_settings(sweep.TRAINING_SETTINGS, columns=7)

with common.stop_on_error():
    config = sweep.SweepConfig.from_values({**target_values, **training_values})
    run = sweep.run_sweep(config)

st.subheader("Results")
st.dataframe(
    sweep.results_table(run), hide_index=True,
    column_config={name: st.column_config.Column(name, help=text)
                   for name, text in sweep.COLUMN_HELP.items()},
    key="sweep_table",
)
st.caption(
    f"Learning rate {config.lr_used:g} ({config.optimizer}), {config.steps} steps, alpha rule "
    f"{config.rule}. Relative error is ||s·B·A − T||_F / ||T||_F. Computed in {run.seconds:.2f} s."
)
common.download_buttons(sweep.results_records(run), stem="lorarank-sweep",
                        key=sweep.DOWNLOAD_KEY, json_data=sweep.results_json(run))

st.subheader("What the numbers say")
st.markdown("\n".join(f"- {sentence}" for sentence in sweep.reading(run)))

charts = sweep.sweep_charts(config)
st.subheader("Spectra")
common.show_chart(
    charts.spectrum,
    caption=f"Grey: the target's first {charts.max_index} singular values. Blue: the trained "
            f"s·B·A's. Dashed: the noise floor {run.noise_floor:.3g} (Gavish-Donoho threshold for the "
            f"noise level); directions below it fit noise, not the task.",
)

st.subheader("Loss curves")
common.show_chart(
    charts.loss,
    caption="Loss 0.5·||s·B·A − T||_F² after each optimiser step, log scale. A curve that ends "
            "early with a cross diverged.",
)
