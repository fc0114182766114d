"""The alpha/r stability experiment and a LoRA scaling calculator.

A LoRA update is ``dW = s * B @ A``. The multiplier ``s`` comes from the rank ``r`` and
``lora_alpha`` by a convention, and it acts as a learning-rate multiplier: on the loss
``0.5 * ||s B A - T||_F^2`` plain gradient descent on the factors is stable only for roughly
``lr < 1 / (s * sigma_max(T))``. With a fixed alpha (``s = alpha / r``) raising ``r`` shrinks
``s``, so learning slows and the stable learning-rate window moves; with ``alpha = r`` it stays.

This module runs that experiment on a grid of scaling rule x rank x learning rate
(:func:`run_stability`), reads what the grid shows from its numbers
(:func:`stability_findings`), and converts between scaling conventions (:func:`scale_for`,
:func:`alpha_to_keep`).

Scaling rules of the experiment (names as in ``lorarank stability --rules``):

- ``fixed-alpha``: ``s = alpha / r`` with one alpha for every rank (PEFT's default habit)
- ``alpha-eq-r``: ``alpha = r``, so ``s = 1``
- ``alpha-eq-2r``: ``alpha = 2 r``, so ``s = 2``
- ``rslora``: ``s = alpha / sqrt(r)`` (Kalajdzievski 2023, PEFT ``use_rslora=True``)

References
----------
D. Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023.
arXiv:2312.03732.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._validate import check_choice, check_int, check_real
from .errors import ConfigError
from .fit import OPTIMIZERS, SCALING_RULES, fit_lora_runs, lora_scale
from .spectrum import eckart_young_errors

__all__ = [
    "DEFAULT_RANKS",
    "DEFAULT_LRS",
    "DEFAULT_STEPS",
    "MAX_CELLS",
    "StabilityRecord",
    "StabilityGrid",
    "run_stability",
    "RankWindow",
    "RuleFinding",
    "StabilityFindings",
    "stability_findings",
    "CONVENTIONS",
    "KEEP_MODES",
    "scale_for",
    "alpha_to_keep",
]

#: Conventions :func:`scale_for` knows, with how each turns r and alpha into ``s``.
CONVENTIONS: dict[str, str] = {
    "peft": "PEFT: s = lora_alpha / r",
    "rslora": "rsLoRA (PEFT use_rslora=True): s = lora_alpha / sqrt(r)",
    "kohya": "kohya / sd-scripts: s = alpha / r; no alpha stored: s = 1",
    "mlx-lm": "mlx-lm: s = lora_parameters.scale, stored as is (independent of r)",
}

#: What :func:`alpha_to_keep` can hold fixed when the rank changes.
KEEP_MODES: dict[str, str] = {
    "scale": "keep s itself: the new adapter multiplies B @ A by the same number",
    "rslora": "keep rsLoRA-style behaviour: s follows 1 / sqrt(r), s_new = s_old * sqrt(r_old / r_new)",
}


# --------------------------------------------------------------------------------------------
# Scaling calculator
# --------------------------------------------------------------------------------------------

def _check_positive(name: str, value: object) -> float:
    return check_real(name, value, minimum=0.0, strict_minimum=True)


def scale_for(convention: str, *, r: int, alpha: float | None = None,
              scale: float | None = None) -> float:
    """Return the multiplier ``s`` of ``dW = s * B @ A`` for an adapter of rank ``r``.

    Parameters
    ----------
    convention : {"peft", "rslora", "kohya", "mlx-lm"}
        How the adapter's files turn ``r`` and ``alpha`` into ``s`` (see :data:`CONVENTIONS`).
    r : int
        The adapter's rank, ``r >= 1``.
    alpha : float, optional
        ``lora_alpha`` (PEFT, rsLoRA; required) or the stored ``.alpha`` (kohya; when absent
        kohya uses ``s = 1``). Not used by mlx-lm.
    scale : float, optional
        mlx-lm's ``lora_parameters.scale`` (required there, rejected elsewhere).

    Returns
    -------
    float
        The multiplier ``s > 0``.

    Raises
    ------
    ConfigError
        Unknown convention, ``r < 1``, a non-positive or non-finite alpha or scale, a missing
        alpha (PEFT, rsLoRA) or scale (mlx-lm), or a knob the convention does not have.
    """
    convention = check_choice("convention", convention, tuple(CONVENTIONS))
    r = check_int("r", r, minimum=1)
    if convention == "mlx-lm":
        if alpha is not None:
            raise ConfigError(f"mlx-lm stores `scale`, not `alpha`; got alpha={alpha!r}")
        if scale is None:
            raise ConfigError("mlx-lm needs `scale` (lora_parameters.scale); got None")
        return _check_positive("scale", scale)
    if scale is not None:
        raise ConfigError(f"{convention} computes s from alpha and r; `scale` applies only to "
                          f"mlx-lm, got scale={scale!r}")
    if alpha is None:
        if convention == "kohya":
            return 1.0
        raise ConfigError(f"{convention} needs `alpha` (lora_alpha); got None")
    alpha = _check_positive("alpha", alpha)
    if convention == "rslora":
        return alpha / math.sqrt(r)
    return alpha / r


def alpha_to_keep(convention: str, *, r_old: int, alpha_old: float | None, r_new: int,
                  keep: str = "scale") -> float:
    """Return the alpha to store at rank ``r_new`` so the adapter keeps its behaviour.

    Parameters
    ----------
    convention : {"peft", "rslora", "kohya", "mlx-lm"}
        The convention both adapters use. For mlx-lm, whose only knob is the stored ``scale``,
        ``alpha_old`` is that scale and the result is the new scale.
    r_old, r_new : int
        The old and new ranks, ``>= 1``.
    alpha_old : float or None
        The old alpha (``None`` only for kohya without an alpha key, meaning ``s = 1``).
    keep : {"scale", "rslora"}
        ``"scale"`` keeps ``s`` itself; ``"rslora"`` makes ``s`` follow ``1 / sqrt(r)`` as
        rsLoRA does: ``s_new = s_old * sqrt(r_old / r_new)``.

    Returns
    -------
    float
        The new alpha (the new scale for mlx-lm); ``scale_for(convention, r=r_new, alpha=result)``
        equals the wanted ``s_new``.

    Notes
    -----
    With ``s = alpha / r`` (PEFT, kohya) keeping ``s`` means ``alpha_new = alpha_old * r_new /
    r_old``; with ``s = alpha / sqrt(r)`` (rsLoRA) it means ``alpha_new = alpha_old *
    sqrt(r_new / r_old)``; mlx-lm's scale does not depend on r.
    """
    convention = check_choice("convention", convention, tuple(CONVENTIONS))
    keep = check_choice("keep", keep, tuple(KEEP_MODES))
    r_old = check_int("r_old", r_old, minimum=1)
    r_new = check_int("r_new", r_new, minimum=1)
    # 1. The old multiplier under the convention.
    if convention == "mlx-lm":
        if alpha_old is None:
            raise ConfigError("mlx-lm needs the old `scale` as alpha_old; got None")
        s_old = scale_for("mlx-lm", r=r_old, scale=_check_positive("alpha_old", alpha_old))
    else:
        if alpha_old is not None:
            alpha_old = _check_positive("alpha_old", alpha_old)
        elif convention != "kohya":
            raise ConfigError(f"{convention} needs `alpha_old` (lora_alpha); got None")
        s_old = scale_for(convention, r=r_old, alpha=alpha_old)
    # 2. The wanted new multiplier.
    s_new = s_old if keep == "scale" else s_old * math.sqrt(r_old / r_new)
    # 3. Invert the convention at r_new.
    if convention == "mlx-lm":
        return s_new
    if convention == "rslora":
        return s_new * math.sqrt(r_new)
    return s_new * r_new


# --------------------------------------------------------------------------------------------
# The grid experiment
# --------------------------------------------------------------------------------------------

#: Ranks of the default grid: from below the default target's k = 4 to twice its width.
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16, 32, 64)
#: Learning rates of the default grid, in the units of ``0.5 * ||s B A - T||_F^2`` (SGD).
DEFAULT_LRS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
#: Steps per cell of the default grid.
DEFAULT_STEPS = 200
#: Largest number of (rule, rank, lr) cells one call accepts.
MAX_CELLS = 2000


@dataclass(frozen=True)
class StabilityRecord:
    """One cell of the grid: a LoRA of one rank fitted under one scaling rule at one lr.

    Attributes
    ----------
    rule : str
        Scaling rule, one of ``lorarank.fit.SCALING_RULES``.
    rank : int
        LoRA rank r.
    lr : float
        Learning rate of the optimizer on ``0.5 * ||s B A - T||_F^2``.
    scale : float
        The multiplier ``s`` the rule gives at this rank.
    rel_err : float or None
        Final ``||s B A - T||_F / ||T||_F``; ``None`` when the run diverged.
    diverged : bool
        Whether the loss blew up (see ``lorarank.fit.fit_lora``).
    diverged_at : int or None
        The step at which divergence was detected, ``None`` if it did not diverge.
    max_update_norm : float
        Largest ``||s B A||_F`` over the steps run (finite values only).
    loss_curve : tuple of float
        Loss after t = 0, 1, ... steps, finite values only (a diverged run stops early). In the
        data mode, the mean loss of the minibatch each step used.
    train_loss, heldout_loss : float or None
        Data mode only: the mean loss ``1/(2n) sum ||s B A x - y||^2`` on the training and
        held-out pairs after training (:mod:`lorarank.data`); None in the exact mode and when
        the run diverged.
    """

    rule: str
    rank: int
    lr: float
    scale: float
    rel_err: float | None
    diverged: bool
    diverged_at: int | None
    max_update_norm: float
    loss_curve: tuple[float, ...] = field(repr=False)
    train_loss: float | None = None
    heldout_loss: float | None = None

    def to_dict(self) -> dict:
        """The record as the ``stability --json`` record: plain, finite, JSON-ready values."""
        # Field by field: dataclasses.asdict would deep-copy every float of the curve.
        return {"rule": self.rule, "rank": self.rank, "lr": self.lr, "scale": self.scale,
                "rel_err": self.rel_err, "diverged": self.diverged,
                "diverged_at": self.diverged_at, "max_update_norm": self.max_update_norm,
                "train_loss": self.train_loss, "heldout_loss": self.heldout_loss,
                "loss_curve": list(self.loss_curve)}


@dataclass(frozen=True)
class StabilityGrid:
    """The result of :func:`run_stability`: its settings and one record per (rule, rank, lr).

    Attributes
    ----------
    config : dict
        The settings (target, ranks, rules, lrs, alpha, optimizer, steps, seed), JSON-ready.
    records : tuple of StabilityRecord
        Ordered by rule (as asked), then lr, then rank.
    seconds : float
        Wall time of the fits.
    optimal_rel_err : dict of int to float
        Eckart-Young optimum per rank: the smallest relative error any rank-r matrix reaches
        on the target (what capacity allows, whatever the scaling). Not part of ``to_dict``.
    """

    config: dict
    records: tuple[StabilityRecord, ...]
    seconds: float
    optimal_rel_err: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"config", "records"}`` as ``lorarank stability --json`` prints it."""
        return {"config": dict(self.config), "records": [r.to_dict() for r in self.records]}

    def cell(self, rule: str, rank: int, lr: float) -> StabilityRecord:
        """The record of one cell; raises ConfigError naming the cell if it is not in the grid."""
        for rec in self.records:
            if rec.rule == rule and rec.rank == rank and math.isclose(rec.lr, lr, rel_tol=1e-12):
                return rec
        raise ConfigError(f"no cell rule={rule!r}, rank={rank}, lr={lr:g} in this grid")


