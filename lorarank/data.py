"""LoRA trained on finite data: n input/output pairs instead of the exact target.

The exact mode of :mod:`lorarank.fit` fits ``s B A`` to the target update ``T`` itself, which
is training on infinitely many noiseless examples. Here LoRA learns a layer
``y = (W0 + s B A) x`` from ``n`` training pairs (``W0`` is frozen and drops out of every
gradient, so only ``s B A`` against ``T`` matters)::

    x_i ~ N(0, I_{d_in}),    y_i = T x_i + noise_y * e_i,    e_i ~ N(0, I_{d_out})

and is judged on ``M`` held-out pairs drawn the same way, and against ``T`` itself.

Loss (training and held-out alike), the mean over pairs of half the squared error::

    L = 1/(2n) * sum_i ||s B A x_i - y_i||^2

Since ``E[x x^T] = I``, its expectation is ``0.5 ||s B A - T||_F^2 + 0.5 d_out noise_y^2``:
the exact mode's loss plus the label noise nobody can fit. With ``n -> inf`` and full batch the
gradients are the exact mode's, so a learning rate means the same step in both modes.

How it is fast (steps identical to the textbook loop :func:`fit_data_reference`):

1. Full batch needs only the data's moments: ``S = X^T X / n`` (d_in x d_in),
   ``C = Y^T X / n`` (d_out x d_in) and ``q = ||Y||_F^2 / n``. With ``W = s B A``,
   ``L = 0.5 (s^2 <B^T B, A S A^T> - 2 s <B, C A^T> + q)``,
   ``gB = s (s B (A S A^T) - C A^T)`` and ``gA = s (s (B^T B)(A S) - B^T C)``: a step costs
   ``O(r d_in (d_in + 2 d_out))`` whatever ``n``, instead of ``O(n r (2 d_in + 3 d_out))``.
2. Minibatches use the factored forward pass ``P = X_b A^T``, ``R = s P B^T - Y_b``,
   ``gB = s/b R^T P``, ``gA = s/b (R B)^T X_b``; the ``X_b``-side products of every rank in a
   batch are one matrix product over the stacked ``A`` factors.
3. Ranks are stacked into zero-padded batches (padding stays exactly zero), grouped as the
   cost model finds cheaper, as in the exact mode.

References
----------
A. J. Izenman, "Reduced-rank regression for the multivariate linear model", J. Multivariate
Analysis 5 (1975): the closed-form rank-r least-squares optimum used as the lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ._validate import check_choice, check_int, check_real
from .errors import ConfigError
from .fit import (
    DEFAULT_STEPS,
    OPTIMIZERS,
    FitResult,
    check_knobs,
    diverged_result,
    check_ranks,
    check_runs,
    check_target,
    finished_runs,
    optimizer_step,
    textbook_step,
    ProgressTicker,
    init_lora,
    lora_scale,
)
from .spectrum import eckart_young_errors, factored_svdvals, gavish_donoho_threshold, single_threaded_blas
from .synthetic import Target

__all__ = [
    "DEFAULT_LABEL_NOISE",
    "DEFAULT_HELDOUT",
    "DATA_DEFAULT_LR",
    "MAX_DATA_VALUES",
    "DataConfig",
    "Dataset",
    "make_dataset",
    "data_noise_floor",
    "reduced_rank_losses",
    "fit_data",
    "fit_data_runs",
    "fit_data_reference",
    "data_macs",
    "data_values",
    "data_findings",
    "MAX_STEP_VALUES",
    "rank_groups",
    "step_values",
]

#: Standard deviation of the label noise e in y = T x + noise_y e.
DEFAULT_LABEL_NOISE = 1.0
#: Held-out pairs the trained update is judged on.
DEFAULT_HELDOUT = 1000
#: Learning rates of the data mode when none is given. The exact mode's SGD default (0.02) sits
#: near the edge of stability for the default target; the sample covariance ``X^T X / n`` of
#: a few pairs has eigenvalues up to ``(1 + sqrt(d_in / n))^2`` and pushes it over.
DATA_DEFAULT_LR: dict[str, float] = {"sgd": 0.005, "adam": 0.01}
#: Largest ``(samples + heldout) * (d_in + d_out)``: the pairs are held in memory as float64
#: (2**25 values = 256 MB).
MAX_DATA_VALUES = 2**25

#: Largest ``runs * batch * (d_out + r)`` of one stacked minibatch step (2**24 values = 128 MB
#: per array): more runs are split into further batches.
MAX_STEP_VALUES = 2**24

_TRAIN_STREAM, _HELDOUT_STREAM, _ORDER_STREAM = 0xDA7A, 0x4E1D, 0x0D0E


@dataclass(frozen=True)
class DataConfig:
    """How the finite data is drawn and fed to the optimiser.

    Attributes
    ----------
    samples : int
        Training pairs ``n >= 1``.
    label_noise : float, default=1.0
        ``noise_y >= 0``, the standard deviation of each output's label noise.
    batch_size : int or None, default=None
        Pairs per optimiser step; ``None`` (or ``>= samples``) is full batch. Each epoch visits
        the pairs in a fresh random order; the last batch of an epoch may be smaller.
    heldout : int, default=1000
        Held-out pairs ``M >= 1`` for the held-out loss.
    """

    samples: int
    label_noise: float = DEFAULT_LABEL_NOISE
    batch_size: int | None = None
    heldout: int = DEFAULT_HELDOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", check_int("samples", self.samples, minimum=1))
        object.__setattr__(self, "label_noise", check_real("label_noise", self.label_noise, minimum=0.0))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, minimum=1))
        object.__setattr__(self, "heldout", check_int("heldout", self.heldout, minimum=1))

    @property
    def full_batch(self) -> bool:
        """Whether every step sees all ``samples`` pairs."""
        return self.batch_size is None or self.batch_size >= self.samples

    @property
    def batch(self) -> int:
        """Pairs per step: ``batch_size``, capped at ``samples``."""
        return self.samples if self.full_batch else int(self.batch_size)  # type: ignore[arg-type]

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps of one pass over the pairs: ``ceil(samples / batch)`` (the last batch
        of an epoch may be smaller), 1 for full batch."""
        return -(-self.samples // self.batch)

    def epochs(self, steps: int) -> float:
        """Passes over the training pairs that ``steps`` optimiser steps make:
        ``steps / steps_per_epoch``."""
        return steps / self.steps_per_epoch

    def steps_for_epochs(self, epochs: int) -> int:
        """Optimiser steps of ``epochs`` passes over the pairs: ``ceil(samples / batch) * epochs``.

        Raises
        ------
        ConfigError
            If ``epochs`` is not a whole number >= 1.
        """
        return self.steps_per_epoch * check_int("epochs", epochs, minimum=1)

    def to_dict(self) -> dict:
        """JSON-ready settings (``batch_size`` None means full batch)."""
        return {"samples": self.samples, "label_noise": self.label_noise,
                "batch_size": self.batch_size, "heldout": self.heldout}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training and held-out pairs for one target, with the moments the fits need.

    Attributes
    ----------
    X : ndarray of shape (n, d_in)
    Y : ndarray of shape (n, d_out)
        ``Y = X T^T + noise_y E``.
    S : ndarray of shape (d_in, d_in)
        ``X^T X / n``.
    C : ndarray of shape (d_out, d_in)
        ``Y^T X / n``.
    q : float
        ``||Y||_F^2 / n``.
    S_heldout, C_heldout, q_heldout
        The same moments of the held-out pairs.
    config : DataConfig
    seed : int
    """

    X: np.ndarray
    Y: np.ndarray
    S: np.ndarray
    C: np.ndarray
    q: float
    S_heldout: np.ndarray
    C_heldout: np.ndarray
    q_heldout: float
    config: DataConfig
    seed: int

    def loss(self, B: np.ndarray, A: np.ndarray, scale: float, *, heldout: bool = False) -> float:
        """``1/(2n) sum_i ||s B A x_i - y_i||^2`` on the training (or held-out) pairs.

        From the factors and the moments: nothing ``d_out x d_in`` is formed.
        """
        S, C, q = (self.S_heldout, self.C_heldout, self.q_heldout) if heldout else (self.S, self.C, self.q)
        AS = A @ S
        quad = scale * scale * float(np.sum((B.T @ B) * (AS @ A.T)))
        cross = scale * float(np.sum(B * (C @ A.T)))
        return max(0.5 * (quad - 2.0 * cross + q), 0.0)


def data_values(shape: tuple[int, int], config: DataConfig) -> int:
    """Numbers the pairs of ``config`` hold for a ``shape`` layer: ``(n + M) (d_in + d_out)``."""
    return (config.samples + config.heldout) * (shape[0] + shape[1])


def _check_data_size(shape: tuple[int, int], config: DataConfig) -> None:
    values = data_values(shape, config)
    if values > MAX_DATA_VALUES:
        raise ConfigError(
            f"{config.samples} training + {config.heldout} held-out pairs of a {shape[0]} x {shape[1]} "
            f"layer are {values:,} numbers; at most {MAX_DATA_VALUES:,} are held in memory")


def _draw(target: Target, n: int, noise_y: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d_out, d_in = target.shape
    # One draw per pair (x and e side by side): the first n pairs of a larger n are the same.
    Z = rng.standard_normal((n, d_in + d_out))
    X = np.ascontiguousarray(Z[:, :d_in])
    Y = X @ target.matrix.T
    if noise_y > 0:
        Y += noise_y * Z[:, d_in:]
    return X, Y


def make_dataset(target: Target, config: DataConfig, *, seed: int = 0) -> Dataset:
    """Draw the training and held-out pairs for ``target``.

    Parameters
    ----------
    target : Target
    config : DataConfig
    seed : int, default=0
        Seed of the pairs (and of the minibatch order). Training sets of different sizes with
        one seed are nested (the first n pairs of a larger set), and share the held-out set.

    Returns
    -------
    Dataset

    Raises
    ------
    ConfigError
        More pairs than :data:`MAX_DATA_VALUES` allows, or a bad argument.
    """
    check_target(target)
    if not isinstance(config, DataConfig):
        raise ConfigError(f"`config` should be a DataConfig, got {type(config).__name__}")
    seed = check_int("seed", seed, minimum=0)
    _check_data_size(target.shape, config)
    with single_threaded_blas():  # see fit_data_runs
        X, Y = _draw(target, config.samples, config.label_noise, np.random.default_rng([seed, _TRAIN_STREAM]))
        Xh, Yh = _draw(target, config.heldout, config.label_noise, np.random.default_rng([seed, _HELDOUT_STREAM]))
        n, m = config.samples, config.heldout
        for arr in (X, Y):
            arr.setflags(write=False)
        return Dataset(X=X, Y=Y, S=X.T @ X / n, C=Y.T @ X / n, q=float(np.sum(Y * Y)) / n,
                       S_heldout=Xh.T @ Xh / m, C_heldout=Yh.T @ Xh / m,
                       q_heldout=float(np.sum(Yh * Yh)) / m, config=config, seed=seed)


def data_noise_floor(target: Target, config: DataConfig) -> float | None:
    """The singular value below which a trained direction fits noise, for ``n`` pairs.

    The Gavish-Donoho threshold (as in the exact mode) for a per-entry noise of
    ``sqrt(noise_T^2 + noise_y^2 / (n - d_in - 1))``: the target's own noise floor plus the
    label noise as the least-squares estimate of ``T`` from ``n`` Gaussian pairs sees it
    (``E[(X^T X)^-1] = I / (n - d_in - 1)`` for ``x ~ N(0, I)``).

    Returns
    -------
    float or None
        None when ``n <= d_in + 1`` and there is label noise: so few pairs do not determine
        ``T`` and the estimate's noise has no such bound.
    """
    d_out, d_in = target.shape
    n, noise_y = config.samples, config.label_noise
    if noise_y > 0 and n <= d_in + 1:
        return None
    var = target.noise**2 + (noise_y**2 / (n - d_in - 1) if noise_y > 0 else 0.0)
    return gavish_donoho_threshold(shape=target.shape, noise=math.sqrt(var))


def reduced_rank_losses(dataset: Dataset, ranks: Sequence[int]) -> np.ndarray:
    """The smallest training loss any rank-r matrix reaches on these pairs, per rank.

    Reduced-rank regression in closed form: with the fitted values ``Yhat`` of the unrestricted
    least-squares fit (``Y`` projected on the column space of ``X``), the best rank-r ``W``
    gives ``X W^T = Yhat_r``, the rank-r truncation of ``Yhat``, so
    ``min L = 0.5 (q - sum_{i<=r} lambda_i)`` with ``lambda_i`` the eigenvalues of
    ``C S^+ C^T`` (``= Yhat^T Yhat / n``). Training LoRA of rank r minimises the same loss over
    a subset of rank-r matrices, so its training loss cannot go below this.

    Parameters
    ----------
    dataset : Dataset
    ranks : sequence of int

    Returns
    -------
    ndarray of shape (len(ranks),)
    """
    ks = np.asarray([check_int("rank", r, minimum=0) for r in ranks], dtype=np.int64)
    lam = _rrr_eigenvalues(dataset.S, dataset.C, samples=dataset.config.samples)
    cum = np.concatenate([[0.0], np.cumsum(lam)])
    return np.maximum(0.5 * (dataset.q - cum[np.minimum(ks, lam.size)]), 0.0)


def _rrr_eigenvalues(S: np.ndarray, C: np.ndarray, *, samples: int) -> np.ndarray:
    """Eigenvalues of ``C S^+ C^T`` (d_out x d_out), descending; only the non-zero ones matter.

    With at least ``2 d_in`` pairs ``S`` is well conditioned (its eigenvalues lie near
    ``[(1 - 1/sqrt(2))^2, (1 + 1/sqrt(2))^2]``), so a Cholesky factor ``S = L L^T`` whitens it:
    ``C S^-1 C^T = W^T W`` with ``W = L^-1 C^T``, and the eigenvalues come from the smaller of
    ``W^T W`` and ``W W^T`` (values only), about a third of the work of the general path. With
    fewer pairs: ``S = V diag(w) V^T`` keeping the numerically non-zero ``w``, and the squared
    singular values of ``K = C V_+ diag(w_+)^(-1/2)``.
    """
    d_in = S.shape[0]
    if samples >= 2 * d_in:
        try:
            L = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            pass
        else:
            W = np.linalg.solve(L, C.T)  # (d_in, d_out)
            gram = W.T @ W if W.shape[1] <= W.shape[0] else W @ W.T
            return np.maximum(np.linalg.eigvalsh(gram)[::-1], 0.0)
    w, V = np.linalg.eigh(S)
    keep = w > w.max() * max(S.shape) * np.finfo(np.float64).eps
    K = (C @ V[:, keep]) / np.sqrt(w[keep])
    return np.linalg.svd(K, compute_uv=False) ** 2


def _steps_macs(d_out: int, d_in: int, r: int, batch: int, full: bool, optimizer: str) -> float:
    """Multiply-adds of one step of one run at rank r."""
    if full:
        # A S, (A S) A^T, C A^T, B^T C, B^T B, B G, (B^T B)(A S)
        return r * d_in * (d_in + 2.0 * d_out) + r * r * (2.0 * d_in + 2.0 * d_out)
    # P = X_b A^T, P B^T, R^T P, R B, (R B)^T X_b
    return batch * r * (2.0 * d_in + 3.0 * d_out)


def data_macs(d_out: int, d_in: int, ranks: Sequence[int], *, config: DataConfig, steps: int,
              optimizer: str = "sgd") -> float:
    """Multiply-adds of a data-mode fit: drawing the data, its moments, the steps, the results.

    For cost estimates before running (work budgets): an honest count of the arithmetic of
    :func:`fit_data_runs` for one run per entry of ``ranks``, without the padding of batches.

    Parameters
    ----------
    d_out, d_in : int
    ranks : sequence of int
        One entry per run (repeats count again).
    config : DataConfig
    steps : int
    optimizer : {"sgd", "adam"}, default="sgd"

    Returns
    -------
    float
    """
    n, m = config.samples, config.heldout
    # Drawing Y = X T^T, and the moments X^T X, Y^T X of both sets.
    total = (n + m) * d_in * (d_out + d_in + d_out)
    # The reduced-rank bound (see _rrr_eigenvalues): with n >= 2 d_in a Cholesky factor, a
    # triangular solve, a Gram matrix and its eigenvalues; else eigh of S (~9 d^3) and the SVD of K.
    if n >= 2 * d_in:
        g = min(d_out, d_in)
        total += d_in**3 / 3 + d_in**3 + d_in * d_in * d_out + g * g * max(d_out, d_in) + 1.5 * g**3
    else:
        total += 9.0 * d_in**3 + 4.0 * d_out * d_in * min(d_out, d_in)
    for r in ranks:
        total += steps * _steps_macs(d_out, d_in, int(r), config.batch, config.full_batch, optimizer)
        # the results: two losses from moments and the dense residual against T
        total += 2 * r * d_in * (d_in + d_out) + d_out * d_in * r
    return float(total)


def _batch_order(n: int, batch: int, steps: int, seed: int):
    """Index arrays of the pairs each step uses: a fresh permutation per epoch (last batch of an
    epoch may be smaller); ``None`` for full batch."""
    if batch >= n:
        while True:
            yield None
    rng = np.random.default_rng([seed, _ORDER_STREAM])
    while True:
        perm = rng.permutation(n)
        for start in range(0, n, batch):
            yield perm[start:start + batch]


def fit_data(target: Target, ranks: object, *, data: DataConfig, optimizer: str = "sgd",
             lr: float | None = None, steps: int = DEFAULT_STEPS, rule: str = "alpha-eq-r",
             alpha: float = 16.0, seed: int = 0, tol: float | None = None,
             divergence_factor: float = 1e4, dataset: Dataset | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[FitResult]:
    """Fit LoRA at each rank to ``n`` pairs drawn from ``target`` (the data mode of the sweep).

    Parameters
    ----------
    target : Target
    ranks : int or sequence of int
        Each in [1, min(d_out, d_in)], no repeats.
    data : DataConfig
        Pairs, label noise, batch size and held-out size.
    optimizer, lr, steps, rule, alpha, seed, tol, divergence_factor, progress
        As in :func:`lorarank.fit.fit_lora`, but ``lr`` defaults to :data:`DATA_DEFAULT_LR`;
        the learning rate is a step on the mean loss
        ``1/(2b) sum ||s B A x - y||^2`` of the batch, ``seed`` also seeds the pairs. A run has
        diverged once a batch loss is non-finite or exceeds ``divergence_factor`` times the
        initial training loss ``q / 2``.
    dataset : Dataset, optional
        Pairs already drawn with :func:`make_dataset` (default: drawn here from ``seed``).

    Returns
    -------
    list of FitResult
        In the order of ``ranks``, with ``train_loss``, ``heldout_loss`` and
        ``optimal_train_loss`` (the reduced-rank optimum) set.
    """
    check_target(target)
    rank_list = check_ranks(ranks, target)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    lr = DATA_DEFAULT_LR[optimizer] if lr is None else lr
    runs = [(r, lora_scale(rule, r, alpha=alpha), lr) for r in rank_list]
    return fit_data_runs(target, runs, data=data, optimizer=optimizer, steps=steps, seed=seed, tol=tol,
                         divergence_factor=divergence_factor, dataset=dataset, progress=progress)


def fit_data_runs(target: Target, runs: Sequence[tuple[int, float, float]], *, data: DataConfig,
                  optimizer: str = "sgd", steps: int = DEFAULT_STEPS, seed: int = 0,
                  tol: float | None = None, divergence_factor: float = 1e4,
                  dataset: Dataset | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[FitResult]:
    """Many independent data-mode runs, each with its own (rank, scale, lr), batched.

    The data-mode twin of :func:`lorarank.fit.fit_lora_runs` (used by the stability grid):
    every run sees the same pairs in the same minibatch order.

    Parameters
    ----------
    target : Target
    runs : sequence of (rank, scale, lr)
    data : DataConfig
    optimizer, steps, seed, tol, divergence_factor, dataset, progress
        As in :func:`fit_data`.

    Returns
    -------
    list of FitResult
        In the order of ``runs``.
    """
    check_target(target)
    if not isinstance(data, DataConfig):
        raise ConfigError(f"`data` should be a DataConfig, got {type(data).__name__}")
    optimizer, steps, seed, tol, divergence_factor = check_knobs(optimizer, steps, seed, tol, divergence_factor)
    checked = check_runs(runs, target)
    if dataset is None:
        dataset = make_dataset(target, data, seed=seed)
    elif not isinstance(dataset, Dataset) or dataset.config != data or dataset.X.shape[1] != target.shape[1]:
        raise ConfigError("`dataset` was drawn for other settings than `data` and `target`")
    # One BLAS thread: on a shared machine OpenBLAS's spinning threads made these products and
    # factorisations ~10x slower when the cores were busy (measured at load 15 on 2 cores),
    # and an idle machine gains less than 2x from a second thread.
    with single_threaded_blas():
        return _fit_all(target, dataset, checked, optimizer=optimizer, steps=steps, seed=seed, tol=tol,
                        divergence_factor=divergence_factor, progress=progress)


def _fit_all(target: Target, dataset: Dataset, checked: list[tuple[int, float, float]], *, optimizer: str,
             steps: int, seed: int, tol: float | None, divergence_factor: float,
             progress: Callable[[int, int], None] | None) -> list[FitResult]:
    """Fit validated runs on ``dataset``, all in one concatenated batch unless memory splits it."""
    data = dataset.config
    d_out, d_in = target.shape
    ticker = ProgressTicker(progress, steps * len(checked))
    results: list[FitResult | None] = [None] * len(checked)
    distinct = sorted({r for r, _, _ in checked})
    optimal_train = dict(zip(distinct, (float(v) for v in reduced_rank_losses(dataset, distinct))))
    floor = data_noise_floor(target, data)
    inits: dict[int, np.ndarray] = {}
    per_rank = step_values(d_out, d_in, data.batch, data.full_batch)
    for group in rank_groups([c[0] for c in checked], lambda total: total * per_rank <= MAX_STEP_VALUES):
        batch_runs = []
        for i in group:
            r, scale, lr = checked[i]
            if r not in inits:
                inits[r] = init_lora(d_out, d_in, r, seed=seed)[1]
            batch_runs.append((r, scale, lr, inits[r]))
        fitted = _fit_batch(dataset, batch_runs, optimizer=optimizer, steps=steps, tol=tol,
                            divergence_factor=divergence_factor, seed=seed, ticker=ticker)
        for i, (run, out) in zip(group, zip(batch_runs, fitted)):
            results[i] = _result(target, dataset, run, *out, floor=floor,
                                 optimal_train=optimal_train[run[0]])
    ticker.finish()
    return results  # type: ignore[return-value]


def step_values(d_out: int, d_in: int, batch: int, full: bool) -> int:
    """Numbers one step holds per unit of concatenated rank (factors, moments, products)."""
    return 6 * (d_out + d_in) + (0 if full else 3 * batch)


def rank_groups(ranks: Sequence[int], fits: Callable[[int], bool]) -> list[list[int]]:
    """Run indices (ascending rank) in as few groups as memory allows: ``fits(sum of ranks)``."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(ranks)), key=lambda i: ranks[i]):
        if groups and fits(total + ranks[i]):
            groups[-1].append(i)
            total += ranks[i]
        else:
            groups.append([i])
            total = ranks[i]
    return groups


class _Layout:
    """Runs concatenated along the rank axis: run j owns columns ``cols[j]`` of ``B`` (d_out, R)
    and the same rows of ``A`` (R, d_in), R the sum of the ranks. Runs of equal rank sit side
    by side, so the small per-run products are one batched product per distinct rank."""

    def __init__(self, ranks: Sequence[int], scales: Sequence[float], lrs: Sequence[float], ids: Sequence[int]):
        order = sorted(range(len(ranks)), key=lambda j: ranks[j])
        self.ids = np.array([ids[j] for j in order], dtype=np.int64)
        self.ranks = [int(ranks[j]) for j in order]
        self.starts = np.concatenate([[0], np.cumsum(self.ranks)]).astype(np.int64)
        self.perm = order  # position -> index in the arguments
        scale = np.array([scales[j] for j in order], dtype=np.float64)
        lr = np.array([lrs[j] for j in order], dtype=np.float64)
        self.scale = scale
        self.lr_cols = np.repeat(lr, self.ranks)
        # (rank, first position, count) of each run of equal ranks
        self.blocks: list[tuple[int, int, int]] = []
        for pos, r in enumerate(self.ranks):
            if self.blocks and self.blocks[-1][0] == r:
                self.blocks[-1] = (r, self.blocks[-1][1], self.blocks[-1][2] + 1)
            else:
                self.blocks.append((r, pos, 1))

    def cols(self, pos: int) -> slice:
        return slice(int(self.starts[pos]), int(self.starts[pos + 1]))

    def block_cols(self, r: int, first: int, count: int) -> slice:
        return slice(int(self.starts[first]), int(self.starts[first]) + r * count)


def _cols(M: np.ndarray, cols: slice, count: int, r: int) -> np.ndarray:
    """The columns ``cols`` of ``M`` (rows, count * r) as ``count`` matrices (count, rows, r)."""
    return M[:, cols].reshape(M.shape[0], count, r).transpose(1, 0, 2)


def _grams(Bk: np.ndarray, Ak: np.ndarray, side: np.ndarray, cols: slice, count: int, r: int, *,
           full: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(G, B^T B)`` of ``count`` runs of rank r, each (count, r, r): ``G = A S A^T`` from
    ``side = A S`` (full batch) or ``G = P^T P / b`` from ``side = P = X_b A^T`` (minibatch)."""
    if full:
        G = side[cols].reshape(count, r, -1) @ Ak.transpose(0, 2, 1)
    else:
        Pk = _cols(side, cols, count, r)
        G = (Pk.transpose(0, 2, 1) @ Pk) / side.shape[0]
    return G, Bk.transpose(0, 2, 1) @ Bk


def _fit_batch(ds: Dataset, runs: list[tuple[int, float, float, np.ndarray]], *, optimizer: str,
               steps: int, tol: float | None, divergence_factor: float, seed: int,
               ticker: ProgressTicker) -> list[tuple]:
    """Train ``runs`` concatenated along the rank axis; per run (loss curve, max norm, steps,
    diverged, factors or None), in the order of ``runs``.

    Every step forms the data-side products of all runs at once (``A S``, ``C A^T``,
    ``B^T C`` for full batch; ``X_b A^T``, ``Y_b^T P``, ``Y_b B`` and ``H^T X_b`` for a
    minibatch), then per distinct rank the r x r Gram matrices and the gradients:

    - full batch: ``G = A S A^T``, ``gB = s (s B G - C A^T)``, ``gA = s (s (B^T B)(A S) - B^T C)``;
    - minibatch: ``P = X_b A^T``, ``G = P^T P / b``, ``gB = s (s B G - Y_b^T P / b)``,
      ``gA = (s / b) (s P (B^T B) - Y_b B)^T X_b``;

    and the loss ``0.5 (s^2 <B^T B, G> - 2 s <B, C_b A^T> + ||Y_b||^2 / b)`` from the same pieces.
    No run's residual ``s P B^T - Y_b`` (b x d_out) is formed.
    """
    cfg = ds.config
    d_in, d_out = ds.X.shape[1], ds.Y.shape[1]
    lay = _Layout([r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs], range(len(runs)))
    A = np.concatenate([runs[j][3] for j in lay.perm], axis=0)  # (R, d_in), ascending rank
    B = np.zeros((d_out, A.shape[0]))
    limit = divergence_factor * 0.5 * ds.q
    moments = ([(np.zeros_like(B), np.zeros_like(B)), (np.zeros_like(A), np.zeros_like(A))]
               if optimizer == "adam" else [(), ()])
    n_runs = len(runs)
    losses = np.empty((n_runs, steps + 1))
    norms = np.zeros(n_runs)
    stopped: dict[int, tuple] = {}
    order = _batch_order(cfg.samples, cfg.batch, steps, seed)
    S, C, q = ds.S, ds.C, ds.q
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps + 1):
            idx = next(order) if t < steps else None
            # 1. The data-side products of every run at once.
            if idx is None:
                AS = A @ S  # (R, d_in)
                cross = C @ A.T  # (d_out, R): C A^T
                yy = q
            else:
                Xb, Yb = ds.X[idx], ds.Y[idx]
                b = Xb.shape[0]
                P = Xb @ A.T  # (b, R)
                cross = (Yb.T @ P) / b  # (d_out, R): C_b A^T
                yy = float(np.sum(Yb * Yb)) / b
            # 2. Per distinct rank: Gram matrices, the loss at this iterate, ||s B A||_F.
            loss = np.empty(len(lay.ranks))
            update_sq = np.empty(len(lay.ranks))
            grams = []
            for r, first, count in lay.blocks:
                cols = lay.block_cols(r, first, count)
                ss = lay.scale[first:first + count]
                Bk, Ak, Xk = _cols(B, cols, count, r), A[cols].reshape(count, r, d_in), _cols(cross, cols, count, r)
                G, BtB = _grams(Bk, Ak, AS if idx is None else P, cols, count, r, full=idx is None)
                at = slice(first, first + count)
                loss[at] = np.maximum(0.5 * (ss * ss * np.einsum("nij,nij->n", BtB, G)
                                             - 2.0 * ss * np.einsum("nij,nij->n", Bk, Xk) + yy), 0.0)
                update_sq[at] = ss * ss * np.einsum("nij,nij->n", BtB, Ak @ Ak.transpose(0, 2, 1))
                grams.append((G, BtB))
            losses[lay.ids, t] = loss
            norms[lay.ids] = np.fmax(norms[lay.ids], np.sqrt(np.maximum(update_sq, 0.0)))
            # 3. Retire runs that diverged, converged or finished.
            done, bad = finished_runs(t, steps, loss, losses[lay.ids, t - 50] if t >= 50 else None,
                                  tol=tol, limit=limit)
            if done.any():
                for pos in np.flatnonzero(done):
                    cols = lay.cols(int(pos))
                    stopped[int(lay.ids[pos])] = (t, bool(bad[pos]),
                                                  None if bad[pos] else (B[:, cols].copy(), A[cols].copy()))
                    ticker.add(steps - t)
                if done.all():
                    break
                keep = np.flatnonzero(~done)
                keep_cols = np.concatenate([np.arange(lay.starts[j], lay.starts[j + 1]) for j in keep])
                lay = _Layout([lay.ranks[j] for j in keep], lay.scale[keep], lay.lr_cols[lay.starts[keep]],
                              lay.ids[keep])
                B, A = B[:, keep_cols], A[keep_cols]
                moments = [tuple(m[:, keep_cols] for m in moments[0]), tuple(m[keep_cols] for m in moments[1])]
                if idx is None:
                    AS, cross = AS[keep_cols], cross[:, keep_cols]
                else:
                    P, cross = P[:, keep_cols], cross[:, keep_cols]
                grams = None  # the blocks changed: recomputed below
            # 4. Gradients of the mean loss and the step.
            gB = np.empty_like(B)
            if idx is None:
                gA = B.T @ C  # (R, d_in): B^T C, replaced block by block below
            else:
                YB = Yb @ B  # (b, R)
                H = np.empty_like(YB)
            for bi, (r, first, count) in enumerate(lay.blocks):
                cols = lay.block_cols(r, first, count)
                ss = lay.scale[first:first + count][:, None, None]
                Bk, Xk = _cols(B, cols, count, r), _cols(cross, cols, count, r)
                if grams is not None:
                    G, BtB = grams[bi]
                else:
                    G, BtB = _grams(Bk, A[cols].reshape(count, r, d_in), AS if idx is None else P, cols,
                                    count, r, full=idx is None)
                gBk = ss * (ss * (Bk @ G) - Xk)  # (count, d_out, r)
                gB[:, cols] = gBk.transpose(1, 0, 2).reshape(d_out, count * r)
                if idx is None:
                    ASk = AS[cols].reshape(count, r, d_in)
                    BtCk = gA[cols].reshape(count, r, d_in)
                    gA[cols] = (ss * (ss * (BtB @ ASk) - BtCk)).reshape(count * r, d_in)
                else:
                    Pk, YBk = _cols(P, cols, count, r), _cols(YB, cols, count, r)
                    Hk = (ss / b) * (ss * (Pk @ BtB) - YBk)  # (count, b, r)
                    H[:, cols] = Hk.transpose(1, 0, 2).reshape(b, count * r)
            if idx is not None:
                gA = H.T @ Xb  # (R, d_in)
            optimizer_step(optimizer, (B, A), (gB, gA), (lay.lr_cols[None, :], lay.lr_cols[:, None]),
                            moments, t)
            ticker.add(len(lay.ranks))
    return [(losses[i], norms[i], *stopped[i]) for i in range(n_runs)]


def _result(target: Target, ds: Dataset, run: tuple, loss: np.ndarray, norm: float, t: int,
            diverged: bool, factors: tuple[np.ndarray, np.ndarray] | None, *, floor: float | None,
            optimal_train: float) -> FitResult:
    """Measure one retired run: errors against T, both losses, spectrum, effective rank."""
    r, s = run[0], run[1]
    optimal = float(eckart_young_errors(target.singular_values, [r])[0])
    if diverged:
        return diverged_result(r, s, optimal, loss, t, norm, train_loss=None, heldout_loss=None,
                               optimal_train_loss=optimal_train, noise_floor=floor)
    B, A = factors[0][:, :r], factors[1][:r]
    residual = s * (B @ A) - target.matrix  # once, at the end
    rel_err = float(np.linalg.norm(residual) / target.norm)
    sv = factored_svdvals(B, A, scale=s)
    eff = None if floor is None else int(np.count_nonzero(sv > floor))
    return FitResult(rank=r, scale=s, rel_err=rel_err, optimal_rel_err=optimal, singular_values=sv,
                     effective_rank=eff, diverged=False, diverged_at=None, steps=t,
                     loss=loss[:t + 1].copy(), max_update_norm=float(norm),
                     train_loss=ds.loss(B, A, s), heldout_loss=ds.loss(B, A, s, heldout=True),
                     optimal_train_loss=optimal_train, noise_floor=floor)


def fit_data_reference(X: np.ndarray, Y: np.ndarray, rank: int, *, scale: float, optimizer: str = "sgd",
                       lr: float, steps: int, batch_size: int | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The textbook minibatch loop, for tests and benchmarks: one rank, the pairs themselves.

    ``P = X_b A^T; R = s P B^T - Y_b; gB = s/b R^T P; gA = s/b (R B)^T X_b`` and an SGD or
    Adam step, from :func:`lorarank.fit.init_lora`'s factors and in the minibatch order of
    :func:`fit_data` (same ``seed``), with no moments, batching over ranks or divergence check.

    Parameters
    ----------
    X : ndarray of shape (n, d_in)
    Y : ndarray of shape (n, d_out)
    rank : int
    scale : float
    optimizer : {"sgd", "adam"}, default="sgd"
    lr : float
    steps : int
    batch_size : int, optional
        Default: full batch.
    seed : int, default=0

    Returns
    -------
    B : ndarray of shape (d_out, rank)
    A : ndarray of shape (rank, d_in)
    loss : ndarray of shape (steps + 1,)
        The mean loss ``1/(2b) ||R||_F^2`` of the batch each step used (all pairs after the
        last step).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = X.shape[0]
    B, A = init_lora(Y.shape[1], X.shape[1], rank, seed=seed)
    mB, vB, mA, vA = np.zeros_like(B), np.zeros_like(B), np.zeros_like(A), np.zeros_like(A)
    order = _batch_order(n, n if batch_size is None else min(batch_size, n), steps, seed)
    loss = np.empty(steps + 1)
    for t in range(steps + 1):
        idx = next(order) if t < steps else None
        Xb, Yb = (X, Y) if idx is None else (X[idx], Y[idx])
        b = Xb.shape[0]
        P = Xb @ A.T
        R = scale * P @ B.T - Yb
        loss[t] = 0.5 * np.sum(R * R) / b
        if t == steps:
            break
        gB = scale / b * (R.T @ P)
        gA = scale / b * ((R @ B).T @ Xb)
        textbook_step(optimizer, ((B, gB, mB, vB), (A, gA, mA, vA)), lr=lr, t=t)
    return B, A, loss


def _g(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def data_findings(by_n: "dict[int, Sequence[FitResult]]", *, true_rank: int, d_out: int,
                  label_noise: float) -> list[str]:
    """What a data-mode sweep over several ``n`` shows, in sentences quoting its numbers.

    Parameters
    ----------
    by_n : mapping of int to sequence of FitResult
        For each number of training pairs ``n``, the results of :func:`fit_data` (one per rank).
    true_rank : int
        The target's planted rank k.
    d_out : int
    label_noise : float

    Returns
    -------
    list of str
        Markdown sentences: where the held-out loss is lowest for each n, whether more rank
        stops helping or starts hurting past it (with the training loss beside it), how the
        cost of extra rank changes with n, and the loss ``T`` itself scores.
    """
    out: list[str] = []
    floor = 0.5 * d_out * label_noise**2
    rises: dict[int, tuple[int, int, float]] = {}
    for n in sorted(by_n):
        results = sorted(by_n[n], key=lambda r: r.rank)
        ok = [r for r in results if not r.diverged]
        bad = [r for r in results if r.diverged]
        if bad:
            out.append(f"With **n = {n}**, r = {', '.join(str(r.rank) for r in bad)} diverged "
                       f"(at step {', '.join(str(r.diverged_at) for r in bad)}): lower the learning rate.")
        if not ok:
            continue
        best = min(ok, key=lambda r: r.heldout_loss)  # type: ignore[arg-type,return-value]
        last = ok[-1]
        text = (f"With **n = {n}** pairs the held-out loss is lowest at **r = {best.rank}** "
                f"({_g(best.heldout_loss, 4)})")
        if last.rank > best.rank:
            grew = last.heldout_loss - best.heldout_loss  # type: ignore[operator]
            if grew > 0.01 * best.heldout_loss:  # type: ignore[operator]
                rises[n] = (best.rank, last.rank, grew)
                text += (f" and rises to {_g(last.heldout_loss, 4)} at r = {last.rank}, while the "
                         f"training loss keeps falling ({_g(best.train_loss, 4)} to "
                         f"{_g(last.train_loss, 4)}): past r = {best.rank} more rank hurts, the "
                         f"extra directions fit the label noise of these {n} pairs.")
            else:
                rises[n] = (best.rank, last.rank, grew)
                text += (f"; up to r = {last.rank} it stays within 1% ({_g(last.heldout_loss, 4)}): "
                         f"past r = {best.rank} more rank stops helping but costs little.")
        elif best.rank < true_rank or len(ok) == 1:
            text += "."
        else:
            text += f", the largest rank tried: every extra rank still helped."
        out.append(text)
        under = [r for r in ok if r.rank < true_rank]
        if under and n == max(by_n):
            r0 = under[-1]
            out.append(f"r = {r0.rank} < k = {true_rank} is limited by capacity, not data: even "
                       f"with n = {n} its held-out loss is {_g(r0.heldout_loss, 4)}.")
    if len(rises) > 1:
        parts = ", ".join(f"{_g(g, 3)} at n = {n}" for n, (_, _, g) in sorted(rises.items()))
        ns = sorted(rises)
        trend = ("shrinks" if rises[ns[-1]][2] < rises[ns[0]][2] else "does not shrink")
        out.append(f"The cost of the extra ranks (held-out loss at the largest r minus the best) "
                   f"{trend} with more data: {parts}.")
    if label_noise > 0:
        out.append(f"The floor: T itself scores 0.5·d_out·noise² = {_g(floor, 4)} on held-out pairs "
                   f"(label noise nobody can fit).")
    return out
