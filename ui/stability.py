"""The alpha/r stability page's pieces: URL settings, the cached grid, tables and the calculator.

Keys of the URL-bound widgets are readable names (``?ranks=4,8,64&lrs=0.01,0.1&rules=rslora``);
the calculator's start with ``calc_`` and the curve selectors with ``curves_``. Other
session-state keys of this page start with ``stability_``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import streamlit as st

from lorarank.data import DataConfig
from lorarank.cost import WorkEstimate, stability_cost
from lorarank.documents import json_bytes, parse_numbers
from lorarank.errors import ConfigError
from lorarank.fit import OPTIMIZERS, SCALING_RULES
from lorarank.stability import (CONVENTIONS, DEFAULT_LRS, DEFAULT_RANKS, DEFAULT_STEPS,
                                KEEP_MODES, StabilityFindings, StabilityGrid, alpha_to_keep,
                                run_stability, scale_for, stability_findings)

from . import guard
from .common import Markdown, Setting, chart_spec, frame_csv, md, progress_bar, whole_run
from .common import parse_ranks as common_parse_ranks
from .sweep import TARGET_SETTINGS as _SWEEP_TARGET_SETTINGS
from .sweep import TargetConfig, alpha_unused

if TYPE_CHECKING:  # pandas and Altair load after the first result (slow imports)
    import pandas as pd

__all__ = [
    "MAX_DIM_APP", "MAX_STEPS_APP", "MAX_RANKS_APP", "MAX_LRS_APP", "MAX_CELLS_APP",
    "URL_ERRORS_KEY", "DOWNLOAD_KEY", "RULES_KEY", "CURVE_MODES", "CURVE_KEYS",
    "CALC_NO_ALPHA_KEY", "TARGET_SETTINGS", "GRID_SETTINGS", "CALC_SETTINGS", "SETTINGS",
    "rules_widget", "url_rule_errors", "curve_widgets", "parse_ranks", "parse_lrs",
    "StabilityConfig", "StabilityRun", "run_grid", "GATE_KEY", "grid_estimate", "by_rank",
    "finished_ranks", "guarded_grid", "findings", "stable_lr_rows", "windows_table", "WINDOW_HELP",
    "cells_table", "CELL_HELP", "cells_csv_frame", "row_records", "calculator", "alpha_unused",
]

#: Limits of the hosted app (the engine and CLI accept more; a grid must answer in seconds).
MAX_DIM_APP = 256
MAX_STEPS_APP = 5000
MAX_RANKS_APP = 8
MAX_LRS_APP = 8
MAX_CELLS_APP = 200

#: Session-state keys of this page that are not Setting-bound.
URL_ERRORS_KEY = "stability_url_errors"
DOWNLOAD_KEY = "stability_download"
GATE_KEY = "stability_gate"  # prefix of the work-budget gate's keys (Run, Stop, approval)
SUMMARY_KEY = "stability_summary"  # the container of the first table (stable lr per rule, rank)
RULES_KEY = "rules"  # the multiselect of scaling rules, bound to ?rules=...&rules=...

#: The sweep's target settings, with the app's smaller size limit for a grid.
TARGET_SETTINGS: tuple[Setting, ...] = tuple(
    dataclasses.replace(s, max_value=MAX_DIM_APP) if s.key in ("d_out", "d_in") else s
    for s in _SWEEP_TARGET_SETTINGS)

GRID_SETTINGS: tuple[Setting, ...] = (
    Setting("ranks", "ranks r", ",".join(map(str, DEFAULT_RANKS)),
            f"LoRA ranks, separated by commas (up to {MAX_RANKS_APP}), each at most "
            "min(d_out, d_in).", kind="text", placeholder="e.g. 4,8,16,32,64"),
    Setting("lrs", "learning rates", ",".join(f"{v:g}" for v in DEFAULT_LRS),
            f"Learning rates, separated by commas (up to {MAX_LRS_APP}): steps on the loss "
            "0.5·||s·B·A − T||_F². SGD is stable for roughly lr < 1 / (s·sigma_max).",
            kind="text", placeholder="e.g. 0.001,0.01,0.1"),
    Setting("optimizer", "optimizer", "sgd",
            "sgd: plain full-batch gradient descent. adam: Adam with torch's defaults (its step "
            "size barely depends on the gradient's scale, so its window sits elsewhere).",
            kind="choice", options=OPTIMIZERS),
    Setting("steps", "steps", DEFAULT_STEPS, "Optimiser steps per cell (a diverged cell stops).",
            min_value=1, max_value=MAX_STEPS_APP, step=50),
    Setting("alpha", "alpha", 16.0, "lora_alpha of the fixed-alpha and rslora rules.",
            kind="float", min_value=0.001, max_value=100_000.0, step=1.0, format="%.3f"),
    Setting("seed", "seed", 0, "Seed of the target and of A's initialisation.",
            min_value=0, max_value=2**31 - 1),
    Setting("target_err", "error to reach", 0.05,
            "The final relative error ||sBA - T|| / ||T|| a run must reach to count as "
            "learned, for 'smallest lr reaching' in the reading.",
            kind="float", min_value=0.0001, max_value=1.0, step=0.01, format="%.4f"),
)

#: How the loss curves are picked: a row of the heatmap or a column.
CURVE_MODES: tuple[str, ...] = ("every rank at one lr", "every lr at one rank")
#: Keys of the curve selectors (URL-bound; their options come from the grid).
CURVE_KEYS: dict[str, str] = {"rule": "curves_rule", "mode": "curves_mode", "lr": "curves_lr",
                              "rank": "curves_rank"}
#: Key of kohya's "no alpha key" toggle in the calculator.
CALC_NO_ALPHA_KEY = "calc_no_alpha"

#: The scaling calculator's inputs.
CALC_SETTINGS: tuple[Setting, ...] = (
    Setting("calc_convention", "convention", "peft",
            "How the adapter's files turn r and alpha into s: "
            + "; ".join(CONVENTIONS.values()) + ".",
            kind="choice", options=tuple(CONVENTIONS), select=True),
    Setting("calc_r", "rank r", 16, "The adapter's current rank.", min_value=1, max_value=65536),
    Setting("calc_alpha", "alpha", 32.0,
            "lora_alpha (PEFT, rsLoRA) or the stored .alpha (kohya).", kind="float",
            min_value=1e-6, max_value=1e9, step=1.0, format="%.6g"),
    Setting("calc_scale", "scale", 20.0, "mlx-lm's lora_parameters.scale.",
            kind="float", min_value=1e-6, max_value=1e9, step=1.0, format="%.6g"),
    Setting("calc_r_new", "new rank", 64, "The rank you want to move to.",
            min_value=1, max_value=65536),
)

#: Every Setting-bound input of the page (the rules multiselect, the curve selectors and the
#: kohya toggle are bound separately: their options come from the grid or the convention).
SETTINGS: tuple[Setting, ...] = TARGET_SETTINGS + GRID_SETTINGS + CALC_SETTINGS


def rules_widget(container: Any = None) -> list[str]:
    """The scaling-rule multiselect, bound to the URL as repeated ``?rules=...``."""
    where = st if container is None else container
    return where.multiselect(
        "scaling rules", list(SCALING_RULES), default=list(SCALING_RULES), key=RULES_KEY,
        bind="query-params",
        help="; ".join(f"{k}: {v}" for k, v in SCALING_RULES.items()) + ".")


def url_rule_errors() -> list[Markdown]:
    """One sentence per ``?rules=`` value that is not a scaling rule (call before the widgets).

    The bound multiselect drops such values silently when it registers; this says so.
    """
    out = []
    for raw in st.query_params.get_all(RULES_KEY):
        if raw not in SCALING_RULES:
            out.append(md("The link sets {param!c}, but scaling rules are {rules}; it is ignored.",
                          param=f"rules={raw}", rules=", ".join(SCALING_RULES)))
    return out


def curve_widgets(config: "StabilityConfig", container: Any = None) -> dict[str, Any]:
    """Selectors of the loss curves, bound to the URL; returns ``rule, mode, lr, rank``.

    Options come from the grid (its rules, lrs and ranks); a URL value that is not among them
    is ignored by Streamlit and the first option (the middle lr) is shown.
    """
    where = st if container is None else container
    cols = where.columns([1.2, 1.6, 1, 1])
    rule = cols[0].selectbox("rule", list(config.rules), key=CURVE_KEYS["rule"],
                             bind="query-params", help="Scaling rule whose cells are drawn.")
    mode = cols[1].radio("curves of", list(CURVE_MODES), key=CURVE_KEYS["mode"],
                         bind="query-params", horizontal=True,
                         help="A row of the heatmap (every rank at one learning rate) or a "
                              "column (every learning rate at one rank).")
    lr_labels = [f"{v:g}" for v in config.lrs]
    lr_label = cols[2].selectbox("learning rate", lr_labels, index=len(lr_labels) // 2,
                                 key=CURVE_KEYS["lr"], bind="query-params",
                                 disabled=mode != CURVE_MODES[0],
                                 help="The learning rate of the row drawn.")
    rank = cols[3].selectbox("rank r", list(config.ranks), key=CURVE_KEYS["rank"],
                             bind="query-params", disabled=mode != CURVE_MODES[1],
                             help="The rank of the column drawn.")
    return {"rule": rule, "mode": mode, "lr": config.lrs[lr_labels.index(lr_label)],
            "rank": rank}


def parse_ranks(text: str) -> tuple[int, ...]:
    """``"4, 8,64"`` -> ``(4, 8, 64)``; ConfigError naming the bad entry otherwise."""
    return common_parse_ranks(text, max_count=MAX_RANKS_APP, example="4,8,64")


def parse_lrs(text: str) -> tuple[float, ...]:
    """``"0.001, 0.01"`` -> ``(0.001, 0.01)``; ConfigError naming the bad entry otherwise."""
    return parse_numbers(text, name="lrs", whole=False, positive=True, item="learning rate",
                         example="0.001,0.01,0.1", max_count=MAX_LRS_APP,
                         too_many=f"learning rates; the app runs at most {MAX_LRS_APP}")


@dataclass(frozen=True)
class StabilityConfig(TargetConfig):
    """Every setting of one grid (hashable: it is the cache key)."""

    ranks: tuple[int, ...] = DEFAULT_RANKS
    lrs: tuple[float, ...] = DEFAULT_LRS
    rules: tuple[str, ...] = tuple(SCALING_RULES)
    optimizer: str = "sgd"
    steps: int = DEFAULT_STEPS
    alpha: float = 16.0
    data: DataConfig | None = None  # the data mode's pairs; None: the exact target

    @classmethod
    def from_values(cls, values: Mapping[str, Any], rules: Sequence[str], *,
                    data: DataConfig | None = None) -> "StabilityConfig":
        """From the widgets' values (ranks and lrs as text); ConfigError on a bad list."""
        kw = {k: values[k] for k in cls.__dataclass_fields__ if k in values and k != "data"}
        kw["data"] = data
        kw["ranks"] = parse_ranks(values.get("ranks", ""))
        kw["lrs"] = parse_lrs(values.get("lrs", ""))
        if not rules:
            raise ConfigError("`rules` is empty: pick at least one scaling rule")
        kw["rules"] = tuple(rules)
        cells = len(kw["ranks"]) * len(kw["lrs"]) * len(kw["rules"])
        if cells > MAX_CELLS_APP:
            raise ConfigError(f"the grid has {cells} cells (rules x ranks x lrs); the app runs "
                              f"at most {MAX_CELLS_APP}")
        return cls(**kw)