def _check_list(name: str, values: object, check: Callable[[str, object], object]) -> tuple:
    if isinstance(values, (str, bytes)):
        raise ConfigError(f"`{name}` should be a list, got {values!r}")
    if not isinstance(values, Sequence):
        try:
            values = list(values)  # type: ignore[call-overload]
        except TypeError:
            raise ConfigError(f"`{name}` should be a list, got {values!r}") from None
    if len(values) == 0:
        raise ConfigError(f"`{name}` should not be empty")
    out = tuple(check(f"{name}[{i}]", v) for i, v in enumerate(values))
    if len(set(out)) != len(out):
        dup = next(v for i, v in enumerate(out) if v in out[:i])
        raise ConfigError(f"`{name}` lists {dup!r} twice")
    return out


def _finite_prefix(values: np.ndarray) -> tuple[float, ...]:
    """The leading finite values of a curve, as plain floats (a diverged run ends in inf/NaN)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        values = values[: bad[0]]
    return tuple(float(v) for v in values)


def _data_settings(data) -> dict:
    """The data mode's settings as flat config keys (all None in the exact mode)."""
    if data is None:
        return {"samples": None, "label_noise": None, "batch_size": None, "heldout": None}
    from .data import DataConfig

    if not isinstance(data, DataConfig):
        raise ConfigError(f"`data` should be a DataConfig, got {type(data).__name__}")
    return data.to_dict()


