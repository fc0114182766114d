"""LoRA fitted to a target update by full-batch gradient descent, as training does it.

The adapter is ``dW = s * B @ A`` with ``B`` (d_out, r) initialised to zero and ``A`` (r, d_in)
Kaiming-uniform as PEFT does (``kaiming_uniform_(a=sqrt(5))``: uniform in +-1/sqrt(d_in)).
The loss is ``L = 0.5 * ||s B A - T||_F^2`` and a learning rate is a step on that loss::

    gB = s (s B A - T) A^T        gA = s B^T (s B A - T)

How it is fast without changing a single step:

1. Nothing d_out x d_in is formed per step. ``gB = s (s B (A A^T) - T A^T)`` and
   ``gA = s (s (B^T B) A - B^T T)`` need only r x r Gram matrices plus ``T A^T`` and ``B^T T``,
   and the loss comes from the same pieces:
   ``L = 0.5 (s^2 <B^T B, A A^T> - 2 s <B, T A^T> + ||T||^2)``.
2. Plain gradient descent commutes with orthogonal changes of basis: with ``T = U S V^T``
   (known exactly from the target), the iterates ``B' = U^T B`` and ``A' = A V`` follow gradient
   descent on the diagonal target ``S``, where ``T A^T`` becomes a row scaling. SGD therefore
   costs O((d_out + d_in) r^2) per step instead of O(d_out d_in r). Adam is not rotation
   invariant (it scales each coordinate), so it runs in the original basis with point 1 only.
3. Ranks whose padded problem is cheaper together than apart are stacked into one batch
   (zero-padded factors stay exactly zero under both optimisers).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ._validate import check_choice, check_int, check_real
from .errors import ConfigError
from .spectrum import (eckart_young_errors, factored_svdvals, gavish_donoho_rank, noise_threshold,
                       single_threaded_blas, truncation_error)
from .synthetic import Target

__all__ = [
    "SCALING_RULES", "OPTIMIZERS", "DEFAULT_LR", "DEFAULT_STEPS", "FitResult", "lora_scale",
    "init_lora", "fit_lora", "fit_lora_runs", "fit_lora_reference", "run_batches",
    "macs_per_step", "ProgressTicker", "check_knobs", "check_ranks", "check_runs",
    "check_target", "finished_runs", "optimizer_step", "textbook_step", "diverged_result",
    "sweep_findings"
]

#: Scaling rules: how the multiplier ``s`` depends on the rank ``r`` (and ``alpha``).
SCALING_RULES: dict[str, str] = {
    "fixed-alpha": "s = alpha / r (PEFT with lora_alpha kept fixed as r changes)",
    "alpha-eq-r": "s = 1 (lora_alpha = r)",
    "alpha-eq-2r": "s = 2 (lora_alpha = 2r)",
    "rslora": "s = alpha / sqrt(r) (rsLoRA, PEFT use_rslora=True)",
}

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")

#: Learning rates that reproduce the article's table with the default target.
DEFAULT_LR: dict[str, float] = {"sgd": 0.02, "adam": 0.01}
DEFAULT_STEPS = 2000

# Adam's constants, as torch.optim.Adam's defaults.
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
# Cost model of a batch step, in flop-equivalents: a fixed overhead for the ~15 numpy calls
# plus the Gram products. Used only to decide which ranks share a batch.
_STEP_OVERHEAD = 5e5


def lora_scale(rule: str, rank: int, *, alpha: float = 16.0) -> float:
    """The multiplier ``s`` of ``s * B @ A`` under a scaling rule.

    Parameters
    ----------
    rule : {"fixed-alpha", "alpha-eq-r", "alpha-eq-2r", "rslora"}
        See :data:`SCALING_RULES`.
    rank : int
        The adapter rank r >= 1.
    alpha : float, default=16.0
        ``lora_alpha``, used by ``fixed-alpha`` and ``rslora``.

    Returns
    -------
    float

    Examples
    --------
    >>> lora_scale("fixed-alpha", 8, alpha=16), lora_scale("rslora", 16, alpha=8)
    (2.0, 2.0)
    """
    rule = check_choice("rule", rule, tuple(SCALING_RULES))
    rank = check_int("rank", rank, minimum=1)
    alpha = check_real("alpha", alpha, minimum=0.0, strict_minimum=True)
    if rule == "fixed-alpha":
        return alpha / rank
    if rule == "alpha-eq-r":
        return 1.0
    if rule == "alpha-eq-2r":
        return 2.0
    return alpha / math.sqrt(rank)


def init_lora(d_out: int, d_in: int, rank: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's initial factors: ``B = 0`` and ``A`` Kaiming-uniform.

    Parameters
    ----------
    d_out, d_in, rank : int
    seed : int, default=0
        The factors of rank r come from ``np.random.default_rng([seed, r])``, so a rank's fit
        does not depend on which other ranks are fitted with it.

    Returns
    -------
    B : ndarray of shape (d_out, rank)
        Zeros.
    A : ndarray of shape (rank, d_in)
        Uniform in ``[-1/sqrt(d_in), 1/sqrt(d_in)]``: torch's ``kaiming_uniform_(a=sqrt(5))``
        has gain ``sqrt(2 / (1 + 5))`` and bound ``gain * sqrt(3 / fan_in) = 1 / sqrt(d_in)``.
    """
    bound = 1.0 / math.sqrt(d_in)
    rng = np.random.default_rng([seed, rank])
    return np.zeros((d_out, rank)), rng.uniform(-bound, bound, size=(rank, d_in))