@dataclass(frozen=True)
class StabilityRun:
    """What the page shows of one grid (small: no dense matrix)."""

    config: StabilityConfig
    grid: StabilityGrid
    sigma_1: float  # largest singular value of the target (with noise)
    target_norm: float  # ||T||_F
    seconds: float


def grid_estimate(config: StabilityConfig) -> WorkEstimate:
    """What the grid will cost (:func:`lorarank.cost.stability_cost`), before running it."""
    return stability_cost(config.d_out, config.d_in, config.ranks, n_lrs=len(config.lrs),
                          n_rules=len(config.rules), optimizer=config.optimizer,
                          steps=config.steps, data=config.data)


def _rank_ident(config: StabilityConfig, rank: int) -> tuple:
    return ("grid-rank", dataclasses.replace(config, ranks=(rank,)))


def by_rank(config: StabilityConfig) -> bool:
    """Whether the grid runs one rank (every rule and lr) at a time, so a stop keeps ranks
    (:func:`ui.guard.by_rank`)."""
    return guard.by_rank(grid_estimate(config).seconds, config.ranks,
                         lambda r: _rank_ident(config, r))


def finished_ranks(config: StabilityConfig) -> tuple[int, ...]:
    """The ranks of ``config`` whose cells were already fitted one rank at a time."""
    return guard.finished_ranks(config.ranks, lambda r: _rank_ident(config, r))