def run_stability(target, *, ranks: Sequence[int] = DEFAULT_RANKS,
                  rules: Sequence[str] | None = None, lrs: Sequence[float] = DEFAULT_LRS,
                  optimizer: str = "sgd", steps: int = DEFAULT_STEPS, alpha: float = 16.0,
                  seed: int = 0, data=None,
                  progress: Callable[[int, int], None] | None = None) -> StabilityGrid:
    """Fit LoRA on ``target`` for every scaling rule x rank x learning rate.

    Every cell is one run of :func:`lorarank.fit.fit_lora_runs`, which stacks the whole grid
    into a few batches, starts each rank from the same LoRA initialisation as training (B = 0,
    A Kaiming-uniform) and detects divergence.

    Parameters
    ----------
    target : lorarank.synthetic.Target
        The update to fit, from :func:`lorarank.synthetic.make_target`.
    ranks : sequence of int, default=DEFAULT_RANKS
        LoRA ranks, each >= 1, no repeats.
    rules : sequence of str, optional
        Scaling rules from ``lorarank.fit.SCALING_RULES``; default all four.
    lrs : sequence of float, default=DEFAULT_LRS
        Learning rates, each > 0, no repeats.
    optimizer : {"sgd", "adam"}, default="sgd"
    steps : int, default=DEFAULT_STEPS
        Steps per cell (a diverged cell stops early).
    alpha : float, default=16.0
        The alpha of the ``fixed-alpha`` and ``rslora`` rules.
    seed : int, default=0
        Seed of the LoRA initialisation (the same A for every cell of a rank), and of the
        pairs in the data mode.
    data : lorarank.data.DataConfig, optional
        The data mode: every cell trains on the same ``n`` pairs drawn from ``target``, in the
        same minibatch order (:func:`lorarank.data.fit_data_runs`), so minibatch noise and the
        finite sample can be seen moving each rule's stable window. Default: the exact target.
    progress : callable(done, total), optional
        Called with steps done so far over the whole grid, ``0 <= done <= total``.

    Returns
    -------
    StabilityGrid
        ``len(rules) * len(ranks) * len(lrs)`` records.

    Raises
    ------
    ConfigError
        A bad rank, rule, lr, optimizer, steps, alpha or seed (the message names it), or more
        than :data:`MAX_CELLS` cells.
    """
    # 1. Validate every knob at the boundary.
    ranks = _check_list("ranks", ranks, lambda n, v: check_int(n, v, minimum=1))
    rules = _check_list("rules", SCALING_RULES if rules is None else rules,
                        lambda n, v: check_choice(n, v, SCALING_RULES))
    lrs = _check_list("lrs", lrs,
                      lambda n, v: check_real(n, v, minimum=0.0, strict_minimum=True))
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    steps = check_int("steps", steps, minimum=1)
    alpha = _check_positive("alpha", alpha)
    seed = check_int("seed", seed, minimum=0)
    n_cells = len(rules) * len(ranks) * len(lrs)
    if n_cells > MAX_CELLS:
        raise ConfigError(f"the grid has {n_cells} cells (rules x ranks x lrs); at most "
                          f"{MAX_CELLS} are allowed")
    cells = [(rule, rank, lr) for rule in rules for lr in lrs for rank in ranks]
    total = len(cells) * steps
    d_out, d_in = target.shape
    config = {
        "d_out": int(d_out), "d_in": int(d_in), "true_rank": int(target.true_rank),
        "spectrum": target.spectrum, "sigma_max": float(target.sigma_max),
        "noise": float(target.noise), "target_seed": int(target.seed),
        "ranks": list(ranks), "rules": list(rules), "lrs": list(lrs), "alpha": alpha,
        "optimizer": optimizer, "steps": steps, "seed": seed,
        **_data_settings(data),
    }
    # 2. Every cell is an independent run: one batched call fits the whole grid, each rank from
    #    the same initialisation; progress counts steps over the whole grid.
    start = time.perf_counter()
    if progress is not None:
        progress(0, total)
    runs = [(rank, lora_scale(rule, rank, alpha=alpha), lr) for rule, rank, lr in cells]
    if data is None:
        results = fit_lora_runs(target, runs, optimizer=optimizer, steps=steps, seed=seed,
                                progress=progress)
    else:
        from .data import fit_data_runs

        results = fit_data_runs(target, runs, data=data, optimizer=optimizer, steps=steps,
                                seed=seed, progress=progress)
    records: list[StabilityRecord] = []
    for (rule, rank, lr), res in zip(cells, results):
        # 3. Only finite numbers leave this module (a diverged cell's tail is dropped).
        norm = float(res.max_update_norm)
        records.append(StabilityRecord(
            rule=rule, rank=int(rank), lr=float(lr), scale=float(res.scale),
            rel_err=None if res.diverged or res.rel_err is None else float(res.rel_err),
            diverged=bool(res.diverged),
            diverged_at=None if res.diverged_at is None else int(res.diverged_at),
            max_update_norm=norm if math.isfinite(norm) else float(np.finfo(np.float64).max),
            loss_curve=_finite_prefix(res.loss),
            train_loss=res.train_loss, heldout_loss=res.heldout_loss,
        ))
    optimal = eckart_young_errors(target.singular_values, np.asarray(ranks, dtype=np.int64))
    return StabilityGrid(config=config, records=tuple(records),
                         seconds=time.perf_counter() - start,
                         optimal_rel_err={r: float(e) for r, e in zip(ranks, optimal)})


