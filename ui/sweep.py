"""The Rank sweep page's pieces: its URL settings, the cached sweep, its tables and reading.

Keys of the URL-bound widgets are the CLI's option names with underscores (``?d_out=128&
true_rank=8&ranks=2,8,32``); other session-state keys of this page start with ``sweep_``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import streamlit as st

from lorarank.cost import WorkEstimate, sweep_cost
from lorarank.fit import (DEFAULT_LR, DEFAULT_STEPS, OPTIMIZERS, SCALING_RULES, FitResult, fit_lora,
                          sweep_findings)
from lorarank.spectrum import gavish_donoho_rank, noise_threshold
from lorarank.synthetic import SPECTRA, Target, make_target


from . import guard
from .common import (Markdown, Setting, chart_spec, download_buttons, markdown_table, md, md_param, md_text,
                     notation, progress_bar, stop_on_error, whole_run)
from .common import parse_ranks as common_parse_ranks

if TYPE_CHECKING:  # pandas and Altair load after the first result (they are slow to import)
    import pandas as pd

__all__ = [
    "MAX_DIM_APP", "MAX_STEPS_APP", "MAX_RANKS_APP", "DOWNLOAD_KEY", "URL_ERRORS_KEY",
    "TARGET_SETTINGS", "TRAINING_SETTINGS", "SETTINGS",
    "parse_ranks", "TargetConfig", "SweepConfig", "SweepRun", "run_sweep", "GATE_KEY",
    "sweep_estimate", "by_rank", "finished_ranks", "guarded_run",
    "SweepCharts", "sweep_charts", "COLUMN_HELP", "results_rows", "results_table", "results_records", "results_json", "reading",
    "TABLE_KEY",
    "show_results",
]

#: Limits of the hosted app (the engine and CLI accept more; the app must answer in seconds
#: within ~1 GB of memory).
MAX_DIM_APP = 1024
MAX_STEPS_APP = 20_000
MAX_RANKS_APP = 12

#: Session-state keys of this page that are not URL-bound.
DOWNLOAD_KEY = "sweep_download"  # prefix of the two download buttons' keys
TABLE_KEY = "sweep_table"  # the container of the results table
URL_ERRORS_KEY = "sweep_url_errors"  # sentences about bad query parameters, across one rerun
GATE_KEY = "sweep_gate"  # prefix of the work-budget gate's keys (Run, Stop, approval)

TARGET_SETTINGS: tuple[Setting, ...] = (
    Setting("d_out", "d_out", 64, "Output features of the layer: rows of the update T.",
            min_value=1, max_value=MAX_DIM_APP),
    Setting("d_in", "d_in", 64, "Input features of the layer: columns of the update T.",
            min_value=1, max_value=MAX_DIM_APP),
    Setting("true_rank", "intrinsic rank k", 4,
            "Number of directions planted in T: its intrinsic rank, at most min(d_out, d_in).",
            min_value=1, max_value=MAX_DIM_APP),
    Setting("spectrum", "spectrum shape", "linear",
            "Planted singular values: flat (all sigma_max), linear (sigma_max down towards "
            "sigma_max/2), geometric (a factor 10 from first to last).",
            kind="choice", options=SPECTRA, select=True),
    Setting("noise", "noise", 0.01,
            "Standard deviation of the Gaussian noise added to every entry of T: the noise "
            "floor a real fine-tuning update has.",
            kind="float", min_value=0.0, max_value=100.0, step=0.005, format="%.4f"),
    Setting("sigma_max", "sigma_max", 38.0,
            "Largest planted singular value (the article's target has 37.8). It sets which "
            "learning rates are stable, so it is not normalised away.",
            kind="float", min_value=0.001, max_value=10_000.0, step=1.0, format="%.3f"),
)

TRAINING_SETTINGS: tuple[Setting, ...] = (
    Setting("ranks", "ranks r", "2,4,16",
            f"LoRA ranks to fit, separated by commas (up to {MAX_RANKS_APP}), each at most "
            "min(d_out, d_in).", kind="text", placeholder="e.g. 2,4,16"),
    Setting("optimizer", "optimizer", "sgd",
            "sgd: plain full-batch gradient descent. adam: Adam with torch's defaults.",
            kind="choice", options=OPTIMIZERS),
    Setting("lr", "learning rate", None,
            "A step on the loss 0.5·||s·B·A − T||_F². Empty: the engine's default, "
            + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items())
            + " (finite-data mode: 0.005 for sgd).",
            kind="float", min_value=1e-9, max_value=100.0, step=0.001, format="%.6g",
            placeholder="default"),
    Setting("steps", "steps", DEFAULT_STEPS, "Optimiser steps per rank.",
            min_value=1, max_value=MAX_STEPS_APP, step=100),
    Setting("seed", "seed", 0, "Seed of the target and of A's initialisation.",
            min_value=0, max_value=2**31 - 1),
    Setting("rule", "alpha rule", "alpha-eq-r",
            "How the multiplier s of s·B·A follows r: "
            + "; ".join(f"{k}: {v}" for k, v in SCALING_RULES.items()) + ".",
            kind="choice", options=tuple(SCALING_RULES), select=True),
    Setting("alpha", "alpha", 16.0, "lora_alpha, used by the fixed-alpha and rslora rules.",
            kind="float", min_value=0.001, max_value=100_000.0, step=1.0, format="%.3f"),
)

#: Every URL-bound setting of the page.
SETTINGS: tuple[Setting, ...] = TARGET_SETTINGS + TRAINING_SETTINGS

#: Rules whose s does not depend on alpha, with that s.
ALPHA_FREE_RULES: dict[str, float] = {"alpha-eq-r": 1.0, "alpha-eq-2r": 2.0}


def alpha_unused(rules: Sequence[str]) -> str | None:
    """Why the alpha input does nothing when every rule in ``rules`` ignores it, else None."""
    rules = list(dict.fromkeys(rules))
    if not rules or any(rule not in ALPHA_FREE_RULES for rule in rules):
        return None
    said = " and ".join(f"{rule} (s = {ALPHA_FREE_RULES[rule]:g})" for rule in rules)
    return (f"Not used now: under {said} lora_alpha follows r, so s is the same whatever "
            f"alpha is. Only fixed-alpha and rslora read it.")


def parse_ranks(text: str) -> tuple[int, ...]:
    """``"2, 4,16"`` -> ``(2, 4, 16)``; ConfigError naming the bad entry otherwise."""
    return common_parse_ranks(text, max_count=MAX_RANKS_APP, example="2,4,16")


@dataclass(frozen=True)
class TargetConfig:
    """The synthetic target's settings, shared by the Rank sweep and alpha/r stability pages."""

    d_out: int = 64
    d_in: int = 64
    true_rank: int = 4
    spectrum: str = "linear"
    noise: float = 0.01
    sigma_max: float = 38.0
    seed: int = 0

    def make_target(self) -> Target:
        """The target these settings describe (the seed also seeds the LoRA init)."""
        return make_target(self.d_out, self.d_in, true_rank=self.true_rank, spectrum=self.spectrum,
                           sigma_max=self.sigma_max, noise=self.noise, seed=self.seed)