def _fit_grid(config: StabilityConfig, what: str) -> StabilityRun:
    start = time.perf_counter()
    cells = len(config.rules) * len(config.ranks) * len(config.lrs)
    with guard.heavy_work(what):
        target = config.make_target()
        with progress_bar(f"Fitting {cells} cells (rules x ranks x learning rates"
                          + (f", r = {config.ranks[0]}" if len(config.ranks) == 1 else "")
                          + "): optimiser steps") as progress:
            grid = run_stability(target, ranks=config.ranks, rules=config.rules, lrs=config.lrs,
                                 optimizer=config.optimizer, steps=config.steps,
                                 alpha=config.alpha, seed=config.seed, data=config.data,
                                 progress=progress)
    return StabilityRun(config=config, grid=grid, sigma_1=float(target.singular_values[0]),
                        target_norm=target.norm, seconds=time.perf_counter() - start)


@st.cache_data(show_spinner=False, max_entries=256)
def _grid_one_rank(config: StabilityConfig) -> StabilityRun:
    """The cells of one rank (``config.ranks`` has one entry; cached)."""
    run = _fit_grid(config, f"the cells at r = {config.ranks[0]}")
    guard.mark_done(_rank_ident(config, config.ranks[0]))
    return run


def _merge(config: StabilityConfig, parts: Sequence[StabilityRun]) -> StabilityRun:
    """One grid from grids of one rank each, records in the engine's order (rule, lr, rank)."""
    rule_at = {r: i for i, r in enumerate(config.rules)}
    lr_at = {lr: i for i, lr in enumerate(config.lrs)}
    rank_at = {r: i for i, r in enumerate(config.ranks)}
    records = sorted((rec for part in parts for rec in part.grid.records),
                     key=lambda rec: (rule_at[rec.rule], lr_at[rec.lr], rank_at[rec.rank]))
    optimal: dict[int, float] = {}
    for part in parts:
        optimal.update(part.grid.optimal_rel_err)
    grid_config = {**parts[0].grid.config, "ranks": list(config.ranks)}
    grid = StabilityGrid(config=grid_config, records=tuple(records),
                         seconds=sum(p.grid.seconds for p in parts), optimal_rel_err=optimal)
    return StabilityRun(config=config, grid=grid, sigma_1=parts[0].sigma_1,
                        target_norm=parts[0].target_norm, seconds=sum(p.seconds for p in parts))