@dataclass(frozen=True, eq=False)
class FitResult:
    """What one rank's fit learned.

    Attributes
    ----------
    rank : int
    scale : float
        The multiplier ``s`` used.
    rel_err : float or None
        ``||s B A - T||_F / ||T||_F`` after training; None when the run diverged.
    optimal_rel_err : float
        The Eckart-Young optimum: the smallest relative error any rank-r matrix reaches.
    singular_values : ndarray of shape (min(rank, d_out, d_in),)
        Of the trained ``s * B @ A``, descending; empty when the run diverged.
    effective_rank : int or None
        Trained directions above the target's noise floor (Gavish-Donoho threshold for the
        target's known noise level); None when the run diverged.
    diverged : bool
        The loss became non-finite or grew past ``divergence_factor`` times its initial value.
    diverged_at : int or None
        Number of steps taken when divergence was detected.
    steps : int
        Steps actually run.
    loss : ndarray of shape (steps + 1,)
        ``0.5 ||s B A - T||_F^2`` after t = 0, 1, ..., steps steps (finite values only).
    max_update_norm : float
        Largest ``||s B A||_F`` seen during training.
    train_loss, heldout_loss : float or None
        Data mode only (:mod:`lorarank.data`): the mean loss ``1/(2n) sum ||s B A x - y||^2``
        on the training and on the held-out pairs after training; None in the exact mode and
        when the run diverged.
    optimal_train_loss : float or None
        Data mode only: the smallest training loss any rank-r matrix reaches on these pairs
        (reduced-rank regression), a lower bound of ``train_loss``.
    noise_floor : float or None
        Data mode only: the singular value below which a trained direction fits noise for this
        many pairs (:func:`lorarank.data.data_noise_floor`); None when undetermined.
    """

    rank: int
    scale: float
    rel_err: float | None
    optimal_rel_err: float
    singular_values: np.ndarray
    effective_rank: int | None
    diverged: bool
    diverged_at: int | None
    steps: int
    loss: np.ndarray
    max_update_norm: float
    train_loss: float | None = None
    heldout_loss: float | None = None
    optimal_train_loss: float | None = None
    noise_floor: float | None = None

    def to_dict(self, *, loss_curve: bool = False) -> dict:
        """JSON-friendly dict with PRODUCT.md's keys (no NaN or inf anywhere)."""
        out = {
            "rank": self.rank,
            "scale": self.scale,
            "rel_err": self.rel_err,
            "optimal_rel_err": self.optimal_rel_err,
            "singular_values": [float(x) for x in self.singular_values],
            "effective_rank": self.effective_rank,
            "diverged": self.diverged,
            "diverged_at": self.diverged_at,
            "steps": self.steps,
            "max_update_norm": self.max_update_norm,
            "train_loss": self.train_loss,
            "heldout_loss": self.heldout_loss,
            "optimal_train_loss": self.optimal_train_loss,
        }
        if loss_curve:
            out["loss_curve"] = [float(x) for x in self.loss]
        return out


@dataclass
class _Run:
    rank: int
    scale: float
    lr: float
    A: np.ndarray  # initial A, already in the batch's basis; B starts at zero in any basis


def _check_rank(rank: object, target: Target) -> int:
    rank = check_int("rank", rank, minimum=1)
    if rank > min(target.shape):
        raise ConfigError(f"rank {rank} is larger than min(d_out, d_in) = {min(target.shape)}")
    return rank


def check_ranks(ranks: object, target: Target) -> list[int]:
    """The ranks as a list of whole numbers from 1 to min(d_out, d_in) of ``target``;
    none twice; ConfigError naming the bad one."""
    if isinstance(ranks, (int, np.integer)):
        ranks = [ranks]
    try:
        ranks = list(ranks)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"`ranks` should be a list of whole numbers, got {ranks!r}") from None
    if not ranks:
        raise ConfigError("`ranks` should name at least one rank")
    out = [_check_rank(r, target) for r in ranks]
    if len(set(out)) != len(out):
        raise ConfigError(f"`ranks` lists a rank twice: {out}")
    return out