@dataclass(frozen=True)
class SweepConfig(TargetConfig):
    """Every setting of one sweep (hashable: it is the cache key)."""

    ranks: tuple[int, ...] = (2, 4, 16)
    optimizer: str = "sgd"
    lr: float | None = None
    steps: int = DEFAULT_STEPS
    rule: str = "alpha-eq-r"
    alpha: float = 16.0

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "SweepConfig":
        """From the widgets' values (``ranks`` as text); ConfigError on an unparsable list."""
        kw = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        kw["ranks"] = parse_ranks(values.get("ranks", "2,4,16"))
        return cls(**kw)

    @property
    def lr_used(self) -> float:
        """The learning rate the fit uses: the setting, or the engine's default."""
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)


@dataclass(frozen=True)
class SweepRun:
    """What the page shows of one sweep (small: no dense matrix)."""

    config: SweepConfig
    target_values: np.ndarray
    signal_values: np.ndarray
    noise_floor: float
    signal_rank: int
    results: tuple[FitResult, ...]
    seconds: float


def sweep_estimate(config: SweepConfig) -> WorkEstimate:
    """What the sweep will cost (:func:`lorarank.cost.sweep_cost`), before running it."""
    return sweep_cost(config.d_out, config.d_in, config.ranks, optimizer=config.optimizer,
                      steps=config.steps)


def _target_config(config: TargetConfig) -> TargetConfig:
    return TargetConfig(**{f.name: getattr(config, f.name) for f in fields(TargetConfig)})


@st.cache_resource(show_spinner=False, max_entries=4)
def _target(config: TargetConfig) -> Target:
    """The target (read-only arrays), shared by the ranks of a sweep run rank by rank."""
    return config.make_target()


def _rank_ident(config: SweepConfig, rank: int) -> tuple:
    return ("sweep-rank", replace(config, ranks=(rank,)))


def by_rank(config: SweepConfig) -> bool:
    """Whether the sweep runs rank by rank, so a stop keeps finished ranks (:func:`ui.guard.by_rank`)."""
    return guard.by_rank(sweep_estimate(config).seconds, config.ranks,
                         lambda r: _rank_ident(config, r))


