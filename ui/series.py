"""Rank over training, the Adapter audit page's checkpoint-series section.

The page calls :func:`section` where the section belongs (a tab of its own); everything the
section shows is drawn here: its uploader (a ``.zip`` of the run folder, or kohya numbered
files), its URL-bound settings (``?series_metric=...&series_step=...&series_module=...``),
the cached engine call (:func:`run_series`), the reading, the whole-adapter table with CSV /
JSON downloads, and three charts: rank over steps, the layer x module map at a chosen step,
and phi over steps. Uploaded bytes stay in memory (never on disk, in the URL or in logs).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import streamlit as st

from lorarank.adapters import adapter_files
from lorarank.documents import json_clean, short_name, split_list
from lorarank.errors import LoraRankError
from lorarank.checkpoints import HubSeries, HubSeriesRef, checkpoints_from_files, plan_hub_series
from lorarank.series import SERIES_METRICS, SeriesReport, audit_series
from lorarank.synthetic import make_demo_run

from .audit import MAP_METRICS, Upload, rule_text
from .common import (Markdown, Setting, check_url, dash_missing, download_buttons, error_line, md, md_code,
                     md_text, number_column, progress_bar, setting_widget, show_chart, show_errors,
                     table_height)
from .examples import run_upload
from .hub import hub_settings  # the page's Hub limits (byte cap = the upload limit)
from .hub import hub_token

if TYPE_CHECKING:  # pandas loads with the first table, not with the page (a cold server's first render)
    import pandas as pd

__all__ = [
    "TAB", "UPLOAD_KEY", "DOWNLOAD_KEY", "URL_ERRORS_KEY", "DEMO_KEY", "STEP_KEY", "MODULE_KEY", "NO_MODULE",
    "METRIC", "TOP", "SETTINGS", "run_series", "demo_files", "demo_upload", "rows", "adapter_table",
    "reading", "url_choice_error", "showing", "linked", "section",
]

# ------------------------------------------------------------------------------ session keys
UPLOAD_KEY = "audit_series_upload"
DOWNLOAD_KEY = "audit_series_download"
URL_ERRORS_KEY = "audit_series_url_errors"
#: URL-bound keys drawn by the section itself (their options depend on the run).
DEMO_KEY = "series_demo"
EXAMPLE_KEY = "series_example"  # the real example run (examples/checkpoints_run)
#: The page's tab holding the section (shown first when the link carries a series setting).
TAB = "Rank over training"
STEP_KEY = "series_step"
MODULE_KEY = "series_module"
NO_MODULE = "(none)"
#: A run on the Hub in the link: repo, revisions (comma-separated, as typed), folder, and the
#: commits they resolved to (written after the first load, so a shared link shows the same numbers).
HUB_REPO_KEY = "series_hf"
HUB_REVISIONS_KEY = "series_revisions"
HUB_SUBFOLDER_KEY = "series_subfolder"
HUB_COMMITS_KEY = "series_commits"
HUB_KEYS = (HUB_REPO_KEY, HUB_REVISIONS_KEY, HUB_SUBFOLDER_KEY, HUB_COMMITS_KEY)

METRIC = Setting("series_metric", "rank over steps shows", "recommended_rank",
                 "The per-module number drawn over steps (mean over the layers of each module "
                 "type) and in the map at the chosen step.",
                 kind="choice", options=tuple(SERIES_METRICS), select=True,
                 labels=tuple(SERIES_METRICS.items()))
TOP = Setting("series_top", "phi: top directions k", 4,
              "phi(k, k) between two checkpoints uses the top k = min(this, r) right singular "
              "vectors of each A factor (as the compare mode does).",
              min_value=1, max_value=4096)
SETTINGS: tuple[Setting, ...] = (METRIC, TOP)

_HASH = {Upload: lambda u: u.ident}


# ---------------------------------------------------------------------------------- engine
@st.cache_data(show_spinner=False, max_entries=8, hash_funcs=_HASH)
def run_series(upload: Upload, *, rule: str, value: float, top: int) -> SeriesReport:
    """Every checkpoint of the upload audited, in step order (progress bar per checkpoint)."""
    run = checkpoints_from_files(list(upload.files))
    with progress_bar(f"Auditing {len(run.checkpoints)} checkpoints (read one at a time)") as progress:
        return audit_series(run, rule=rule, value=value, top=top, progress=progress)


@st.cache_data(show_spinner=False, max_entries=32, ttl=300)
def plan_hub(repo: str, revisions: tuple[str | None, ...], subfolder: str,
             labels: tuple[str, ...]) -> HubSeries:
    """The checkpoints of a Hub run, pinned (cached 5 minutes, so a branch that moves is seen
    again soon); only the small trainer_state.json files are downloaded here. The whole run's
    files must fit the page's per-request byte cap (the upload limit, as a zipped run would)."""
    spec = HubSeriesRef(repo, revisions, subfolder)
    with progress_bar(f"Listing {spec.uri} on the Hub") as bar:
        return plan_hub_series(spec, token=hub_token(), settings=hub_settings(),
                               labels=labels, progress=lambda done, total: bar(done, max(total, 1)))


