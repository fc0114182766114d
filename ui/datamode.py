"""The data mode's pieces for the Rank sweep and alpha/r stability pages: URL settings, the
cached data-mode sweep, its table, reading and charts.

The data mode trains LoRA on n pairs ``y = T x + noise_y e`` instead of the exact target T
(:mod:`lorarank.data`). Its URL keys: ``mode=data``, ``samples``, ``label_noise``,
``batch_size`` (0 = full batch), ``heldout``. Other session-state keys start with ``data_``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import streamlit as st

from lorarank.cost import WorkEstimate, data_fit_cost, target_cost
from lorarank.data import (DATA_DEFAULT_LR, DEFAULT_HELDOUT, DEFAULT_LABEL_NOISE, DataConfig,
                           data_findings, data_noise_floor, data_values, fit_data, make_dataset)
from lorarank.documents import parse_numbers
from lorarank.errors import ConfigError
from lorarank.fit import FitResult

from . import common, guard, layout
from .common import Setting, chart_spec, progress_bar
from .sweep import SweepConfig

if TYPE_CHECKING:  # pandas and Altair load when a table or chart needs them (slow imports)
    import pandas as pd

__all__ = [
    "MODES", "MAX_SAMPLES_APP", "MAX_NS_APP", "MAX_HELDOUT_APP", "MAX_DATA_VALUES_APP", "DOWNLOAD_KEY",
    "SWEEP_SETTINGS", "GRID_SETTINGS", "parse_samples", "check_app_size", "data_config",
    "DataSweepConfig", "DataSweepRun", "GATE_KEY", "data_estimate", "by_n", "run_data_sweep", "guarded_data_sweep", "DATA_COLUMN_HELP", "data_table",
    "data_records", "data_json", "data_reading", "data_charts", "grid_inputs",
    "grid_caption", "grid_losses_table", "sweep_inputs", "sweep_results", "is_data_mode",
    "SWITCH_TAB", "DATA_TABS", "EXACT_NOTE", "EXACT_WAITING_NOTE", "switch_hint",
    "MAX_EPOCHS_APP", "epoch_steps", "grid_steps",
]

#: The two training modes: the exact target (the article's) or finite data.
MODES: tuple[str, ...] = ("exact", "data")
#: Limits of the hosted app (the engine and CLI accept more).
MAX_SAMPLES_APP = 20_000
MAX_NS_APP = 4
MAX_HELDOUT_APP = 20_000
#: Largest (n + held-out) * (d_in + d_out) of one set of pairs in the app (2**22 values, 32 MB).
MAX_DATA_VALUES_APP = 2**22
#: Largest epochs input; the steps they make are also held to the page's step limit.
MAX_EPOCHS_APP = 20_000
DOWNLOAD_KEY = "data_download"
GATE_KEY = "data_gate"  # prefix of the data sweep's work-budget gate keys (Run, Stop, approval)

_MODE_HELP = ("exact: fit s·B·A to the target T itself (infinitely many noiseless examples, the "
              "article's setting). data: learn y = (W0 + s·B·A) x from n pairs x ~ N(0, I), "
              "y = T x + label noise, judged on held-out pairs and against T.")
_NOISE_HELP = "Standard deviation of the label noise e in y = T x + noise·e, per output."
_BATCH_HELP = ("Pairs per optimiser step; 0 = full batch. Each epoch visits the pairs in a "
               "new random order.")
_HELDOUT_HELP = "Held-out pairs, drawn like the training pairs, on which the fit is judged."

#: The Rank sweep page's data-mode settings (several n, compared in one chart).
SWEEP_SETTINGS: tuple[Setting, ...] = (
    Setting("mode", "training signal", "exact", _MODE_HELP, kind="choice", options=MODES),
    Setting("samples", "training pairs n", "128,512,2048",
            f"Numbers of training pairs, separated by commas (up to {MAX_NS_APP}, each at most "
            f"{MAX_SAMPLES_APP:,}); the chart compares them.", kind="text", placeholder="e.g. 128,512,2048"),
    Setting("label_noise", "label noise", DEFAULT_LABEL_NOISE, _NOISE_HELP, kind="float",
            min_value=0.0, max_value=1000.0, step=0.1, format="%.4g"),
    Setting("batch_size", "batch size", 0, _BATCH_HELP, min_value=0, max_value=MAX_SAMPLES_APP, step=16),
    Setting("heldout", "held-out pairs", DEFAULT_HELDOUT, _HELDOUT_HELP, min_value=1,
            max_value=MAX_HELDOUT_APP, step=100),
    Setting("epochs", "epochs", 0, "Passes over the n training pairs instead of a number of steps: "
            "each pass is ceil(n / batch size) optimiser steps (1 with full batch), so a larger n "
            "trains for more steps. 0: every n trains the 'steps' set under LoRA training.",
            min_value=0, max_value=MAX_EPOCHS_APP, step=1),
)

#: The alpha/r stability page's data-mode settings (one n for the whole grid).
GRID_SETTINGS: tuple[Setting, ...] = (
    SWEEP_SETTINGS[0],
    Setting("samples", "training pairs n", 256, "Training pairs every cell learns from.",
            min_value=1, max_value=MAX_SAMPLES_APP, step=64),
    *SWEEP_SETTINGS[2:],
)


def parse_samples(text: str) -> tuple[int, ...]:
    """``"128, 512"`` -> ``(128, 512)`` sorted; ConfigError naming the bad entry otherwise."""
    out = parse_numbers(text, name="samples", whole=True, low=1, high=MAX_SAMPLES_APP,
                        item="number of training pairs", example="128,512", max_count=MAX_NS_APP,
                        too_many=f"values; the app compares at most {MAX_NS_APP}")
    if len(set(out)) != len(out):
        raise ConfigError(f"`samples` lists a value twice: {text!r}")
    return tuple(sorted(out))


def check_app_size(shape: tuple[int, int], data: DataConfig) -> DataConfig:
    """``data`` if its pairs fit the app's memory limit, else ConfigError saying how many fit."""
    values = data_values(shape, data)
    if values > MAX_DATA_VALUES_APP:
        most = MAX_DATA_VALUES_APP // (shape[0] + shape[1]) - data.heldout
        raise ConfigError(f"{data.samples:,} training + {data.heldout:,} held-out pairs of a {shape[0]} x "
                          f"{shape[1]} layer are {values:,} numbers; the app holds at most "
                          f"{MAX_DATA_VALUES_APP:,}, so at most {max(most, 0):,} training pairs here")
    return data