def finished_ranks(config: SweepConfig) -> tuple[int, ...]:
    """The ranks of ``config`` already fitted one by one on this server (kept after a stop)."""
    return guard.finished_ranks(config.ranks, lambda r: _rank_ident(config, r))


@st.cache_data(show_spinner=False, max_entries=256)
def _fit_one_rank(config: SweepConfig) -> FitResult:
    """One rank of a sweep run rank by rank (``config.ranks`` has one entry; cached)."""
    (rank,) = config.ranks
    with guard.heavy_work(f"the fit at r = {rank}"):
        target = _target(_target_config(config))
        with progress_bar(f"Fitting LoRA at r = {rank}: optimiser steps") as progress:
            result = fit_lora(target, [rank], optimizer=config.optimizer, lr=config.lr,
                              steps=config.steps, rule=config.rule, alpha=config.alpha,
                              seed=config.seed, progress=progress)[0]
    guard.mark_done(_rank_ident(config, rank))
    return result


@st.cache_data(show_spinner=False, max_entries=64)
def run_sweep(config: SweepConfig) -> SweepRun:
    """Make the target and fit every rank (cached per config; shows a progress bar on a miss).

    Long sweeps (:func:`by_rank`) fit one rank at a time, each cached on its own, in a slot
    of the server's queue; short ones fit every rank in one batched call.
    """
    start = time.perf_counter()
    if by_rank(config):
        results = []
        costs = [sweep_estimate(replace(config, ranks=(r,))).seconds for r in config.ranks]
        with whole_run(costs, [f"r = {r}" for r in config.ranks]) as part:  # the bars say it all
            for i, r in enumerate(config.ranks):
                part(i)
                results.append(_fit_one_rank(replace(config, ranks=(r,))))
        target = _target(_target_config(config))
    else:
        with guard.heavy_work("the sweep"):
            target = config.make_target()
            label = f"Fitting LoRA at r = {', '.join(map(str, config.ranks))}: optimiser steps"
            with progress_bar(label) as progress:
                results = fit_lora(target, list(config.ranks), optimizer=config.optimizer,
                                   lr=config.lr, steps=config.steps, rule=config.rule,
                                   alpha=config.alpha, seed=config.seed, progress=progress)
    sv = np.array(target.singular_values)
    guard.mark_done(("sweep", config))
    return SweepRun(
        config=config, target_values=sv, signal_values=np.array(target.signal_values),
        noise_floor=noise_threshold(sv, shape=target.shape, noise=config.noise),
        signal_rank=gavish_donoho_rank(sv, shape=target.shape, noise=config.noise),
        results=tuple(results), seconds=time.perf_counter() - start)


def guarded_run(config: SweepConfig) -> SweepRun | None:
    """The sweep within the server's work budget (:func:`ui.guard.guarded_run`), or what finished.

    Short: runs. Long: asks for Run (showing the estimate), then runs with a Stop button.
    Past the server's cap: one sentence. When it does not run, the ranks that finished before
    a stop are returned as a sweep of those ranks (its ``config.ranks`` says which), else None.
    """
    return guard.guarded_run(
        sweep_estimate(config).seconds, key=GATE_KEY, what="sweep", ident=("sweep", config),
        hint="Fewer or smaller ranks, fewer steps or a smaller d_out x d_in make it cheaper.",
        run=lambda: run_sweep(config), ranks=config.ranks,
        rank_ident=lambda r: _rank_ident(config, r),
        partial=lambda done: run_sweep(replace(config, ranks=done)))


@dataclass(frozen=True)
class SweepCharts:
    """Vega-Lite specs of the page's two charts, and how many target values the first shows."""

    spectrum: dict
    loss: dict
    max_index: int


@st.cache_data(show_spinner=False, max_entries=64)
def sweep_charts(config: SweepConfig) -> SweepCharts:
    """The spectrum and loss charts of :func:`run_sweep`'s result for ``config`` (cached)."""
    from lorarank.charts import loss_chart, spectrum_chart

    run = run_sweep(config)
    max_index = min(run.target_values.size, max(max(config.ranks), run.signal_rank) + 4)
    spectrum = spectrum_chart(run.target_values,
                              {res.rank: res.singular_values for res in run.results},
                              noise_floor=run.noise_floor, max_index=max_index)
    loss = loss_chart({res.rank: res.loss for res in run.results},
                      diverged_at={res.rank: res.diverged_at for res in run.results})
    return SweepCharts(spectrum=chart_spec(spectrum), loss=chart_spec(loss), max_index=max_index)