@st.cache_data(show_spinner=False, max_entries=8)
def run_hub_series(repo: str, commits: tuple[str, ...], subfolder: str, labels: tuple[str, ...], *,
                   rule: str, value: float, top: int) -> SeriesReport:
    """Every checkpoint of a pinned Hub run audited: each downloaded into the bounded cache and
    read when its turn comes (one adapter in memory at a time; progress bar per checkpoint)."""
    plan = plan_hub(repo, commits, subfolder, labels)
    run = plan.run(token=hub_token(), settings=hub_settings())
    with progress_bar(f"Downloading and auditing {len(run.checkpoints)} checkpoints from the Hub "
                      f"(one at a time)") as progress:
        return audit_series(run, rule=rule, value=value, top=top, progress=progress)


def _set_hub_url(repo: str, revisions: str, subfolder: str) -> None:
    for key, value in ((HUB_REPO_KEY, repo), (HUB_REVISIONS_KEY, ",".join(split_list(revisions))),
                       (HUB_SUBFOLDER_KEY, subfolder)):
        if value.strip():
            st.query_params[key] = value.strip()
        elif key in st.query_params:
            del st.query_params[key]
    if HUB_COMMITS_KEY in st.query_params:
        del st.query_params[HUB_COMMITS_KEY]


def hub_series_input(*, notices: Any = None) -> tuple[HubSeries, tuple[str, ...]] | None:
    """Draw the Hub fields of the section; list the run the link names and pin its commits.

    Returns ``(plan, labels)`` (the plan pinned to commits; labels: the revisions as typed),
    or None when the link names no run or it cannot be listed (then one ``st.error``).
    ``notices``: where that error and the line naming the loaded run go (default: here).
    """
    notices = st if notices is None else notices
    with st.form("audit_series_hub_form", border=False, enter_to_submit=True):
        cols = st.columns([2.2, 2.5, 1.3, 0.8], vertical_alignment="bottom")
        repo = cols[0].text_input(
            "…or a run on the Hugging Face Hub", value=st.query_params.get(HUB_REPO_KEY, ""),
            key="audit_series_hub_repo", placeholder="owner/name", max_chars=200,
            help="A repo the trainer pushed to. Private or gated repos need a token in the "
                 "server's secrets (HF_TOKEN); never put one in the link.")
        revisions = cols[1].text_input(
            "revisions (one checkpoint each)", value=st.query_params.get(HUB_REVISIONS_KEY, ""),
            key="audit_series_hub_revisions", placeholder="empty: its checkpoint-* folders",
            max_chars=4000,
            help="Several branches, tags or commits separated by commas, one checkpoint each "
                 "(Trainer(push_to_hub=True) pushes a commit per save), ordered by their "
                 "trainer_state.json, else as typed. One revision or none: the checkpoint-<step> "
                 "folders of the repo at that revision (hub_strategy='all_checkpoints'). The "
                 "link pins the commits, so it shows the same numbers later.")
        subfolder = cols[2].text_input(
            "subfolder", value=st.query_params.get(HUB_SUBFOLDER_KEY, ""),
            key="audit_series_hub_subfolder", placeholder="(repo root)", max_chars=500,
            help="Folder inside the repo holding the adapter (per revision) or the "
                 "checkpoint-<step> folders.")
        submitted = cols[3].form_submit_button("Load", icon=":material/cloud_download:")
    if submitted:
        _set_hub_url(repo, revisions, subfolder)
    repo_id = st.query_params.get(HUB_REPO_KEY, "").strip()
    if not repo_id:
        return None
    try:
        names = tuple(split_list(st.query_params.get(HUB_REVISIONS_KEY, ""))) or (None,)
        spec = HubSeriesRef(repo_id, names, st.query_params.get(HUB_SUBFOLDER_KEY, ""))
        labels = tuple(str(n) for n in spec.revisions)
        commits = tuple(split_list(st.query_params.get(HUB_COMMITS_KEY, "")))
        if len(commits) == len(spec.revisions):
            pinned = HubSeriesRef(spec.repo_id, commits, spec.subfolder)  # checks each commit
        else:
            pinned = spec
        plan = plan_hub(pinned.repo_id, pinned.revisions, pinned.subfolder, labels)
    except LoraRankError as exc:
        notices.error(error_line(exc), icon=":material/error:")
        return None
    pins = ",".join(plan.commits)
    if st.query_params.get(HUB_COMMITS_KEY) != pins:
        st.query_params[HUB_COMMITS_KEY] = pins
    what = (md("{n} revisions", n=len(plan.checkpoints)) if spec.by_revision else
            md("{n} checkpoint folders at commit {commit!c}", n=len(plan.checkpoints),
               commit=plan.commits[0][:12]))
    notices.caption(md("Loaded **{repo}**{sub}: {what} ({mb:.1f} MB); the link pins {pins}.",
                       repo=spec.repo_id, sub=md(" / {}", spec.subfolder) if spec.subfolder else Markdown(""),
                       what=what, mb=plan.total_bytes / 1e6,
                       pins="each revision to its commit" if spec.by_revision else "this commit"))
    return plan, labels