def epoch_steps(data: DataConfig, epochs: int, *, max_steps: int) -> int:
    """Steps of ``epochs`` passes over ``data``'s pairs, ``ceil(n / batch) * epochs``; ConfigError
    when that is more than the page runs (``max_steps``)."""
    steps = data.steps_for_epochs(epochs)
    if steps > max_steps:
        raise ConfigError(f"{epochs:,} epochs of {data.samples:,} pairs in batches of {data.batch:,} "
                          f"are {steps:,} steps; this page runs at most {max_steps:,}: ask for at most "
                          f"{max_steps // data.steps_per_epoch:,} epochs or a larger batch")
    return steps


def grid_steps(steps: int, data: DataConfig | None, values: Mapping[str, Any] | None = None) -> int:
    """The stability grid's steps: the epochs input's ``ceil(n / batch) * epochs`` in the data
    mode when it is set, else ``steps``."""
    from .stability import MAX_STEPS_APP

    epochs = int((values if values is not None else st.session_state).get("epochs") or 0)
    if data is None or not epochs:
        return int(steps)
    return epoch_steps(data, epochs, max_steps=MAX_STEPS_APP)


def data_config(values: Mapping[str, Any], samples: int, shape: tuple[int, int]) -> DataConfig:
    """The engine's DataConfig for ``samples`` pairs from the widgets' values (app limits checked)."""
    batch = int(values.get("batch_size") or 0)
    data = DataConfig(samples=samples, label_noise=float(values.get("label_noise", DEFAULT_LABEL_NOISE)),
                      batch_size=batch or None, heldout=int(values.get("heldout", DEFAULT_HELDOUT)))
    return check_app_size(shape, data)