@st.cache_data(show_spinner=False, max_entries=32)
def run_grid(config: StabilityConfig) -> StabilityRun:
    """Make the target and fit every cell (cached per config; a progress bar on a miss).

    Long grids (:func:`by_rank`) run one rank at a time, each cached on its own, in a slot of
    the server's queue; short ones fit every cell in one batched call.
    """
    if by_rank(config):
        parts = []
        costs = [grid_estimate(dataclasses.replace(config, ranks=(r,))).seconds for r in config.ranks]
        with whole_run(costs, [f"r = {r}" for r in config.ranks]) as part:
            for i, r in enumerate(config.ranks):
                part(i)
                parts.append(_grid_one_rank(dataclasses.replace(config, ranks=(r,))))
        run = _merge(config, parts)
    else:
        run = _fit_grid(config, "the grid")
    guard.mark_done(("grid", config))
    return run


def guarded_grid(config: StabilityConfig) -> StabilityRun | None:
    """The grid within the server's work budget (:func:`ui.guard.guarded_run`), or what finished.

    Short: runs. Long: asks for Run (showing the estimate), then runs with a Stop button.
    Past the server's cap: one sentence. When it does not run, the ranks that finished
    before a stop come back as a grid of those ranks (``config.ranks`` says which), else None.
    """
    return guard.guarded_run(
        grid_estimate(config).seconds, key=GATE_KEY, what="grid", ident=("grid", config),
        hint="Fewer ranks, learning rates or rules, fewer steps or a smaller d make it cheaper.",
        run=lambda: run_grid(config), ranks=config.ranks,
        rank_ident=lambda r: _rank_ident(config, r),
        partial=lambda done: run_grid(dataclasses.replace(config, ranks=done)))


def findings(run: StabilityRun, *, target_err: float) -> StabilityFindings:
    """The grid's reading (per rule and rank windows, sentences; capacity via Eckart-Young)."""
    return stability_findings(run.grid, target_err=target_err)