# ------------------------------------------------------------------------------------ demo
@st.cache_data(show_spinner=False, max_entries=1)
def demo_files() -> bytes:
    """The synthetic run (:func:`lorarank.synthetic.make_demo_run`) as a ``.zip`` of
    ``checkpoint-<step>`` folders, each written by the engine's own PEFT writer with a
    ``trainer_state.json``, and read back like an upload."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for step, adapter in make_demo_run():
            for name, data in adapter_files(adapter, format="peft").items():
                archive.writestr(f"demo-run/checkpoint-{step}/{name}", data)
            archive.writestr(f"demo-run/checkpoint-{step}/trainer_state.json",
                             json.dumps({"global_step": step}))
    return buf.getvalue()


def demo_upload() -> Upload:
    """The synthetic run as an :class:`Upload` (as if its zip were uploaded)."""
    return Upload.from_files([("demo-run.zip", demo_files())], label="synthetic demo run")


# ---------------------------------------------------------------------------------- tables
def rows(report: SeriesReport) -> list[dict]:
    """The engine's rows (one per step and module) with a short ``name`` for display."""
    return [{**row, "name": short_name(row["module"])} for row in report.table()]


ADAPTER_HELP: dict[str, str] = {
    "step": "Training step of the checkpoint (trainer_state.json global_step, else the folder name; "
            "for Hub revisions without trainer_state.json, the position in the order given).",
    "directions": "Sum over the modules of the recommended rank: the directions a resize by the "
                  "rule would keep.",
    "median rank": "Median recommended rank over the modules.",
    "mean k(0.9)": "Mean over modules of the energy rank k(0.9): smallest k with "
                   "Σ_{i≤k} σᵢ² ≥ 0.9·Σσ² (σ of s·B·A).",
    "mean k(0.99)": "As k(0.9), at 0.99.",
    "mean stable rank": "Mean over modules of Σσ² / σ₁².",
    "||dW||² total": "Sum over modules of ||s·B·A||_F² = Σσ².",
    "phi with next": "Mean over modules of phi(k, k) between this checkpoint's A and the next "
                     "one's (right singular vectors; Hu et al. 2022, section 7.2). '-' at the "
                     "last checkpoint: it has no next one.",
    "phi with last": "Mean over modules of phi(k, k) between this checkpoint's A and the last one's.",
}