@dataclass(frozen=True)
class DataSweepConfig:
    """Every setting of a data-mode sweep (hashable: it is the cache key)."""

    sweep: SweepConfig
    samples: tuple[int, ...] = (128, 512, 2048)
    label_noise: float = DEFAULT_LABEL_NOISE
    batch_size: int = 0
    heldout: int = DEFAULT_HELDOUT
    epochs: int = 0  # 0: every n trains sweep.steps

    @classmethod
    def from_values(cls, sweep: SweepConfig, values: Mapping[str, Any]) -> "DataSweepConfig":
        """From the sweep's config and the data widgets' values; ConfigError on a bad list or
        a set of pairs larger than the app holds."""
        config = cls(sweep=sweep, samples=parse_samples(values.get("samples", "128")),
                     label_noise=float(values.get("label_noise", DEFAULT_LABEL_NOISE)),
                     batch_size=int(values.get("batch_size") or 0),
                     heldout=int(values.get("heldout", DEFAULT_HELDOUT)),
                     epochs=int(values.get("epochs") or 0))
        for n in config.samples:
            check_app_size((sweep.d_out, sweep.d_in), config.data(n))
            config.steps_for(n)  # within the page's step limit
        return config

    def steps_for(self, n: int) -> int:
        """Optimiser steps at ``n`` pairs: ``ceil(n / batch) * epochs``, or the sweep's steps."""
        if not self.epochs:
            return self.sweep.steps
        from .sweep import MAX_STEPS_APP

        return epoch_steps(self.data(n), self.epochs, max_steps=MAX_STEPS_APP)

    def steps_text(self) -> str:
        """How long each n trains, in words."""
        if not self.epochs:
            return f"{self.sweep.steps} steps"
        per_n = ", ".join(f"{self.steps_for(n):,} at n = {n}" for n in self.samples)
        return (f"{self.epochs} epochs = ceil(n / batch) × {self.epochs} steps ({per_n})")

    def data(self, n: int) -> DataConfig:
        """The engine's settings for ``n`` pairs."""
        return DataConfig(samples=n, label_noise=self.label_noise, batch_size=self.batch_size or None,
                          heldout=self.heldout)

    @property
    def lr_used(self) -> float:
        """The sweep's learning rate, or the data mode's default."""
        return DATA_DEFAULT_LR[self.sweep.optimizer] if self.sweep.lr is None else float(self.sweep.lr)


@dataclass(frozen=True)
class DataSweepRun:
    """What the page shows of a data-mode sweep (small: no pairs, no dense matrix)."""

    config: DataSweepConfig
    target_values: np.ndarray
    results: tuple[tuple[int, tuple[FitResult, ...]], ...]  # (n, results per rank)
    floors: tuple[float | None, ...]  # noise floor per n
    seconds: float


def data_estimate(config: DataSweepConfig) -> WorkEstimate:
    """What the data-mode sweep will cost before it runs: the target, then every rank on each
    n's pairs for that n's steps (:func:`lorarank.cost.data_fit_cost`)."""
    sweep = config.sweep
    total = target_cost(sweep.d_out, sweep.d_in)
    for n in config.samples:
        total = total + data_fit_cost(sweep.d_out, sweep.d_in, sweep.ranks, data=config.data(n),
                                      optimizer=sweep.optimizer, steps=config.steps_for(n))
    return total


def _n_ident(config: DataSweepConfig, n: int) -> tuple:
    return ("data-sweep-n", replace(config, samples=(n,)))


def by_n(config: DataSweepConfig) -> bool:
    """Whether the data-mode sweep runs one sample size at a time, so a stop keeps the sizes
    that finished (:func:`ui.guard.by_rank`): long sweeps, and sweeps whose every n finished
    that way (cache hits)."""
    return guard.by_rank(data_estimate(config).seconds, config.samples,
                         lambda n: _n_ident(config, n))


@st.cache_data(show_spinner=False, max_entries=64)
def _fit_one_n(config: DataSweepConfig) -> DataSweepRun:
    """One sample size of a sweep run n by n (``config.samples`` has one entry; cached)."""
    (n,) = config.samples
    with guard.heavy_work(f"the finite-data sweep at n = {n}"):
        run = _fit_data_sweep(config)
    guard.mark_done(_n_ident(config, n))
    return run