# --------------------------------------------------------------------------------------------
# What a grid shows, read from its numbers
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankWindow:
    """The learning-rate window of one (rule, rank) row of a grid.

    Attributes
    ----------
    rule : str
    rank : int
    scale : float
    max_stable_lr : float or None
        Largest tested lr that did not diverge (``None``: every tested lr diverged).
    min_diverged_lr : float or None
        Smallest tested lr that diverged (``None``: none diverged).
    min_lr_reaching : float or None
        Smallest tested lr whose final relative error is <= the findings' ``target_err``.
    best_lr, best_rel_err : float or None
        The tested lr with the lowest final relative error, and that error.
    optimal_rel_err : float or None
        The Eckart-Young optimum at this rank, when known: no training goes below it.
    """

    rule: str
    rank: int
    scale: float
    max_stable_lr: float | None
    min_diverged_lr: float | None
    min_lr_reaching: float | None
    best_lr: float | None
    best_rel_err: float | None
    optimal_rel_err: float | None = None


@dataclass(frozen=True)
class RuleFinding:
    """How one scaling rule's window behaves across ranks.

    Attributes
    ----------
    rule : str
    windows : tuple of RankWindow
        One per rank, ascending rank.
    window_moves : bool
        Whether the largest stable lr differs between ranks.
    direction : {"steady", "up", "down", "mixed"}
        How the largest stable lr changes as r grows (``up``: larger lrs become stable).
    common_lr : float or None
        The largest lr stable at every rank (``None`` if there is none).
    common_errors : tuple of float
        Final relative error at ``common_lr`` per rank (empty if there is no common lr).
    sentences : tuple of str
        The reading of these numbers in words.
    """

    rule: str
    windows: tuple[RankWindow, ...]
    window_moves: bool
    direction: str
    common_lr: float | None
    common_errors: tuple[float, ...]
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class StabilityFindings:
    """What a grid shows, per rule, with ``target_err`` the error a run must reach to count."""

    target_err: float
    rules: tuple[RuleFinding, ...]

    @property
    def sentences(self) -> tuple[str, ...]:
        """Every rule's sentences, in rule order."""
        return tuple(s for f in self.rules for s in f.sentences)