def adapter_table(report: SeriesReport) -> pd.DataFrame:
    """The whole adapter per checkpoint (over the modules present in every checkpoint)."""
    import pandas as pd
    out = [{"step": a["step"], "checkpoint": report.label(i), "directions": a["directions"],
            "median rank": a["recommended_rank_median"], "mean k(0.9)": a.get("energy_rank_0.9_mean"),
            "mean k(0.99)": a.get("energy_rank_0.99_mean"), "mean stable rank": a["stable_rank_mean"],
            "||dW||² total": a["energy"], "phi with next": a["phi_next_mean"],
            "phi with last": a["phi_last_mean"]} for i, a in enumerate(report.adapter)]
    columns = list(ADAPTER_HELP)
    if any(x is not None for x in report.labels):
        columns.insert(1, "checkpoint")
    return pd.DataFrame(out, columns=columns)


def reading(report: SeriesReport) -> Markdown:
    """Plain words read off the series (markdown)."""
    steps, a = report.steps, report.adapter
    rule = rule_text(report.rule, report.value)
    if not report.modules:
        return Markdown("The checkpoints share no module, so nothing can be followed over steps: "
                        "each checkpoint's own audit still lists its modules.")
    if len(steps) == 1:
        return md("One checkpoint (step {step}): its {n} modules need **{d}** directions under "
                  "**{rule}**. Add more checkpoints to see rank over training.",
                  step=steps[0], n=len(report.modules), d=a[0]["directions"], rule=rule)
    first, last = a[0], a[-1]
    settled = report.settled_step
    if settled == steps[-1]:
        when = md("some module's recommended rank still changed at the last checkpoint (step "
                  "{step}): the rank had **not settled** when training stopped", step=steps[-1])
    elif settled == steps[0]:
        when = md("no module's recommended rank changed after the first checkpoint (step {step})",
                  step=settled)
    else:
        when = md("the recommended rank **settled at step {step}**: no module's changed after it",
                  step=settled)
    return md("Over {n} checkpoints (steps {s0} to {s1}) the {m} modules needed **{d0}** directions "
              "under **{rule}** at first and **{d1}** at the end (median rank {r0:g} -> {r1:g}); "
              "{when}. The top-{top} input directions of A at step {s0} overlap the final ones by "
              "phi = **{phi_last}** on average, and the last two checkpoints by **{phi_next}** "
              "(1 = the same directions).",
              n=len(steps), s0=steps[0], s1=steps[-1], m=len(report.modules),
              d0=first["directions"], d1=last["directions"], rule=rule,
              r0=first["recommended_rank_median"], r1=last["recommended_rank_median"], when=when,
              top=report.top, phi_last=_fmt3(first["phi_last_mean"]), phi_next=_fmt3(a[-2]["phi_next_mean"]))


def _fmt3(value: float | None) -> str:
    """phi to three decimals, or "n/a" when no module had it."""
    return "n/a" if value is None else f"{value:.3f}"


def url_choice_error(key: str, options: Sequence[str], what: str, fallback: str, *,
                     where: str = "this run") -> Markdown | None:
    """One sentence when the URL's ``key`` is not one of ``options`` (checked before the widget);
    ``where`` names what lacks it."""
    if key not in st.query_params:
        return None
    raw = st.query_params[key]
    if raw in options:
        return None
    return md("The link sets {param!c}, but {where} has no such {what}; {fallback} is shown instead.",
              param=f"{key}={raw}", where=where, what=what, fallback=fallback)


# ---------------------------------------------------------------------------------- section
def showing() -> bool:
    """Whether the section will show a run before it reads anything: files in its uploader,
    a Hub run in the link, or the demo switch on (its inputs then fold away, results first)."""
    if st.session_state.get(UPLOAD_KEY) or st.query_params.get(HUB_REPO_KEY, "").strip():
        return True
    for key in (DEMO_KEY, EXAMPLE_KEY):
        on = st.session_state.get(key)
        if on is None:
            on = st.query_params.get(key, "").lower() == "true"
        if on:
            return True
    return False


def linked() -> bool:
    """True when the link carries a setting of this section (show its tab first)."""
    return any(key in st.query_params for key in (*(s.key for s in SETTINGS), DEMO_KEY, EXAMPLE_KEY,
                                                  STEP_KEY, MODULE_KEY, *HUB_KEYS))