def run_batches(runs: list[tuple[int, float, float]], d_out: int, d_in: int, optimizer: str) -> list[list[int]]:
    """Group run indices (by rank) so that each zero-padded batch costs less than running apart.

    Cost of one step of a batch of n runs padded to rank R, in flop-equivalents: a fixed
    overhead for the numpy calls, plus n times the cheaper form of the step at rank R
    (:func:`macs_per_step`).
    """
    def cost(n: int, rmax: int) -> float:
        return _STEP_OVERHEAD + 2.0 * n * min(macs_per_step(d_out, d_in, rmax, optimizer))

    groups: list[list[int]] = []
    rmax = 0
    for i in sorted(range(len(runs)), key=lambda i: runs[i][0]):
        r = runs[i][0]
        if groups and cost(len(groups[-1]) + 1, r) <= cost(len(groups[-1]), rmax) + cost(1, r):
            groups[-1].append(i)
        else:
            groups.append([i])
        rmax = r
    return groups


def fit_lora(target: Target, ranks: object, *, optimizer: str = "sgd", lr: float | None = None,
             steps: int = DEFAULT_STEPS, rule: str = "alpha-eq-r", alpha: float = 16.0,
             seed: int = 0, tol: float | None = None, divergence_factor: float = 1e4,
             progress: Callable[[int, int], None] | None = None) -> list[FitResult]:
    """Fit LoRA at each rank to ``target`` by full-batch gradient descent.

    Parameters
    ----------
    target : Target
        From :func:`lorarank.synthetic.make_target`.
    ranks : int or sequence of int
        Ranks to fit, each in [1, min(d_out, d_in)], no repeats.
    optimizer : {"sgd", "adam"}, default="sgd"
        Plain gradient descent, or Adam (torch defaults: betas 0.9, 0.999, eps 1e-8).
    lr : float, optional
        Learning rate (> 0), a step on ``0.5 ||s B A - T||^2``. Default :data:`DEFAULT_LR`.
    steps : int, default=2000
        Optimiser steps per rank (>= 1).
    rule : {"fixed-alpha", "alpha-eq-r", "alpha-eq-2r", "rslora"}, default="alpha-eq-r"
        How the multiplier ``s`` follows the rank, see :func:`lora_scale`.
    alpha : float, default=16.0
        ``lora_alpha`` for the rules that use it.
    seed : int, default=0
        Seed of ``A``'s initialisation (see :func:`init_lora`).
    tol : float, optional
        Stop a rank early once its loss fell by less than ``tol`` (relative) over the last 50
        steps. Default: run every step.
    divergence_factor : float, default=1e4
        A run has diverged once its loss is non-finite or exceeds this many times its initial
        value ``0.5 ||T||^2``.
    progress : callable, optional
        Called as ``progress(done, total)`` with optimiser steps done over all ranks.

    Returns
    -------
    list of FitResult
        In the order of ``ranks``.

    Raises
    ------
    ConfigError
        On a bad setting, naming it.
    """
    check_target(target)
    rank_list = check_ranks(ranks, target)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    runs = [(r, lora_scale(rule, r, alpha=alpha), lr) for r in rank_list]
    return fit_lora_runs(target, runs, optimizer=optimizer, steps=steps, seed=seed, tol=tol,
                         divergence_factor=divergence_factor, progress=progress)