@st.cache_data(show_spinner=False, max_entries=32)
def run_data_sweep(config: DataSweepConfig) -> DataSweepRun:
    """Fit every rank on each n's pairs (cached per config; a progress bar on a miss), in a
    slot of the server's queue (:func:`ui.guard.heavy_work`).

    Long sweeps (:func:`by_n`) train one n at a time, each cached on its own (every n has its
    own pairs and seeds, so the numbers are those of the one-call sweep); short ones in one
    call.
    """
    if by_n(config):
        parts = []
        costs = [data_estimate(replace(config, samples=(n,))).seconds for n in config.samples]
        with common.whole_run(costs, [f"n = {n}" for n in config.samples], item="sample size") as part:
            for i, n in enumerate(config.samples):
                part(i)
                parts.append(_fit_one_n(replace(config, samples=(n,))))
        run = DataSweepRun(config=config, target_values=parts[0].target_values,
                           results=tuple(p.results[0] for p in parts),
                           floors=tuple(p.floors[0] for p in parts),
                           seconds=sum(p.seconds for p in parts))
    else:
        with guard.heavy_work("the finite-data sweep"):
            run = _fit_data_sweep(config)
    guard.mark_done(("data-sweep", config))
    return run


def guarded_data_sweep(config: DataSweepConfig) -> DataSweepRun | None:
    """The data-mode sweep within the server's work budget (:func:`ui.guard.guarded_run`), or
    the sample sizes that finished.

    Short: runs. Long: asks for Run (showing the estimate), then runs n by n with a Stop
    button. Past the server's cap: one sentence. When it does not run, the sample sizes that
    finished before a stop are returned as a sweep of those sizes (its ``config.samples`` says
    which), else None.
    """
    return guard.guarded_run(
        data_estimate(config).seconds, key=GATE_KEY, what="finite-data sweep",
        ident=("data-sweep", config), run=lambda: run_data_sweep(config),
        hint="Fewer or smaller n, fewer or smaller ranks, fewer steps, a smaller batch count "
             "or a smaller d_out x d_in make it cheaper.",
        ranks=config.samples, rank_ident=lambda n: _n_ident(config, n),
        partial=lambda done: run_data_sweep(replace(config, samples=done)),
        item="sample sizes", symbol="n", done_word="trained on")


def _fit_data_sweep(config: DataSweepConfig) -> DataSweepRun:
    start = time.perf_counter()
    sweep = config.sweep
    target = sweep.make_target()
    per_n = [config.steps_for(n) * len(sweep.ranks) for n in config.samples]
    total = sum(per_n)
    out = []
    with progress_bar(f"Training on n = {', '.join(map(str, config.samples))} pairs at r = "
                      f"{', '.join(map(str, sweep.ranks))}: optimiser steps") as progress:
        for i, n in enumerate(config.samples):
            # One set of pairs in memory at a time (sizes were checked by from_values).
            data = config.data(n)
            ds = make_dataset(target, data, seed=sweep.seed)
            def shifted(done: int, _total: int, base: int = sum(per_n[:i])) -> None:
                progress(base + done, total)
            results = fit_data(target, list(sweep.ranks), data=data, dataset=ds, optimizer=sweep.optimizer,
                               lr=config.lr_used, steps=config.steps_for(n), rule=sweep.rule, alpha=sweep.alpha,
                               seed=sweep.seed, progress=shifted)
            out.append((n, tuple(results)))
    floors = tuple(data_noise_floor(target, config.data(n)) for n in config.samples)
    return DataSweepRun(config=config, target_values=np.array(target.singular_values), results=tuple(out),
                        floors=floors, seconds=time.perf_counter() - start)


#: Definition of every column of the data-mode table.
DATA_COLUMN_HELP: dict[str, str] = {
    "n": "Training pairs.",
    "r": "LoRA rank.",
    "training loss": "Mean over the training pairs of 0.5·||s·B·A·x − y||² after training.",
    "rank-r optimum": "The smallest training loss any rank-r matrix reaches on these pairs "
                      "(reduced-rank regression, closed form): the training loss cannot go below it.",
    "held-out loss": "Mean over the held-out pairs of 0.5·||s·B·A·x − y||²; its expectation is "
                     "0.5·||s·B·A − T||² + 0.5·d_out·noise².",
    "relative error vs T": "||s·B·A − T||_F / ||T||_F: how far the trained update is from the "
                           "true one, whatever the data.",
    "Eckart-Young optimum": "The smallest relative error any rank-r matrix reaches on T.",
    "directions above noise": "Trained singular values above the noise floor for this n "
                              "(Gavish-Donoho threshold for the target's noise plus the label "
                              "noise seen through n pairs); '-' when n ≤ d_in + 1.",
    "steps run": "Optimiser steps taken, or the step at which the loss blew up.",
}