def section(*, rule: str, value: float | None) -> None:
    """Draw the whole "Rank over training" section: input, reading, table, downloads, charts.

    Parameters
    ----------
    rule, value
        The page's rank rule (the recommended rank of every checkpoint).

    Errors in the upload are shown as one sentence and end the section only, not the page.
    """
    show_errors(check_url(SETTINGS, state_key=URL_ERRORS_KEY))
    # Results first: the reading and the table go here, above the inputs, which fold into a
    # collapsed expander once a run is shown.
    results = st.container()
    head = results.container()  # reading, table, downloads (filled after the settings below)
    inputs = (st.expander("Follow another run (a .zip, the Hub, an example or the demo)", expanded=False,
                          icon=":material/upload_file:") if showing() else st.container())
    with inputs:
        uploaded = st.file_uploader(
            "Checkpoints of one training run", type=["zip", "safetensors", "npz", "json"],
            accept_multiple_files=True, key=UPLOAD_KEY,
            help="A .zip of the run's output folder (its checkpoint-<step> subfolders, each with "
                 "adapter_model.safetensors, adapter_config.json and trainer_state.json), or kohya "
                 "numbered saves (name-000005.safetensors). Read in memory, one checkpoint at a time; "
                 "never stored, logged or put in the URL.")
        upload = Upload.from_uploaded(uploaded)
        hub = hub_series_input(notices=head)
        demo = real = False
        if upload is None and hub is None:
            st.markdown(
                "**Follow a training run:** zip the folder your trainer wrote (`output_dir` with its "
                "`checkpoint-<step>` subfolders, as Transformers' `Trainer` and TRL save them; "
                "`optimizer.pt` and the like may stay in, they are not read) and drop the `.zip` "
                "here. Each checkpoint's step comes from its `trainer_state.json`, else the folder "
                "name. Browsers give an upload only file names, so several `adapter_model.safetensors` "
                "cannot be told apart without the zip.")
            real = st.toggle("Use a real example run", key=EXAMPLE_KEY, bind="query-params",
                             help="Six checkpoints (steps 15 to 90) of one real PEFT training run "
                                  "(LoRA r = 12 on a small Llama, written by peft 0.21.2 and "
                                  "transformers), shipped in the repository's examples/ folder.")
            demo = not real and st.toggle(
                "Use the synthetic demo run", key=DEMO_KEY, bind="query-params",
                help="Six PEFT checkpoints (r = 8) generated here whose modules grow 2, 4 and 6 "
                     "planted directions by steps 50, 100 and 150: synthetic, not a trained model.")
    if upload is None and hub is None:
        if real:
            upload = run_upload()
            head.caption(":material/folder_open: **Real example run**: six checkpoints (steps 15 "
                         "to 90) of one PEFT training run, from the repository's `examples/` "
                         "folder (your own run: **Follow another run** below).")
        elif demo:
            upload = demo_upload()
            head.caption(":material/science: **Synthetic demo run**, steps 50 to 300: q_proj grows 2 "
                         "planted directions by step 50, v_proj 4 by 100, down_proj 6 by 150 (your own "
                         "run: **Follow another run** below).")
        else:
            return
    with results:
        cols = st.columns([1.3, 1, 2])
        metric = setting_widget(METRIC, cols[0])
        top = setting_widget(TOP, cols[1])
    try:
        if upload is None and hub is not None:
            plan, labels = hub
            report = run_hub_series(plan.spec.repo_id, plan.commits, plan.spec.subfolder, labels,
                                    rule=rule, value=float(value or 0.0), top=int(top))
        else:
            report = run_series(upload, rule=rule, value=float(value or 0.0), top=int(top))
    except LoraRankError as exc:
        head.error(error_line(exc), icon=":material/error:")
        return
    with head:
        for note in report.notes:
            st.info(md_text(note), icon=":material/info:")
        st.markdown(reading(report))
        table = dash_missing(adapter_table(report), list(ADAPTER_HELP))  # "-", never "None"
        st.dataframe(table, hide_index=True, key="audit_series_table",
                     height=table_height(len(report.steps), max_rows=24),
                     column_config={
                         **{n: number_column(table, n, help=t) for n, t in ADAPTER_HELP.items()},
                         "step": st.column_config.NumberColumn("step", help=ADAPTER_HELP["step"], format="%d"),
                         "checkpoint": st.column_config.TextColumn(
                             "checkpoint", help="The Hub revision as given, or the checkpoint-<step> folder "
                                                "(the link pins each to its commit)."),
                         "directions": st.column_config.NumberColumn(
                             "directions", help=ADAPTER_HELP["directions"], format="%d")})
        st.caption(md("One row per checkpoint, over the {n} modules present in every checkpoint; "
                      "recommended rank under {rule}. The downloads hold every module at every step "
                      "(CSV: one row per step and module with σ₁…σ_r; JSON: what "
                      "`lorarank audit --series DIR --json` prints).",
                      n=len(report.modules), rule=rule_text(report.rule, report.value)))
        table = rows(report)
        import pandas as pd  # loads with the first table

        frame = pd.DataFrame(table)  # no shared module: no rows, no columns (the JSON has each audit)
        download_buttons(frame.drop(columns=["name"], errors="ignore"), stem="lorarank-series",
                         key=DOWNLOAD_KEY, json_data=json_clean(report.to_dict()))
    if not report.modules:  # nothing to follow over steps: the reading said so
        return
    with results:  # under the reading and the table, above the inputs
        _charts(report, table, metric)