def fit_lora_runs(target: Target, runs: Sequence[tuple[int, float, float]], *, optimizer: str = "sgd",
                  steps: int = DEFAULT_STEPS, seed: int = 0, tol: float | None = None,
                  divergence_factor: float = 1e4,
                  progress: Callable[[int, int], None] | None = None) -> list[FitResult]:
    """Fit many independent LoRA runs, each with its own rank, multiplier and learning rate.

    The engine of :func:`fit_lora` and of the alpha/r stability grid: runs are stacked into as
    few batches as the cost model finds cheaper than running them apart, so a grid of small
    problems costs a few numpy calls per step instead of a few per run.

    Parameters
    ----------
    target : Target
    runs : sequence of (rank, scale, lr)
        Each run's rank (in [1, min(d_out, d_in)]), multiplier ``s`` and learning rate (> 0).
        Repeats are allowed; a rank always starts from the same :func:`init_lora` factors.
    optimizer, steps, seed, tol, divergence_factor, progress
        As in :func:`fit_lora`; ``progress`` counts steps over all runs.

    Returns
    -------
    list of FitResult
        In the order of ``runs``.
    """
    check_target(target)
    optimizer, steps, seed, tol, divergence_factor = check_knobs(optimizer, steps, seed, tol, divergence_factor)
    checked = check_runs(runs, target)

    d_out, d_in = target.shape
    ticker = ProgressTicker(progress, steps * len(checked))
    results: list[FitResult | None] = [None] * len(checked)
    # Each rank's initial A, once: for SGD moved to the basis where T is diagonal (A' = A V),
    # all ranks in one pass (above HAAR_MAX rows the basis is applied, never formed).
    rotated = optimizer == "sgd"
    distinct = sorted({r for r, _, _ in checked})
    inits = {r: init_lora(d_out, d_in, r, seed=seed)[1] for r in distinct}
    if rotated:
        moved = target.to_right_basis(np.concatenate([inits[r] for r in distinct]))
        offsets = np.cumsum([0] + distinct)
        inits = {r: moved[o:o + r] for r, o in zip(distinct, offsets)}
    # Rotated SGD steps are small r x r and d x r products: BLAS threads only cost there.
    threads = single_threaded_blas() if optimizer == "sgd" else contextlib.nullcontext()
    with threads:
        for group in run_batches(checked, d_out, d_in, optimizer):
            batch = []
            for i in group:
                r, scale, lr = checked[i]
                batch.append(_Run(r, scale, lr, inits[r]))
            for i, res in zip(group, _fit_batch(target, batch, optimizer=optimizer, steps=steps, tol=tol,
                                                divergence_factor=divergence_factor, ticker=ticker)):
                results[i] = res
    ticker.finish()
    return results  # type: ignore[return-value]


def check_target(target: object) -> None:
    """ConfigError unless ``target`` is a :class:`Target` (the public fitters' first check)."""
    if not isinstance(target, Target):
        raise ConfigError(f"`target` should be a Target from make_target, got {type(target).__name__}")


def check_knobs(optimizer: object, steps: object, seed: object, tol: object,
                 divergence_factor: object) -> tuple[str, int, int, float | None, float]:
    """The optimiser settings shared by every fitter, validated (see :func:`fit_lora`)."""
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    steps = check_int("steps", steps, minimum=1, maximum=1_000_000)
    seed = check_int("seed", seed, minimum=0)
    if tol is not None:
        tol = check_real("tol", tol, minimum=0.0, strict_minimum=True)
    divergence_factor = check_real("divergence_factor", divergence_factor, minimum=1.0, strict_minimum=True)
    return optimizer, steps, seed, tol, divergence_factor  # type: ignore[return-value]


def check_runs(runs: object, target: Target) -> list[tuple[int, float, float]]:
    """``runs`` as a list of validated (rank, scale, lr)."""
    try:
        specs = [tuple(run) for run in runs]  # type: ignore[attr-defined]
    except TypeError:
        raise ConfigError(f"`runs` should be a list of (rank, scale, lr), got {runs!r}") from None
    if not specs:
        raise ConfigError("`runs` should name at least one run")
    checked = []
    for spec in specs:
        if len(spec) != 3:
            raise ConfigError(f"each run should be (rank, scale, lr), got {spec!r}")
        checked.append((_check_rank(spec[0], target), check_real("scale", spec[1]),
                        check_real("lr", spec[2], minimum=0.0, strict_minimum=True)))
    return checked