#: Definition of every column of the results table (shown as column help).
COLUMN_HELP: dict[str, str] = {
    "r": "LoRA rank: B is d_out x r, A is r x d_in.",
    "scale s": "The multiplier s of s·B·A under the chosen alpha rule.",
    "final relative error": "||s·B·A − T||_F / ||T||_F after the last step, or the step at "
                            "which the loss blew up.",
    "Eckart-Young optimum": "The smallest relative error any rank-r matrix can reach: "
                            "√(Σ_{i>r} σᵢ(T)² / Σσᵢ(T)²).",
    "effective rank": "Trained directions above the noise floor (the Gavish-Donoho threshold "
                      "for the target's noise level).",
    "steps run": "Optimiser steps actually taken.",
    "top singular values": "Largest singular values of the trained s·B·A, descending.",
}


def _sig(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


def results_rows(run: SweepRun, *, top: int = 6) -> list[dict[str, Any]]:
    """The table shown on the page, one dict per rank: diverged fits read "diverged at step N",
    never NaN."""
    rows = []
    for res in run.results:
        if res.diverged:
            err = f"diverged at step {res.diverged_at}"
            eff = "-"
        else:
            err = _sig(res.rel_err)
            eff = str(res.effective_rank)
        sv = ", ".join(_sig(x, 3) for x in res.singular_values[:top])
        if res.singular_values.size > top:
            sv += ", ..."
        rows.append({"r": res.rank, "scale s": _sig(res.scale), "final relative error": err,
                     "Eckart-Young optimum": _sig(res.optimal_rel_err), "effective rank": eff,
                     "steps run": res.steps, "top singular values": sv or "-"})
    return rows


def results_table(run: SweepRun, *, top: int = 6) -> "pd.DataFrame":
    """:func:`results_rows` as a data frame (the report's table)."""
    import pandas as pd

    return pd.DataFrame(results_rows(run, top=top), columns=list(COLUMN_HELP))


def results_records(run: SweepRun) -> "pd.DataFrame":
    """The CSV download: one row per rank, machine column names, empty cells when diverged."""
    import pandas as pd

    rows = []
    for res in run.results:
        d = res.to_dict()
        d["singular_values"] = " ".join(f"{x:.9g}" for x in res.singular_values)
        rows.append(d)
    frame = pd.DataFrame(rows)
    for col in ("effective_rank", "diverged_at"):
        frame[col] = frame[col].astype("Int64")
    return frame


def results_json(run: SweepRun) -> dict:
    """The JSON download, shaped like ``python -m lorarank sweep --json``."""
    config = asdict(run.config)
    config["ranks"] = list(run.config.ranks)
    config["lr"] = run.config.lr_used
    return {"config": config, "results": [res.to_dict() for res in run.results],
            "seconds": round(run.seconds, 4)}


def reading(run: SweepRun) -> list[str]:
    """Plain-words sentences read off the numbers of ``run`` (markdown;
    :func:`lorarank.fit.sweep_findings`, which the CLI prints too, in the pages' notation)."""
    cfg = run.config
    return [notation(s) for s in sweep_findings(run.results, target_values=run.target_values,
                                                shape=(cfg.d_out, cfg.d_in), noise=cfg.noise,
                                                true_rank=cfg.true_rank)]


def show_results(config: SweepConfig, *, note: Markdown = Markdown("")) -> tuple[SweepRun, SweepCharts] | None:
    """Run the sweep within the server's work budget and draw its results: the table, its
    caption (``note`` appended), the downloads and the reading. Returns the run (after a stop:
    the ranks that finished) and its charts, or None when nothing ran."""
    with stop_on_error():  # an impossible setting is one sentence
        run = guarded_run(config)  # within the server's work budget, or what finished
    if run is None:
        return None
    config = run.config
    # The first result: a markdown table draws at once (see ui.common.markdown_table).
    with st.container(key=TABLE_KEY):
        st.markdown(markdown_table(results_rows(run), list(COLUMN_HELP),
                                   right=("r", "effective rank", "steps run")))
    with st.expander("What the columns mean"):
        st.markdown(Markdown("\n").join(md("- **{name}**: {text}", name=name, text=text)
                                        for name, text in COLUMN_HELP.items()))
    st.caption(md(
        "Learning rate {lr:g} ({optimizer}), {steps} steps, alpha rule {rule}. Relative error is "
        "||s·B·A − T||_F / ||T||_F. Computed in {seconds:.2f} s.{note}", lr=config.lr_used,
        optimizer=config.optimizer, steps=config.steps, rule=config.rule, seconds=run.seconds,
        note=md_param(note)))
    download_buttons(results_records(run), stem="lorarank-sweep", key=DOWNLOAD_KEY,
                     json_data=results_json(run))
    st.markdown("\n".join(md("- {}", md_text(sentence)) for sentence in reading(run)))
    return run, sweep_charts(config)