def _g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


#: Definition of every column of the windows table.
WINDOW_HELP: dict[str, str] = {
    "rule": "Scaling rule: how s follows r.",
    "r": "LoRA rank.",
    "s": "The multiplier s of s·B·A under the rule at this rank.",
    "largest stable lr": "Largest tested learning rate that did not diverge ('> x' when none "
                         "diverged: the edge is beyond the grid).",
    "smallest diverged lr": "Smallest tested learning rate whose loss blew up.",
    "SGD bound 1/(s·σ₁)": "Where plain gradient descent on 0.5·||s·B·A − T||² turns "
                               "unstable near the solution: 1 / (s·σ₁(T)). A guide, "
                               "not a measurement; for Adam it does not apply.",
    "smallest lr reaching": "Smallest tested learning rate whose final relative error is "
                            "at most the 'error to reach' setting.",
    "best final error": "Lowest final relative error ||sBA - T|| / ||T|| over the tested "
                        "learning rates, and where.",
    "Eckart-Young optimum": "The lowest relative error any rank-r matrix reaches on T: what "
                            "the rank's capacity allows, whatever the scaling.",
}


#: The windows table's column that holds for plain gradient descent only.
SGD_BOUND = "SGD bound 1/(s·σ₁)"


def windows_table(run: StabilityRun, found: StabilityFindings) -> "pd.DataFrame":
    """One row per (rule, rank): where its learning-rate window sits.

    The SGD bound column is left out when the grid ran Adam: Adam's step does not scale with
    the gradient, so the bound says nothing about where it diverges.
    """
    import pandas as pd

    rows = []
    for rule in found.rules:
        for w in rule.windows:
            if w.max_stable_lr is None:
                stable = "none"
            elif w.min_diverged_lr is None:
                stable = f"> {w.max_stable_lr:g}"
            else:
                stable = f"{w.max_stable_lr:g}"
            best = "-" if w.best_lr is None else f"{w.best_rel_err:.3g} at lr {w.best_lr:g}"
            rows.append({
                "rule": w.rule, "r": w.rank, "s": _g(w.scale),
                "largest stable lr": stable,
                "smallest diverged lr": _g(w.min_diverged_lr),
                SGD_BOUND: _g(1.0 / (w.scale * run.sigma_1), 3),
                "smallest lr reaching": _g(w.min_lr_reaching),
                "best final error": best,
                "Eckart-Young optimum": _g(w.optimal_rel_err, 3),
            })
    columns = [c for c in WINDOW_HELP if c != SGD_BOUND or run.config.optimizer == "sgd"]
    return pd.DataFrame(rows, columns=columns)


def stable_lr_rows(found: StabilityFindings) -> list[dict[str, Any]]:
    """The page's first table: per rule, the largest tested learning rate that trained
    without diverging at each rank ("> x" when none diverged, "none" when all did)."""
    rows = []
    for rule in found.rules:
        row: dict[str, Any] = {"rule": rule.rule}
        for w in rule.windows:
            row[f"r = {w.rank}"] = ("none" if w.max_stable_lr is None else
                                    f"> {w.max_stable_lr:g}" if w.min_diverged_lr is None else
                                    f"{w.max_stable_lr:g}")
        rows.append(row)
    return rows


#: Definition of every column of the cells table.
CELL_HELP: dict[str, str] = {
    "rule": "Scaling rule.",
    "r": "LoRA rank.",
    "lr": "Learning rate.",
    "s": "The multiplier s of s·B·A.",
    "final relative error": "||s·B·A − T||_F / ||T||_F after the last step, or the step at "
                            "which the loss blew up (non-finite or 1e4 x its start).",
    "max update norm": "Largest ||s·B·A||_F over the steps run; a trained run ends near "
                       "||T||_F, a diverging one overshoots it.",
    "steps run": "Optimiser steps taken (fewer when the run diverged).",
}


def cells_table(run: StabilityRun) -> "pd.DataFrame":
    """Every cell as the page shows it: diverged cells read "diverged at step N", never NaN."""
    import pandas as pd

    rows = []
    for rec in run.grid.records:
        err = f"diverged at step {rec.diverged_at}" if rec.diverged else _g(rec.rel_err)
        rows.append({"rule": rec.rule, "r": rec.rank, "lr": f"{rec.lr:g}", "s": _g(rec.scale),
                     "final relative error": err,
                     "max update norm": _g(rec.max_update_norm),
                     "steps run": len(rec.loss_curve) - 1})
    return pd.DataFrame(rows, columns=list(CELL_HELP))