def _fmt_lr(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:g}"


def _rule_sentences(rule: str, windows: Sequence[RankWindow], direction: str,
                    common_lr: float | None, common_errors: Sequence[float],
                    target_err: float) -> tuple[str, ...]:
    scales = [w.scale for w in windows]
    ranks = [w.rank for w in windows]
    if min(scales) == max(scales):
        s_text = f"s = {scales[0]:.3g} at every rank"
    else:
        s_text = f"s = {scales[0]:.3g} at r = {ranks[0]} to {scales[-1]:.3g} at r = {ranks[-1]}"
    out = []
    # 1. Where the window's edge sits, rank by rank (a row with no divergence has its edge
    #    beyond the grid: its largest stable lr is only a lower bound).
    def edge(w: RankWindow) -> str:
        if w.max_stable_lr is None:
            return f"none at r = {w.rank} (every tested lr diverged)"
        if w.min_diverged_lr is None:
            return f"above {w.max_stable_lr:g} at r = {w.rank} (no tested lr diverged)"
        return f"{w.max_stable_lr:g} at r = {w.rank}"

    if direction == "steady":
        w0 = windows[0]
        if w0.max_stable_lr is None:
            out.append(f"{rule} ({s_text}): every tested learning rate diverged at every rank.")
        elif w0.min_diverged_lr is None:
            out.append(f"{rule} ({s_text}): no tested learning rate diverged at any rank (up to "
                       f"{w0.max_stable_lr:g}); the window's edge lies beyond this grid.")
        else:
            out.append(f"{rule} ({s_text}): the largest stable learning rate is "
                       f"{w0.max_stable_lr:g} at every rank (the next one tested, "
                       f"{w0.min_diverged_lr:g}, diverged), so the window stays in place as "
                       f"r grows.")
    else:
        how = {"up": "moves to larger learning rates as r grows",
               "down": "moves to smaller learning rates as r grows",
               "mixed": "moves with r, not monotonically"}[direction]
        out.append(f"{rule} ({s_text}): the largest stable learning rate is "
                   f"{', '.join(edge(w) for w in windows)}; the window {how}.")
    # 2. How far the runs get at the largest lr every rank tolerates.
    if common_lr is not None and len(windows) > 1:
        lo, hi = common_errors[0], common_errors[-1]
        # Compare what is left to learn: the error above what the rank can reach at all.
        gap_lo = lo - (windows[0].optimal_rel_err or 0.0)
        gap_hi = hi - (windows[-1].optimal_rel_err or 0.0)
        # A run has finished learning once it is within the target, or within a fifth of the
        # target of its rank's optimum.
        done_lo = lo <= target_err or gap_lo <= target_err / 5
        done_hi = hi <= target_err or gap_hi <= target_err / 5
        if max(lo, hi) <= target_err:
            trend = f"both within the target {target_err:g}"
        elif done_lo and done_hi:
            trend = "both reached what their rank can hold"
        elif done_lo or (not done_hi and gap_hi > 1.5 * gap_lo):
            trend = "learning slows as r grows"
        elif done_hi or gap_lo > 1.5 * gap_hi:
            trend = "learning is faster at larger r"
        else:
            trend = "both still learning, about equally far from their rank's optimum"
        out.append(f"At lr = {common_lr:g}, stable at every rank, the final relative error is "
                   f"{lo:.3g} at r = {ranks[0]} and {hi:.3g} at r = {ranks[-1]}: {trend}.")
    # 3. The smallest learning rate that gets the job done.
    reach = [w for w in windows if w.min_lr_reaching is not None]
    if not reach:
        out.append(f"No tested learning rate reaches a relative error of {target_err:g} at any "
                   f"rank within the steps run.")
    else:
        if len(reach) == len(windows) and len({w.min_lr_reaching for w in reach}) == 1:
            parts = f"{_fmt_lr(reach[0].min_lr_reaching)} at every rank"
        else:
            parts = ", ".join(f"{_fmt_lr(w.min_lr_reaching)} at r = {w.rank}" for w in reach)
        missing = [str(w.rank) for w in windows if w.min_lr_reaching is None]
        tail = f"; no tested lr does at r = {', '.join(missing)}" if missing else ""
        out.append(f"Smallest learning rate reaching relative error {target_err:g}: {parts}"
                   f"{tail}.")
    # 4. Ranks that cannot reach the target at all: capacity, not scaling.
    short = [w for w in windows if w.optimal_rel_err is not None and w.optimal_rel_err > target_err]
    if short:
        parts = ", ".join(f"{w.optimal_rel_err:.3g} at r = {w.rank}" for w in short)
        out.append(f"Capacity, not scaling, limits the smallest ranks: the best error any "
                   f"matrix of that rank reaches (Eckart-Young) is {parts}, above "
                   f"{target_err:g}.")
    return tuple(out)