def _sig(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def data_table(run: DataSweepRun) -> "pd.DataFrame":
    """The table shown on the page: one row per (n, r); diverged runs say so, never NaN."""
    import pandas as pd

    rows = []
    for n, results in run.results:
        for res in results:
            rows.append({
                "n": n, "r": res.rank, "training loss": _sig(res.train_loss),
                "rank-r optimum": _sig(res.optimal_train_loss), "held-out loss": _sig(res.heldout_loss),
                "relative error vs T": _sig(res.rel_err), "Eckart-Young optimum": _sig(res.optimal_rel_err),
                "directions above noise": _sig(res.effective_rank),
                "steps run": f"diverged at step {res.diverged_at}" if res.diverged else str(res.steps),
            })
    return pd.DataFrame(rows, columns=list(DATA_COLUMN_HELP))


def _result_rows(run: DataSweepRun) -> list[dict]:
    rows = []
    for (n, results), floor in zip(run.results, run.floors):
        for res in results:
            rows.append({"samples": n, **res.to_dict(), "noise_floor": floor})
    return rows


def data_records(run: DataSweepRun) -> "pd.DataFrame":
    """The CSV download: one row per (n, r), machine column names, empty cells when undefined."""
    import pandas as pd

    frame = pd.DataFrame(_result_rows(run))
    frame["singular_values"] = [" ".join(f"{x:.9g}" for x in sv) for sv in frame["singular_values"]]
    for col in ("effective_rank", "diverged_at"):
        frame[col] = frame[col].astype("Int64")
    return frame


def data_json(run: DataSweepRun) -> dict:
    """The JSON download: the CLI's sweep document with a ``samples`` field per result."""
    cfg = run.config
    config = dataclasses.asdict(cfg.sweep)
    config.update(ranks=list(cfg.sweep.ranks), lr=cfg.lr_used, samples=list(cfg.samples),
                  label_noise=cfg.label_noise, batch_size=cfg.batch_size or None, heldout=cfg.heldout,
                  epochs=cfg.epochs or None, steps_per_n=[cfg.steps_for(n) for n in cfg.samples])
    return {"config": config, "results": _result_rows(run), "seconds": round(run.seconds, 4)}


def data_reading(run: DataSweepRun) -> list[str]:
    """Sentences read off the numbers (:func:`lorarank.data.data_findings`)."""
    sweep = run.config.sweep
    return data_findings({n: results for n, results in run.results}, true_rank=sweep.true_rank,
                         d_out=sweep.d_out, label_noise=run.config.label_noise)


@dataclass(frozen=True)
class DataCharts:
    """Vega-Lite specs of the data mode's charts."""

    losses: dict
    spectrum: dict
    spectrum_n: int
    #: ``(n, spec)``: the training loss over optimiser steps of every rank, per n.
    curves: tuple[tuple[int, dict], ...] = ()
    #: The loss axis of ``losses`` starts at the best rank (:func:`lorarank.charts.loss_focus`):
    #: ranks whose losses are above it are triangles on the top edge.
    zoomed: bool = False


@st.cache_data(show_spinner=False, max_entries=32)
def data_charts(config: DataSweepConfig) -> DataCharts:
    """Held-out loss against r for every n, the spectra at the smallest n and the training
    loss curves per n (cached)."""
    from lorarank.charts import data_loss_chart, data_loss_frame, loss_chart, loss_focus, spectrum_chart

    run = run_data_sweep(config)
    sweep = config.sweep
    noise_loss = 0.5 * sweep.d_out * config.label_noise**2 or None
    losses = data_loss_chart(_result_rows(run), noise_loss=noise_loss, true_rank=sweep.true_rank)
    zoomed = loss_focus(data_loss_frame(_result_rows(run)), noise_loss=noise_loss) is not None
    n, results = run.results[0]
    max_index = min(run.target_values.size, max(max(sweep.ranks), sweep.true_rank) + 4)
    spectrum = spectrum_chart(run.target_values, {res.rank: res.singular_values for res in results},
                              noise_floor=run.floors[0], max_index=max_index)
    curves = tuple(
        (n_, chart_spec(loss_chart({res.rank: res.loss for res in res_n},
                                   diverged_at={res.rank: res.diverged_at for res in res_n},
                                   title=f"n = {n_}: training loss per rank",
                                   loss_title="0.5·||s·B·A·x − y||², batch mean")))
        for n_, res_n in run.results)
    return DataCharts(losses=chart_spec(losses), spectrum=chart_spec(spectrum), spectrum_n=n,
                      curves=curves, zoomed=zoomed)


def _url_asks_data() -> bool:
    return st.query_params.get("mode") == "data"


def sweep_inputs() -> dict[str, Any]:
    """Draw the data-mode widgets in a sidebar group "Finite data" (open when the link asks for
    the data mode); return their values."""
    return layout.settings_group("Finite data", SWEEP_SETTINGS, expanded=_url_asks_data())


def is_data_mode(values: Mapping[str, Any]) -> bool:
    """Whether the data-mode widgets ask for finite data."""
    return values.get("mode") == "data"


#: The Rank sweep's tab (exact mode) saying how to switch to the data mode.
SWITCH_TAB = "Finite data"
#: The data mode's tabs, under its reading and table; the last holds the exact target's results.
DATA_TABS: tuple[str, ...] = ("Held-out loss", "Spectra", "Loss curves", "Exact target")
#: Caption of the exact table when it is shown in the data mode's "Exact target" tab.
EXACT_NOTE = (" This is the **exact target** T (the n → ∞ limit, no data): the finite-data "
              "results are above.")
#: The same, when the finite-data sweep has not run (it waits for Run, or is past the cap).
EXACT_WAITING_NOTE = (" This is the **exact target** T (the n → ∞ limit, no data); the "
                      "finite-data sweep above has not run.")


def switch_hint() -> None:
    """The exact mode's "Finite data" tab: what the data mode does and how to switch."""
    st.caption("Switch the training signal (sidebar, **Finite data**) to **data** to train each "
               "rank on n noisy pairs y = T x + noise instead of T itself, and see where more "
               "rank stops helping and starts fitting noise. The exact-target results are the "
               "n → ∞ limit.")


def sweep_results(sweep: SweepConfig, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The data mode's page, results first: the reading and the (n, r) table with its
    downloads, then the tabs :data:`DATA_TABS` (held-out loss chart, the data's spectra and
    loss curves). Returns the tabs, so the page can fill "Exact target" (the n → ∞ limit);
    None when nothing ran (a long sweep waiting for Run, or over the server's cap)."""
    with common.stop_on_error():
        config = DataSweepConfig.from_values(sweep, values)
        run = guarded_data_sweep(config)  # within the server's work budget
        if run is None:
            return None
        config = run.config  # after a stop: the sample sizes that finished
        charts = data_charts(config)
    # The answer per n first, then the table, then what the numbers say across n (a phone
    # shows the answer and the table's top on its first screen).
    lines = data_reading(run)
    per_n = [line for line in lines if line.startswith("With **n =")]
    st.markdown("\n".join(common.md("- {}", common.md_text(line)) for line in per_n))
    table = data_table(run)
    st.dataframe(table, hide_index=True, key="data_table", height=common.table_height(len(table), max_rows=24),
                 column_config={name: st.column_config.Column(name, help=text)
                                for name, text in DATA_COLUMN_HELP.items()})
    batch = "full batch" if not config.batch_size else f"batches of {config.batch_size}"
    st.caption(common.md(
        "Trained on n pairs y = T x + noise, judged on held-out pairs. Learning rate {lr:g} "
        "({optimizer}; the data mode's default when the learning rate is empty), {steps}, {batch}, "
        "label noise {noise:g}, {heldout} held-out pairs, alpha rule {rule}. Computed in "
        "{seconds:.2f} s.", lr=config.lr_used, optimizer=sweep.optimizer, steps=config.steps_text(),
        batch=batch, noise=config.label_noise, heldout=config.heldout, rule=sweep.rule,
        seconds=run.seconds))
    common.download_buttons(data_records(run), stem="lorarank-sweep-data", key=DOWNLOAD_KEY,
                            json_data=data_json(run))
    rest = [line for line in lines if line not in per_n]
    if rest:
        st.markdown("\n".join(common.md("- {}", common.md_text(line)) for line in rest))
    tabs = layout.sections(DATA_TABS)
    if layout.is_open(tabs["Held-out loss"]):
        with tabs["Held-out loss"]:
            losses = dict(charts.losses)
            title = losses.pop("title", None)  # above the chart as text: in the chart it was half hidden
            if title:
                st.markdown(common.md("**{}**", title))  # the builder's own words
            common.show_chart(
                losses,
                caption="Loss of a pair: 0.5·||s·B·A·x − y||², averaged over the held-out pairs "
                        "(solid, dots) or the training pairs (dashed); dotted: the smallest "
                        "training loss any rank-r matrix reaches on those pairs (reduced-rank "
                        "regression). Orange rule: what T itself scores on held-out pairs, "
                        "0.5·d_out·noise². Grey rule: the intrinsic rank k. With n → ∞ and full "
                        "batch the losses become 0.5·||s·B·A − T||² (+ the noise term), the exact "
                        "mode's." + (" The loss axis starts where the held-out loss is lowest, "
                                     "so its rise with rank shows: grey triangles on the top edge "
                                     "are ranks whose losses are far above (hover for them)."
                                     if charts.zoomed else ""))
    if layout.is_open(tabs["Spectra"]):
        with tabs["Spectra"]:
            floor = run.floors[0]
            floor_text = (common.md("Dashed: the noise floor {floor:.3g} for n = {n}; trained directions "
                                    "below it fit noise.", floor=floor, n=charts.spectrum_n)
                          if floor is not None else
                          common.md("No noise floor: n = {n} ≤ d_in + 1 pairs do not determine T.",
                                    n=charts.spectrum_n))
            layout.show_panels(charts.spectrum, columns=4, legend=False,  # one panel per rank, wrapped
                               caption=common.md("Trained on n = {n} pairs (the smallest n): singular "
                                                 "values of the trained s·B·A (blue) against T's (grey). "
                                                 "{floor}", n=charts.spectrum_n, floor=floor_text))
    if layout.is_open(tabs["Loss curves"]):
        with tabs["Loss curves"]:
            per_row = min(3, len(charts.curves))
            for start in range(0, len(charts.curves), per_row):
                for col, (_, spec) in zip(st.columns(per_row), charts.curves[start:start + per_row]):
                    with col:
                        common.show_chart(spec)
            st.caption("Training loss after each optimiser step, one chart per n: the mean of "
                       "0.5·||s·B·A·x − y||² over the step's batch (all n pairs with full batch), "
                       "log scale. A curve that ends early with a cross diverged.")
    return tabs


# --------------------------------------------------------------------------------------------
# alpha/r stability
# --------------------------------------------------------------------------------------------

def grid_inputs(shape: tuple[int, int]) -> DataConfig | None:
    """The stability page's data-mode inputs, in a sidebar group "Training signal"; the
    DataConfig they ask for, None in exact mode.

    ``shape`` is the target's ``(d_out, d_in)``, for the app's memory limit on the pairs."""
    values = layout.settings_group("Training signal", GRID_SETTINGS, expanded=_url_asks_data())
    if values["mode"] != "data":
        return None
    with common.stop_on_error():
        return data_config(values, int(values["samples"]), shape)


def grid_caption(data: DataConfig | None, steps: int) -> str:
    """One sentence saying which training signal the grid used."""
    if data is None:
        return "Every cell fits the exact target T."
    batch = "full batch" if data.full_batch else f"batches of {data.batch}"
    return (f"Every cell learns from the same {data.samples} pairs y = T x + {data.label_noise:g}·e "
            f"({batch}, {data.epochs(steps):.3g} epochs); the lr is a step on the batch's mean "
            f"loss 0.5·||s·B·A·x − y||², which tends to the exact mode's loss as n grows. "
            f"Minibatch noise and the sample's covariance move where runs diverge.")


def grid_losses_table(records) -> "pd.DataFrame":
    """Training and held-out loss per cell (data mode), '-' for a diverged cell."""
    import pandas as pd

    rows = [{"rule": r.rule, "r": r.rank, "lr": f"{r.lr:g}", "training loss": _sig(r.train_loss),
             "held-out loss": _sig(r.heldout_loss),
             "relative error vs T": f"diverged at step {r.diverged_at}" if r.diverged else _sig(r.rel_err)}
            for r in records]
    return pd.DataFrame(rows, columns=["rule", "r", "lr", "training loss", "held-out loss",
                                       "relative error vs T"])