def finished_runs(t: int, steps: int, loss: np.ndarray, history: np.ndarray | None, *, tol: float | None,
              limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Which runs stop after measuring ``loss`` at step ``t``: (done, diverged) masks.

    A run has diverged when its loss is non-finite or above ``limit``; it is done when it
    diverged, when ``t == steps``, or (with ``tol``) when its loss fell by less than ``tol``
    (relative) since ``history``, its loss 50 steps earlier.
    """
    bad = ~np.isfinite(loss) | (loss > limit)
    done = bad.copy()
    if t == steps:
        done[:] = True
    elif tol is not None and t >= 50 and history is not None:
        done |= (history - loss) <= tol * history
    return done, bad


def optimizer_step(optimizer: str, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                    lrs: Sequence[np.ndarray], moments: Sequence[tuple[np.ndarray, np.ndarray]], t: int) -> None:
    """Step ``t`` (0-based) of SGD or Adam (torch's defaults, bias-corrected) on every parameter, in place.

    ``lrs[i]`` broadcasts against ``params[i]`` (one learning rate per run); ``moments[i]`` is
    Adam's (first, second) moment pair of ``params[i]`` (unused by SGD).
    """
    if optimizer == "sgd":
        for p, g, lr in zip(params, grads, lrs):
            p -= lr * g
        return
    c1, c2 = 1 - _BETA1 ** (t + 1), 1 - _BETA2 ** (t + 1)
    for p, g, lr, (mo, ve) in zip(params, grads, lrs, moments):
        mo *= _BETA1
        mo += (1 - _BETA1) * g
        ve *= _BETA2
        ve += (1 - _BETA2) * g * g
        p -= lr * (mo / c1) / (np.sqrt(ve / c2) + _EPS)


#: Longest wall time between two ``progress`` calls of a fit (seconds, checked once per step).
PROGRESS_INTERVAL = 0.25


class ProgressTicker:
    """Calls ``progress(done, total)`` about a hundred times over a fit, and at least every
    :data:`PROGRESS_INTERVAL` seconds (at the first step boundary past it).

    A caller stops a fit by raising from ``progress`` (the app does when the browser tab that
    asked for it has closed); the time bound keeps that wait short when a hundredth of the
    fit takes long, as on a loaded machine (seconds per hundredth were measured under load).
    """

    def __init__(self, progress: Callable[[int, int], None] | None, total: int):
        self.progress, self.total, self.done = progress, total, 0
        self.every = max(1, total // 100)
        self.next = 0
        self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is None:
            return
        now = time.monotonic()
        if self.done >= self.next or now - self.last >= PROGRESS_INTERVAL:
            self.progress(min(self.done, self.total), self.total)
            self.next = self.done + self.every
            self.last = now

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


def macs_per_step(d_out: int, d_in: int, r: int, optimizer: str) -> tuple[float, float]:
    """Multiply-adds of one step of one run at rank r: (Gram form, residual form).

    Gram form: ``A A^T``, ``B^T B``, ``B (A A^T)``, ``(B^T B) A``, plus for Adam (original basis)
    ``T A^T`` and ``B^T T``. Residual form: ``R = s B A - T``, ``R A^T``, ``B^T R``. In the
    rotated SGD basis ``T`` is diagonal, so only the Gram form's dense products disappear.
    """
    gram = 2.0 * r * r * (d_out + d_in) + (2.0 * d_out * d_in * r if optimizer == "adam" else 0.0)
    return gram, 3.0 * d_out * d_in * r


def _fit_batch(target: Target, runs: list[_Run], *, optimizer: str, steps: int,
               tol: float | None, divergence_factor: float, ticker: ProgressTicker) -> list[FitResult]:
    """Fit ``runs`` stacked in one zero-padded batch; return their results."""
    d_out, d_in = target.shape
    n, rmax = len(runs), max(run.rank for run in runs)
    sigma = target.singular_values
    m = sigma.size
    diag = (np.arange(m), np.arange(m))
    rotated = optimizer == "sgd"
    gram_macs, residual_macs = macs_per_step(d_out, d_in, rmax, optimizer)
    gram = gram_macs <= residual_macs  # large r / d makes the residual form cheaper
    # 1. Stack the factors, zero-padded to rmax (B = 0 as PEFT initialises it).
    # Rotated SGD in Gram form keeps A transposed (A^T, d_in x rmax, like B): every product
    # and update then reads both operands in memory order (a transposed view costs a strided
    # pass in each elementwise step and einsum).
    tall = gram and rotated
    B = np.zeros((n, d_out, rmax))
    A = np.zeros((n, d_in, rmax)) if tall else np.zeros((n, rmax, d_in))
    for i, run in enumerate(runs):
        if tall:
            A[i, :, : run.rank] = run.A.T
        else:
            A[i, : run.rank] = run.A
    s = np.array([run.scale for run in runs])[:, None, None]
    lr = np.array([run.lr for run in runs])[:, None, None]
    T = None if rotated else target.matrix  # the rotated basis needs only the spectrum
    half_t2 = 0.5 * float(np.sum(sigma**2))
    limit = divergence_factor * half_t2
    moments = [np.zeros_like(B), np.zeros_like(B), np.zeros_like(A), np.zeros_like(A)] if optimizer == "adam" else []

    losses = np.empty((n, steps + 1))
    norms = np.zeros(n)
    peak_sq = np.zeros(n)  # largest ||s B A||_F^2 so far of each alive run (rows follow alive)
    alive = np.arange(n)  # runs still training; rows of B, A, s, ... follow it
    # run index -> (steps run, diverged, factors at retirement unless diverged)
    stopped: dict[int, tuple] = {}
    # In the rotated basis T = diag(sigma): T A^T keeps the first m rows of A^T scaled by sigma,
    # B^T T the first m columns of B^T; zero padding is needed only on a non-square side.
    square_out, square_in = m == d_out, m == d_in
    sig_col = sigma[None, :, None]
    unit = bool(np.all(s == 1.0))  # s = 1 (alpha = r, the default rule): skip the products by s
    ss, s2, lr_s = s[:, 0, 0], (s * s)[:, 0, 0], lr * s
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps + 1):
            # 2. The loss of the current iterate and the pieces its gradient needs.
            if gram:
                BtB = B.transpose(0, 2, 1) @ B
                if tall:  # A holds A^T; BtT holds its transpose T^T B (d_in x rmax)
                    AAt = A.transpose(0, 2, 1) @ A
                    if square_out:
                        TAt = A[:, :m] * sig_col
                    else:
                        TAt = np.zeros_like(B)
                        TAt[:, :m] = A[:, :m] * sig_col
                    if square_in:
                        BtT = B[:, :m] * sig_col
                    else:
                        BtT = np.zeros_like(A)
                        BtT[:, :m] = B[:, :m] * sig_col
                else:
                    AAt = A @ A.transpose(0, 2, 1)
                    TAt = T @ A.transpose(0, 2, 1)
                    BtT = B.transpose(0, 2, 1) @ T
                update_sq = np.einsum("nij,nij->n", BtB, AAt)
                cross = np.einsum("nij,nij->n", B, TAt)
                if not unit:
                    update_sq *= s2
                    cross *= ss
                loss = np.maximum(0.5 * update_sq - cross + half_t2, 0.0)
                work = [AAt, BtB, TAt, BtT]
            else:
                R = s * (B @ A)
                update_sq = np.einsum("nij,nij->n", R, R)
                if rotated:
                    R[:, diag[0], diag[1]] -= sigma
                else:
                    R -= T
                loss = 0.5 * np.einsum("nij,nij->n", R, R)
                work = [R]
            if alive.size == n:
                losses[:, t] = loss
            else:
                losses[alive, t] = loss
            np.fmax(peak_sq, update_sq, out=peak_sq)
            # 3. Retire runs that diverged, converged or finished. Between the tolerance checks
            # a finite loss below the limit (NaN fails the comparison) retires nobody.
            if t == steps or (tol is not None and t >= 50) or not loss.max() <= limit:
                done, bad = finished_runs(t, steps, loss, losses[alive, t - 50] if t >= 50 else None,
                                      tol=tol, limit=limit)
                if done.any():
                    for j in np.flatnonzero(done):
                        i = int(alive[j])
                        norms[i] = np.sqrt(max(float(peak_sq[j]), 0.0))
                        A_j = A[j].T if tall else A[j]
                        stopped[i] = (t, bool(bad[j]), None if bad[j] else (B[j].copy(), A_j.copy()))
                        ticker.add(steps - t)
                    keep = ~done
                    alive = alive[keep]
                    if alive.size == 0:
                        break
                    B, A, s, lr, lr_s = B[keep], A[keep], s[keep], lr[keep], lr_s[keep]
                    ss, s2, peak_sq = ss[keep], s2[keep], peak_sq[keep]
                    work = [x[keep] for x in work]
                    moments = [x[keep] for x in moments]
            # 4. The gradients gB = s (s B A - T) A^T, gA = s B^T (s B A - T) and the step.
            if tall:
                # B -= lr s (s B AAt - TAt), A^T -= lr s (s A^T BtB - T^T B), in place (both
                # gradients read the iterate's AAt and BtB, computed above).
                AAt, BtB, TAt, BtT = work
                gB = B @ AAt
                gA = A @ BtB
                if not unit:
                    gB *= s
                    gA *= s
                gB -= TAt
                gA -= BtT
                gB *= lr_s
                gA *= lr_s
                B -= gB
                A -= gA
                ticker.add(alive.size)
                continue
            if gram:
                AAt, BtB, TAt, BtT = work
                gB = s * (s * (B @ AAt) - TAt)
                gA = s * (s * (BtB @ A) - BtT)
            else:
                (R,) = work
                gB = s * (R @ A.transpose(0, 2, 1))
                gA = s * (B.transpose(0, 2, 1) @ R)
            optimizer_step(optimizer, (B, A), (gB, gA), (lr, lr), (moments[:2], moments[2:]), t)
            ticker.add(alive.size)
    return [_result(target, run, losses[i], norms[i], *stopped[i], rotated=rotated)
            for i, run in enumerate(runs)]


def _result(target: Target, run: _Run, loss: np.ndarray, norm: float, t: int, diverged: bool,
            factors: tuple[np.ndarray, np.ndarray] | None, *, rotated: bool) -> FitResult:
    """Measure one retired run: exact final error, singular values, effective rank."""
    r, s = run.rank, run.scale
    optimal = float(eckart_young_errors(target.singular_values, [r])[0])
    if diverged:
        return diverged_result(r, s, optimal, loss, t, norm)
    B, A = factors[0][:, :r], factors[1][:r]
    # The exact residual once, at the end (the loss history uses the cheaper Gram form).
    residual = s * (B @ A)
    if rotated:  # T is diag(sigma) in this basis
        m = target.singular_values.size
        residual[np.arange(m), np.arange(m)] -= target.singular_values
    else:
        residual -= target.matrix
    rel_err = float(np.linalg.norm(residual) / target.norm)
    sv = factored_svdvals(B, A, scale=s)
    eff = gavish_donoho_rank(sv, shape=target.shape, noise=target.noise) if sv.size else 0
    return FitResult(rank=r, scale=s, rel_err=rel_err, optimal_rel_err=optimal, singular_values=sv,
                     effective_rank=eff, diverged=False, diverged_at=None, steps=t,
                     loss=loss[:t + 1].copy(), max_update_norm=float(norm))


def diverged_result(rank: int, scale: float, optimal: float, loss: np.ndarray, t: int, norm: float,
                    **fields: object) -> FitResult:
    """The result of a run that diverged at step ``t``: no error or spectrum, its finite losses,
    its largest update norm (the largest float when that overflowed); ``fields`` adds the data
    mode's (null losses, its bound and noise floor)."""
    finite = loss[:t + 1]
    finite = finite[np.isfinite(finite)]
    return FitResult(rank=rank, scale=scale, rel_err=None, optimal_rel_err=optimal,
                     singular_values=np.zeros(0), effective_rank=None, diverged=True,
                     diverged_at=t, steps=t, loss=finite.copy(),
                     max_update_norm=float(norm) if np.isfinite(norm) else float(np.finfo(float).max),
                     **fields)


def fit_lora_reference(matrix: np.ndarray, rank: int, *, scale: float, optimizer: str = "sgd",
                       lr: float, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The textbook loop, for tests and benchmarks: one dense residual per step.

    ``R = s B A - T; gB = s R A^T; gA = s B^T R`` and an SGD or Adam step, from the same
    initialisation as :func:`fit_lora`, with no change of basis, batching or divergence check.
    It shares no step code with :func:`fit_lora_runs` on purpose: it is the oracle the fast
    path is tested against.

    Parameters
    ----------
    matrix : ndarray of shape (d_out, d_in)
        The target ``T``.
    rank : int
    scale : float
    optimizer : {"sgd", "adam"}, default="sgd"
    lr : float
    steps : int
    seed : int, default=0

    Returns
    -------
    B : ndarray of shape (d_out, rank)
    A : ndarray of shape (rank, d_in)
    loss : ndarray of shape (steps + 1,)
        ``0.5 ||R||_F^2`` after t = 0..steps steps.
    """
    T = np.asarray(matrix, dtype=np.float64)
    B, A = init_lora(T.shape[0], T.shape[1], rank, seed=seed)
    mB, vB, mA, vA = np.zeros_like(B), np.zeros_like(B), np.zeros_like(A), np.zeros_like(A)
    loss = np.empty(steps + 1)
    for t in range(steps + 1):
        R = scale * B @ A - T
        loss[t] = 0.5 * np.sum(R * R)
        if t == steps:
            break
        gB = scale * R @ A.T
        gA = scale * B.T @ R
        textbook_step(optimizer, ((B, gB, mB, vB), (A, gA, mA, vA)), lr=lr, t=t)
    return B, A, loss


def textbook_step(optimizer: str, slots, *, lr: float, t: int) -> None:
    """One SGD or Adam step of the reference loops, written out as the textbooks (and torch's
    ``Adam``) do, in place: ``slots`` are (parameter, gradient, first moment, second moment).
    Shared by :func:`fit_lora_reference` and :func:`lorarank.data.fit_data_reference` only; the
    fast paths step through their own :func:`optimizer_step`, so each checks the other."""
    for p, g, mo, ve in slots:
        if optimizer == "sgd":
            p -= lr * g
            continue
        c1, c2 = 1 - _BETA1 ** (t + 1), 1 - _BETA2 ** (t + 1)
        mo *= _BETA1
        mo += (1 - _BETA1) * g
        ve *= _BETA2
        ve += (1 - _BETA2) * g * g
        p -= lr * (mo / c1) / (np.sqrt(ve / c2) + _EPS)


# ---------------------------------------------------------------------------------- reading
def _g(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


def _divergence_advice(res: FitResult, results: Sequence[FitResult]) -> str:
    """What to change after ``res`` diverged, given the scales s of every rank of the run."""
    scales = [other.scale for other in results]
    same = max(scales) - min(scales) <= 1e-12 * max(abs(max(scales)), 1.0)
    if same:
        # the rule gives every rank the same s: the alpha rule is not what to change
        return (f"the step was too large at this rank, with s = {_g(res.scale, 3)} at every "
                f"rank here (so the alpha rule is not the cause); lower the learning rate.")
    smaller = [other for other in results if other.scale < res.scale and not other.diverged]
    if smaller:
        low = min(smaller, key=lambda other: other.scale)
        return (f"the step was too large for s = {_g(res.scale, 3)} (r = {low.rank} trained "
                f"with s = {_g(low.scale, 3)}); lower the learning rate, or pick an alpha "
                f"rule that gives this rank a smaller s.")
    return (f"the step was too large at this rank, although its s = {_g(res.scale, 3)} is "
            f"no larger than the other ranks'; lower the learning rate.")


def sweep_findings(results: Sequence[FitResult], *, target_values: np.ndarray,
                   shape: tuple[int, int], noise: float, true_rank: int) -> list[str]:
    """What a rank sweep shows, in sentences read off its numbers.

    Parameters
    ----------
    results : sequence of FitResult
        :func:`fit_lora` of one target at several ranks.
    target_values : ndarray of shape (min(d_out, d_in),)
        The target's singular values, descending.
    shape : (int, int)
        The target's ``(d_out, d_in)``.
    noise : float
        Its noise level per entry (the noise floor is the Gavish-Donoho threshold for it).
    true_rank : int
        The planted rank k.

    Returns
    -------
    list of str
        Markdown sentences (``**`` marks the numbers that matter): how many directions stand
        above the noise floor, for each rank whether it is under-parameterised (held by the
        Eckart-Young optimum), matches the intrinsic rank, or is over-parameterised (its extra
        directions driven to the floor), what a diverged run should change, and the smallest
        rank that captures every direction.
    """
    values = np.asarray(target_values, dtype=np.float64)
    k = gavish_donoho_rank(values, shape=shape, noise=noise)
    floor = noise_threshold(values, shape=shape, noise=noise)
    planted = true_rank
    out = []
    head = (f"The target has **{k}** direction{'s' if k != 1 else ''} above the noise floor "
            f"(sigma > {_g(floor, 3)})")
    if k != planted:
        head += f"; {planted} were planted, so {planted - k} sank below the noise" if k < planted \
            else f"; {planted} were planted and the noise adds {k - planted}"
    out.append(head + ".")
    ok = [r for r in results if not r.diverged]
    for res in results:
        r = res.rank
        if res.diverged:
            out.append(f"**r = {r}** diverged at step {res.diverged_at}: "
                       + _divergence_advice(res, results))
            continue
        gap = res.rel_err - res.optimal_rel_err
        short = gap > 0.05 * res.optimal_rel_err + 1e-3
        err, opt = _g(res.rel_err, 3), _g(res.optimal_rel_err, 3)
        tail = (" It has not converged yet: more steps or a larger learning rate would close "
                "the gap." if short else "")
        eff = res.effective_rank
        if r < k:
            out.append(f"**r = {r}** is under-parameterised: it has room for {r} of the {k} "
                       f"directions, so no training takes it below the Eckart-Young optimum "
                       f"{opt} (it reached {err}); only a larger r lowers the error.{tail}")
        elif r == k:
            found = (f"all {k} directions" if eff == k else f"only {eff} of the {k} directions")
            out.append(f"**r = {r}** matches the intrinsic rank: it learned {found}, error "
                       f"{err} against the optimum {opt}.{tail}")
        else:
            at_floor = int(res.singular_values.size - eff)
            opt_k = truncation_error(values, k)
            if res.rel_err < opt_k:
                gain = (f"Its error {err} is below the rank-{k} optimum {_g(opt_k, 3)} only "
                        f"by fitting noise.")
            else:
                gain = (f"Its error {err} is no better than the rank-{k} optimum "
                        f"{_g(opt_k, 3)}: the extra directions buy nothing.")
            out.append(f"**r = {r}** is over-parameterised: {eff} of its {r} directions are "
                       f"above the noise floor and the optimiser drove the other {at_floor} to "
                       f"it (at or below {_g(floor, 3)}). {gain}{tail}")
    enough = [res for res in ok if res.rank >= k and res.effective_rank is not None
              and res.effective_rank >= k]
    if enough:
        best = min(enough, key=lambda res: res.rank)
        out.append(f"The smallest rank here that captures every direction above the noise is "
                   f"**r = {best.rank}**.")
    elif ok:
        out.append(f"No rank here captures all {k} directions above the noise: try r >= {k}.")
    return out