def _charts(report: SeriesReport, table: list[dict], metric: str) -> None:
    """The section's three charts with their choosers."""
    from lorarank.charts import phi_over_steps_chart, rank_map_chart, rank_over_steps_chart
    # Rank over steps, with one module on demand.
    names = [NO_MODULE] + [short_name(m.name) for m in report.modules]
    bad = url_choice_error(MODULE_KEY, names, "module", "no single module")
    if bad:
        show_errors([bad])
    module = st.selectbox("also draw one module", names, key=MODULE_KEY, bind="query-params",
                          help="Its own line (dashed, grey) beside the module-type means; "
                               "kept in the link.")
    chosen = None if module == NO_MODULE else module
    show_chart(rank_over_steps_chart(table, metric=metric, module=chosen,
                                     settled_step=report.settled_step),
               caption=md("{metric} of every module at every checkpoint, averaged over the layers of "
                          "each module type (hover for min and max). Dashed grey rule: step {step}, "
                          "after which no module's recommended rank changed.",
                          metric=SERIES_METRICS[metric], step=report.settled_step))

    # The layer x module map at one step.
    steps = [str(s) for s in report.steps]
    bad = url_choice_error(STEP_KEY, steps, "step", f"the last step, {steps[-1]},")
    if bad:
        show_errors([bad])
    names_at = {str(s): (str(s) if report.label(i) == str(s) else f"{s} ({report.label(i)})")
                for i, s in enumerate(report.steps)}
    step = st.select_slider("map at step", steps, value=steps[-1], key=STEP_KEY, bind="query-params",
                            format_func=names_at.get,
                            help="The checkpoint whose modules the map shows; kept in the link.")
    at = report.report_at(int(step))
    map_metric = metric if metric in MAP_METRICS else "recommended_rank"
    show_chart(rank_map_chart(at.rank_map(map_metric), metric=f"{MAP_METRICS[map_metric]} at step {step}"),
               caption=md("Every module of the checkpoint at step {step} (layer x module type{why}).",
                          step=step, why="" if map_metric == metric else
                          "; σ₁ has no map, the recommended rank is shown"))

    # phi over steps.
    chance = float(np.mean([m.chance for m in report.modules])) if report.modules else None
    show_chart(phi_over_steps_chart(table, module=chosen, top=report.top, chance=chance),
               caption=md("phi(k, k) = ||U_kᵀV_k||_F² / k on the top k = min({top}, r) right singular "
                          "vectors of two checkpoints' A factors (Hu et al. 2022, section 7.2), as "
                          "the compare mode computes it. Solid: with the next checkpoint (drawn at the "
                          "earlier step); dashed: with the last. Dotted: the chance level k / d_in of "
                          "two random subspaces.", top=report.top))
