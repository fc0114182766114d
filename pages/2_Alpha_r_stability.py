"""alpha/r stability: final error over rank x learning rate for each LoRA scaling rule."""

import streamlit as st

from lorarank.errors import LoraRankError
from ui import common, datamode, layout
from ui import stability as stab

page = common.setup_page(__file__)

layout.header(
    common.md_escape(page.label),
    "Where training diverges over rank × learning rate for each scaling rule, and whether the "
    "stable window moves with r.",
    about="LoRA's update is s·B·A, and s multiplies the learning rate: on the loss "
          "0.5·||s·B·A − T||² plain gradient descent is stable only for about lr < 1 / (s·σ₁(T)). "
          "With a fixed alpha (s = alpha/r) raising r shrinks s, so learning slows and the "
          "stable window moves; with alpha = r it stays put. Each heatmap cell is one fit of "
          "the synthetic update T at one rank and one learning rate under one scaling rule.",
    terms=("scale s and alpha", "rsLoRA", "learning-rate window", "SGD bound 1/(s·σ₁)",
           "diverged", "Eckart-Young theorem", "held-out loss"),
)
common.show_errors(common.check_url(stab.SETTINGS + datamode.GRID_SETTINGS, state_key=stab.URL_ERRORS_KEY)
                   + stab.url_rule_errors())

target_values = layout.settings_group("Target update T", stab.TARGET_SETTINGS)
grid_box = st.sidebar.expander("Grid", expanded=True)
grid_values = layout.settings_group("Grid", stab.GRID_SETTINGS[:2], container=grid_box)
rules = stab.rules_widget(grid_box)
grid_values.update(layout.settings_group(
    "Grid", stab.GRID_SETTINGS[2:], container=grid_box,
    disabled={"alpha": lambda values: stab.alpha_unused(rules)}))
data = datamode.grid_inputs((target_values["d_out"], target_values["d_in"]))

try:
    grid_values["steps"] = datamode.grid_steps(grid_values["steps"], data)  # or epochs x ceil(n / batch)
    config = stab.StabilityConfig.from_values({**target_values, **grid_values}, rules, data=data)
    run = stab.guarded_grid(config)  # within the server's work budget, or what finished
    if run is not None:
        config = run.config
        # The first result, before the heatmaps (whose pandas and Altair load after it): the
        # largest learning rate each rule trains at, per rank.
        with st.container(key=stab.SUMMARY_KEY):
            st.markdown(common.markdown_table(
                stab.stable_lr_rows(stab.findings(run, target_err=grid_values["target_err"])),
                ["rule", *(f"r = {r}" for r in config.ranks)],
                right=[f"r = {r}" for r in config.ranks]))
        st.caption("Largest tested learning rate that trained without diverging, per scaling "
                   "rule and rank ('> x': none diverged up to the largest tried; none: all "
                   "did). The heatmaps below show every cell.")
        views = stab.grid_views(config, grid_values["target_err"])
except LoraRankError as exc:  # one sentence; the calculator still works
    common.show_errors([common.error_line(exc)])
    run = None

tabs = layout.sections(["Grid", "Learning-rate window", "Loss curves", "Scaling calculator"])