def cells_csv_frame(run: StabilityRun) -> "pd.DataFrame":
    """The CSV download: one row per cell, machine column names, empty where not defined."""
    from lorarank.charts.stability import records_frame

    return records_frame(run.grid.records)


def row_records(run: StabilityRun, rule: str, *, lr: float | None = None,
                rank: int | None = None) -> list:
    """The cells of ``rule`` at one learning rate (every rank) or one rank (every lr)."""
    return [r for r in run.grid.records if r.rule == rule
            and (lr is None or r.lr == lr) and (rank is None or r.rank == rank)]


@dataclass(frozen=True)
class GridViews:
    """Everything the page renders from one grid, built once per (config, error to reach)."""

    findings: StabilityFindings
    heatmap: dict  # Vega-Lite spec
    windows: "pd.DataFrame"
    cells: "pd.DataFrame"
    csv: bytes
    json: bytes


@st.cache_data(show_spinner=False, max_entries=32)
def grid_views(config: StabilityConfig, target_err: float) -> GridViews:
    """Reading, heatmap spec, tables and downloads of :func:`run_grid`'s result (cached).

    A rerun with unchanged inputs then costs a cache lookup instead of rebuilding (and
    re-validating) charts and re-serialising a few thousand loss values.
    """
    from lorarank.charts.stability import stability_heatmap

    run = run_grid(config)
    found = findings(run, target_err=target_err)
    return GridViews(
        findings=found,
        heatmap=chart_spec(stability_heatmap(run.grid.records, rules=list(config.rules))),
        windows=windows_table(run, found),
        cells=cells_table(run),
        csv=frame_csv(cells_csv_frame(run)),
        json=json_bytes(run.grid.to_dict()),
    )


@st.cache_data(show_spinner=False, max_entries=64)
def curve_specs(config: StabilityConfig, rule: str, *, lr: float | None, rank: int | None,
                title: str, color_by: str) -> tuple[dict, dict]:
    """Vega-Lite specs of the loss curves of one row or column of cells and of ``rule``'s
    update norms (cached)."""
    from lorarank.charts.stability import stability_loss_chart, update_norm_chart

    run = run_grid(config)
    cells = row_records(run, rule, lr=lr, rank=rank)
    return (chart_spec(stability_loss_chart(cells, color_by=color_by, title=title)),
            chart_spec(update_norm_chart(run.grid.records, rule=rule, target_norm=run.target_norm)))


def calculator(values: Mapping[str, Any]) -> dict[str, Any]:
    """The calculator's answer from its widgets' values (ConfigError on a bad combination).

    Returns
    -------
    dict
        ``scale`` (s under the chosen convention), ``knob`` (``"alpha"`` or ``"scale"``),
        ``table`` (a DataFrame: per keep mode, the new alpha and its s at the new rank) and
        ``same_alpha`` (s at the new rank if the alpha is left unchanged).
    """
    import pandas as pd

    conv = values["calc_convention"]
    r, r_new = values["calc_r"], values["calc_r_new"]
    if conv == "mlx-lm":
        knob, old = "scale", values["calc_scale"]
        s = scale_for(conv, r=r, scale=old)
    else:
        knob = "alpha"
        old = None if conv == "kohya" and values.get(CALC_NO_ALPHA_KEY) else values["calc_alpha"]
        s = scale_for(conv, r=r, alpha=old)
    rows = []
    for keep, meaning in KEEP_MODES.items():
        new = alpha_to_keep(conv, r_old=r, alpha_old=old, r_new=r_new, keep=keep)
        s_new = (scale_for(conv, r=r_new, scale=new) if conv == "mlx-lm"
                 else scale_for(conv, r=r_new, alpha=new))
        rows.append({"keep": keep, f"new {knob} at r = {r_new}": float(f"{new:.6g}"),
                     "s at the new rank": float(f"{s_new:.6g}"), "meaning": meaning})
    if conv == "mlx-lm":
        same = s
    elif old is None:  # kohya without an alpha key: s = 1 at every rank
        same = 1.0
    else:
        same = scale_for(conv, r=r_new, alpha=old)
    return {"scale": s, "knob": knob, "table": pd.DataFrame(rows), "same_alpha": same}