def stability_findings(records: Sequence[StabilityRecord] | StabilityGrid, *,
                       target_err: float = 0.05,
                       optimal_rel_err: Mapping[int, float] | None = None) -> StabilityFindings:
    """Read a grid's numbers: per rule and rank the stable lr window, and how it moves with r.

    Parameters
    ----------
    records : StabilityGrid or sequence of StabilityRecord
        The grid to read (any subset of cells works; each rule is read on its own ranks).
    target_err : float, default=0.05
        The final relative error a run must reach for ``min_lr_reaching``, in (0, 1].
    optimal_rel_err : mapping of int to float, optional
        Eckart-Young optimum per rank, so capacity is told apart from learning speed. Default:
        the grid's own (``StabilityGrid.optimal_rel_err``), none for a bare record list.

    Returns
    -------
    StabilityFindings
        Rules in the order they first appear; the sentences quote only numbers of this grid.
    """
    target_err = check_real("target_err", target_err, minimum=0.0, maximum=1.0,
                            strict_minimum=True)
    if isinstance(records, StabilityGrid):
        if optimal_rel_err is None:
            optimal_rel_err = records.optimal_rel_err
        records = records.records
    optimal_rel_err = dict(optimal_rel_err or {})
    records = list(records)
    if not records:
        raise ConfigError("`records` should not be empty")
    rules = list(dict.fromkeys(r.rule for r in records))
    findings = []
    for rule in rules:
        rows = [r for r in records if r.rule == rule]
        windows = []
        for rank in sorted({r.rank for r in rows}):
            cells = sorted((r for r in rows if r.rank == rank), key=lambda r: r.lr)
            stable = [c for c in cells if not c.diverged]
            diverged = [c for c in cells if c.diverged]
            reach = [c for c in stable if c.rel_err is not None and c.rel_err <= target_err]
            best = min((c for c in stable if c.rel_err is not None),
                       key=lambda c: c.rel_err, default=None)  # type: ignore[arg-type,return-value]
            windows.append(RankWindow(
                rule=rule, rank=rank, scale=cells[0].scale,
                max_stable_lr=stable[-1].lr if stable else None,
                min_diverged_lr=diverged[0].lr if diverged else None,
                min_lr_reaching=reach[0].lr if reach else None,
                best_lr=None if best is None else best.lr,
                best_rel_err=None if best is None else best.rel_err,
                optimal_rel_err=optimal_rel_err.get(rank),
            ))
        # 1. Direction of the window's edge with r (an all-diverged row counts as lr 0, a row
        #    that never diverged as beyond the grid).
        edges = [0.0 if w.max_stable_lr is None else
                 math.inf if w.min_diverged_lr is None else w.max_stable_lr for w in windows]
        pairs = list(zip(edges, edges[1:]))
        if all(b == a for a, b in pairs):
            direction = "steady"
        elif all(b >= a for a, b in pairs):
            direction = "up"
        elif all(b <= a for a, b in pairs):
            direction = "down"
        else:
            direction = "mixed"
        # 2. The largest lr no rank diverged at, and the errors there.
        lrs = sorted({r.lr for r in rows})
        common = [lr for lr in lrs
                  if all(any(r.lr == lr and r.rank == w.rank and not r.diverged for r in rows)
                         for w in windows)]
        common_lr = common[-1] if common else None
        common_errors: tuple[float, ...] = ()
        if common_lr is not None:
            by_rank = {r.rank: r.rel_err for r in rows if r.lr == common_lr}
            common_errors = tuple(float(by_rank[w.rank]) for w in windows)
        findings.append(RuleFinding(
            rule=rule, windows=tuple(windows), window_moves=direction != "steady",
            direction=direction, common_lr=common_lr, common_errors=common_errors,
            sentences=_rule_sentences(rule, windows, direction, common_lr, common_errors,
                                      target_err),
        ))
    return StabilityFindings(target_err=target_err, rules=tuple(findings))