if run is not None:
    if layout.is_open(tabs["Grid"]):
        with tabs["Grid"]:
            layout.show_panels(
                views.heatmap, columns=2,
                caption="Colour: final relative error ||s·B·A − T||_F / ||T||_F (log scale, "
                        "lighter is lower). Orange cells marked 'div' diverged; hover a cell for s, "
                        "the step it diverged at and its largest update norm.",
            )
            st.markdown("\n".join(  # each rule's sentences start with its name: set it in bold
                common.md("- **{}**{}", rule.rule, common.md_text(" ".join(rule.sentences)[len(rule.rule):]))
                for rule in views.findings.rules))
            st.caption(common.md(
                "Read off this grid: {cells} cells, {optimizer}, {steps} steps, alpha {alpha:g}, "
                "σ₁(T) = {sigma:.4g}. A run counts as diverged when its loss becomes non-finite or "
                "exceeds 10⁴ times its start. Computed in {seconds:.2f} s. {data}",
                cells=len(run.grid.records), optimizer=config.optimizer, steps=config.steps,
                alpha=config.alpha, sigma=run.sigma_1, seconds=run.seconds,
                data=datamode.grid_caption(config.data, config.steps)))
            common.download_buttons(stem="lorarank-stability", key=stab.DOWNLOAD_KEY,
                                    csv_bytes=views.csv, json_bytes=views.json)
            st.caption("The JSON download is the document `python -m lorarank stability --json` "
                       "prints (records with loss curves); the CSV has one row per cell without "
                       "the curves.")
            with st.expander("Every cell", expanded=False):
                st.dataframe(
                    views.cells, hide_index=True, key="stability_cells",
                    column_config={name: st.column_config.Column(name, help=text)
                                   for name, text in stab.CELL_HELP.items()},
                )
            if config.data is not None:
                with st.expander("Training and held-out loss per cell", expanded=False):
                    st.dataframe(datamode.grid_losses_table(run.grid.records), hide_index=True,
                                 key="data_grid_losses")

    if layout.is_open(tabs["Learning-rate window"]):
        with tabs["Learning-rate window"]:
            st.dataframe(
                views.windows, hide_index=True, key="stability_windows",
                height=common.table_height(len(views.windows)),  # every rule x rank, no inner scroll
                column_config={name: st.column_config.Column(name, help=text)
                               for name, text in stab.WINDOW_HELP.items()},
            )

    with tabs["Loss curves"]:
        picked = stab.curve_widgets(config)  # drawn in every run: they keep their URL values
    if picked["mode"] == stab.CURVE_MODES[0]:
        loss_spec, norm_spec = stab.curve_specs(
            config, picked["rule"], lr=picked["lr"], rank=None, color_by="rank",
            title=f"{picked['rule']}, lr {picked['lr']:g}: every rank")
    else:
        loss_spec, norm_spec = stab.curve_specs(
            config, picked["rule"], lr=None, rank=picked["rank"], color_by="lr",
            title=f"{picked['rule']}, r = {picked['rank']}: every learning rate")
    if layout.is_open(tabs["Loss curves"]):
        with tabs["Loss curves"]:
            left, right = st.columns(2)
            with left:
                common.show_chart(
                    loss_spec,
                    caption="Loss 0.5·||s·B·A − T||_F² after each step (log scale). A curve that "
                            "ends early with a cross diverged at that step.",
                )
            with right:
                common.show_chart(
                    norm_spec,
                    caption=common.md(
                        "Largest ||s·B·A||_F over the steps of each cell of {rule}. A trained run ends "
                        "near ||T||_F = {norm:.4g} (dashed); a diverging one overshoots it (a cross: it "
                        "diverged).", rule=picked["rule"], norm=run.target_norm),
                )
    with tabs["Grid"]:
        from ui import report as report_ui  # pandas and the report's libraries: after the results

        report_ui.stability_button(config, views, [
            ("Loss curves", loss_spec, "Loss 0.5·||s·B·A − T||_F² after each step (log scale)."),
            ("Largest update norms", norm_spec, "Largest ||s·B·A||_F over the steps of each cell.")])
else:
    for name in ("Grid", "Learning-rate window", "Loss curves"):
        tabs[name].caption("Nothing to show until the settings in the sidebar are valid (see the "
                           "error above).")

with tabs["Scaling calculator"]:
    st.caption("The multiplier s an adapter's files imply, and the alpha that keeps its "
               "behaviour when you change r.")
    cols = st.columns([1.3, 1, 1, 1])
    calc = {s.key: s for s in stab.CALC_SETTINGS}
    calc_values = {"calc_convention": common.setting_widget(calc["calc_convention"], cols[0])}
    calc_values["calc_r"] = common.setting_widget(calc["calc_r"], cols[1])
    if calc_values["calc_convention"] == "mlx-lm":
        calc_values["calc_scale"] = common.setting_widget(calc["calc_scale"], cols[2])
    else:
        no_alpha = False
        if calc_values["calc_convention"] == "kohya":
            no_alpha = cols[2].toggle("no alpha key", key=stab.CALC_NO_ALPHA_KEY,
                                      bind="query-params",
                                      help="kohya files without a .alpha tensor use s = 1.")
        calc_values[stab.CALC_NO_ALPHA_KEY] = no_alpha
        if not no_alpha:
            calc_values["calc_alpha"] = common.setting_widget(calc["calc_alpha"], cols[2])
    calc_values["calc_r_new"] = common.setting_widget(calc["calc_r_new"], cols[3])
    with common.stop_on_error():
        answer = stab.calculator(calc_values)
    m1, m2 = st.columns(2)
    m1.metric(f"s at r = {calc_values['calc_r']}", f"{answer['scale']:.6g}",
              help=stab.CONVENTIONS[calc_values["calc_convention"]])
    m2.metric(f"s at r = {calc_values['calc_r_new']} with the same {answer['knob']}",
              f"{answer['same_alpha']:.6g}",
              help="What happens if you change r and leave the config alone.")
    if layout.is_open(tabs["Scaling calculator"]):
        st.dataframe(answer["table"], hide_index=True, key="stability_calc_table")
