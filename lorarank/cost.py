"""Work estimates: what a sweep, a stability grid or an audit will cost, before it runs.

Pure arithmetic on the inputs (shapes, ranks, steps), never the work itself, so a shared server
can show an estimate, ask before a long run and refuse one past its limit. The model counts
multiply-adds (MACs) of the engine's own kernels and the numpy calls around them:

    seconds ~= SECONDS_PER_MAC * macs + SECONDS_PER_CALL * calls

with the two constants calibrated by ``benchmarks/bench_cost.py`` on a 2-core machine (one
BLAS thread, as the fits run). An estimate is a guide within a small factor, not a promise:
the benchmark prints estimate / measured for a spread of inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ._validate import check_choice, check_int
from .errors import ConfigError
from .data import MAX_STEP_VALUES, DataConfig, rank_groups, step_values, data_macs
from .fit import OPTIMIZERS, macs_per_step, run_batches
from .synthetic import BLOCK, HAAR_MAX, LAYERS

__all__ = ["SECONDS_PER_MAC", "SECONDS_PER_CALL", "WorkEstimate", "basis_cost", "basis_draws_cost", "target_cost", "fit_cost",
           "sweep_cost", "stability_cost", "data_fit_cost", "data_sweep_cost",
           "factored_svd_cost", "audit_cost"]

#: Seconds per multiply-add of the fits' and SVDs' BLAS kernels (float64, one thread), and per
#: numpy call of their per-step overhead; see ``benchmarks/bench_cost.py`` for the calibration.
SECONDS_PER_MAC = 1.0e-10
SECONDS_PER_CALL = 5.0e-6

# numpy calls of one optimiser step of one batch (products, einsums, updates, the divergence
# check), of the final measurement of one run, and of one module of an audit.
_CALLS_PER_STEP = {"sgd": 40.0, "adam": 70.0}
_CALLS_PER_RESULT = 60.0
_ELEMENTWISE_PER_STEP = {"sgd": 4.0, "adam": 16.0}
_CALLS_PER_MODULE = 120.0


@dataclass(frozen=True)
class WorkEstimate:
    """The cost of one piece of work.

    Attributes
    ----------
    macs : float
        Multiply-adds of the dense kernels.
    calls : float
        numpy calls whose fixed overhead dominates small problems.
    bytes : int
        Largest working set held at once (arrays of the computation, not the input files).
    """

    macs: float
    calls: float
    bytes: int

    @property
    def seconds(self) -> float:
        """Estimated wall time on one core: ``SECONDS_PER_MAC * macs + SECONDS_PER_CALL * calls``."""
        return SECONDS_PER_MAC * self.macs + SECONDS_PER_CALL * self.calls

    def __add__(self, other: "WorkEstimate") -> "WorkEstimate":
        return WorkEstimate(self.macs + other.macs, self.calls + other.calls,
                            max(self.bytes, other.bytes))


def _dims(d_out: object, d_in: object) -> tuple[int, int]:
    return check_int("d_out", d_out, minimum=1), check_int("d_in", d_in, minimum=1)


def _runs(d_out: object, d_in: object, ranks: Sequence[int], optimizer: object,
          steps: object) -> tuple[int, int, list[int], str, int]:
    """The checked arguments every fitting estimate takes: shape, ranks (at least one),
    optimizer and steps."""
    d_out, d_in = _dims(d_out, d_in)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    steps = check_int("steps", steps, minimum=1)
    ranks = [check_int("rank", r, minimum=1) for r in ranks]
    if not ranks:
        raise ConfigError("`ranks` should list at least one rank")
    return d_out, d_in, ranks, optimizer, steps


def _blocks(d: int) -> tuple[int, int]:
    """(number, largest size) of the Haar blocks of one layer of a basis of d > HAAR_MAX rows."""
    nblocks = -(-d // BLOCK)
    return nblocks, -(-d // nblocks)


def basis_cost(d: int) -> WorkEstimate:
    """One random ``d x d`` orthogonal basis formed as :func:`lorarank.synthetic.random_orthogonal`
    builds it.

    Up to :data:`~lorarank.synthetic.HAAR_MAX` rows: a Householder QR of a Gaussian ``d x d``
    matrix and the forming of its Q, ``(4/3) d^3`` MACs in all (``8/3 d^3`` flops, Golub and
    Van Loan). Above: :data:`~lorarank.synthetic.LAYERS` layers of independent Haar blocks of at
    most :data:`~lorarank.synthetic.BLOCK` rows (the same QR per block,
    :func:`basis_draws_cost`), each layer after the first applied to the d x d product so far
    (``d^2 * block`` MACs), plus a d x d pass per layer.
    """
    d = check_int("d", d, minimum=1)
    if d <= HAAR_MAX:
        return WorkEstimate(macs=4.0 / 3.0 * d**3 + 2.0 * d * d, calls=10.0, bytes=8 * 3 * d * d)
    block = _blocks(d)[1]
    draws = basis_draws_cost(d)
    macs = draws.macs + LAYERS * 2.0 * d * d + (LAYERS - 1) * d * d * block
    return WorkEstimate(macs=macs, calls=draws.calls, bytes=8 * 3 * d * d)


def basis_draws_cost(d: int) -> WorkEstimate:
    """The random draws of a basis of d > HAAR_MAX rows: its layers' Haar blocks (a QR each)."""
    d = check_int("d", d, minimum=1)
    nblocks, block = _blocks(d)
    return WorkEstimate(macs=LAYERS * nblocks * 4.0 / 3.0 * block**3,
                        calls=LAYERS * (10.0 + 4.0 * nblocks), bytes=8 * LAYERS * d * block)


def target_cost(d_out: int, d_in: int, *, matrix: bool = True) -> WorkEstimate:
    """Building what a fit uses of a synthetic target (:func:`lorarank.synthetic.make_target`).

    The target is made from its SVD, never decomposed: its spectrum costs nothing next to the
    rest, and its bases are drawn on first use. SGD on the exact target (``matrix=False``)
    steps in the basis where T is diagonal and only moves the initial factors into it
    (charged in :func:`fit_cost`): up to HAAR_MAX columns with the right basis ``Vt``
    (:func:`basis_cost` of d_in), above with its layers applied and never formed (their
    draws, :func:`basis_draws_cost`). Adam and the data mode (``matrix=True``) use ``T``
    itself: both bases and the product ``U[:, :m] diag(sigma) Vt[:m]``, ``d_out * d_in * m``
    MACs with ``m = min(d_out, d_in)``.
    """
    d_out, d_in = _dims(d_out, d_in)
    if not matrix:
        return basis_cost(d_in) if d_in <= HAAR_MAX else basis_draws_cost(d_in)
    m = min(d_out, d_in)
    product = WorkEstimate(macs=float(d_out) * d_in * m, calls=5.0,
                           bytes=8 * (d_out * d_out + d_in * d_in + 2 * d_out * d_in))
    return basis_cost(d_in) + basis_cost(d_out) + product


def fit_cost(d_out: int, d_in: int, ranks: Sequence[int], *, optimizer: str = "sgd",
             steps: int = 2000) -> WorkEstimate:
    """Fitting one LoRA run per entry of ``ranks`` (repeats allowed: a grid's cells).

    Runs are grouped into zero-padded batches exactly as :func:`lorarank.fit.fit_lora_runs`
    groups them; each step of a batch of n runs padded to rank R costs n times the cheaper
    form of the step (:func:`lorarank.fit.macs_per_step`), and every run ends with one dense
    residual ``s B A - T`` (d_out * d_in * r MACs) and a factored SVD; SGD first moves each
    distinct rank's initial ``A`` to the target's basis (``r * d_in^2``, or above HAAR_MAX
    ``r * d_in * LAYERS * block``). Every run is assumed
    to take all ``steps`` (a diverged run stops early: the estimate is an upper bound).

    Parameters
    ----------
    d_out, d_in : int
        Shape of the target.
    ranks : sequence of int
        One rank per run, each >= 1.
    optimizer : {"sgd", "adam"}
    steps : int
        Optimiser steps per run.
    """
    d_out, d_in, ranks, optimizer, steps = _runs(d_out, d_in, ranks, optimizer, steps)
    runs = [(r, 1.0, 1.0) for r in ranks]
    macs = calls = 0.0
    peak = 0
    for group in run_batches(runs, d_out, d_in, optimizer):
        n, rmax = len(group), max(ranks[i] for i in group)
        factors = n * rmax * (d_out + d_in)
        # Products, plus the elementwise updates of the factors (memory-bound, counted as
        # MACs: Adam's moments touch every factor entry about a dozen times per step).
        macs += steps * (n * min(macs_per_step(d_out, d_in, rmax, optimizer))
                         + _ELEMENTWISE_PER_STEP[optimizer] * factors)
        calls += steps * _CALLS_PER_STEP[optimizer]
        # B, A, their gradients (and Adam's two moments each), plus the residual form's R.
        peak = max(peak, 8 * (factors * (6 if optimizer == "adam" else 3) + n * d_out * d_in))
    for r in ranks:
        macs += d_out * d_in * r + 2.0 * r * r * (d_out + d_in) + 10.0 * r**3
        calls += _CALLS_PER_RESULT
    if optimizer == "sgd":
        # Each distinct rank's initial A, moved once to the basis where T is diagonal (A0 Vt^T):
        # a product with Vt, or above HAAR_MAX its layers applied to the rows.
        rows = float(sum(set(ranks)))
        macs += rows * d_in * (d_in if d_in <= HAAR_MAX else LAYERS * _blocks(d_in)[1])
    losses = 8 * len(ranks) * (steps + 1)
    return WorkEstimate(macs=macs, calls=calls, bytes=peak + losses)


def sweep_cost(d_out: int, d_in: int, ranks: Sequence[int], *, optimizer: str = "sgd",
               steps: int = 2000) -> WorkEstimate:
    """A Rank sweep: what the fits use of the target, then one fit per rank (see :func:`fit_cost`)."""
    return target_cost(d_out, d_in, matrix=optimizer != "sgd") + fit_cost(
        d_out, d_in, ranks, optimizer=optimizer, steps=steps)


def stability_cost(d_out: int, d_in: int, ranks: Sequence[int], *, n_lrs: int, n_rules: int,
                   optimizer: str = "sgd", steps: int = 200,
                   data: DataConfig | None = None) -> WorkEstimate:
    """A stability grid: the target, then ``n_rules x len(ranks) x n_lrs`` fits.

    With ``data`` (the data mode) every cell learns from the same pairs
    (:func:`data_fit_cost`), else from the exact target (:func:`fit_cost`).
    """
    n_lrs = check_int("n_lrs", n_lrs, minimum=1)
    n_rules = check_int("n_rules", n_rules, minimum=1)
    cells = [r for r in ranks for _ in range(n_lrs * n_rules)]
    if data is not None:
        return target_cost(d_out, d_in, matrix=True) + data_fit_cost(d_out, d_in, cells, data=data,
                                                        optimizer=optimizer, steps=steps)
    return target_cost(d_out, d_in, matrix=optimizer != "sgd") + fit_cost(
        d_out, d_in, cells, optimizer=optimizer, steps=steps)


def data_fit_cost(d_out: int, d_in: int, ranks: Sequence[int], *, data: DataConfig,
                  optimizer: str = "sgd", steps: int = 2000) -> WorkEstimate:
    """Fitting one data-mode run per entry of ``ranks`` on one set of pairs (:mod:`lorarank.data`).

    The multiply-adds are :func:`lorarank.data.data_macs` (drawing the pairs and their
    moments, the reduced-rank bound, every step of every run, the results), plus the
    elementwise work of each step: the optimiser's update of the factors, and for minibatches
    gathering the batch's pairs. Runs are concatenated in memory-bounded groups
    exactly as :func:`lorarank.data.fit_data_runs` groups them; each step of a batch costs
    the numpy calls of :data:`_CALLS_PER_STEP` and 30 per distinct rank. Every run
    is assumed to take all ``steps``.

    Parameters
    ----------
    d_out, d_in : int
        Shape of the target.
    ranks : sequence of int
        One rank per run, each >= 1.
    data : DataConfig
        Training pairs n, held-out pairs M, batch size.
    optimizer : {"sgd", "adam"}
    steps : int
        Optimiser steps per run.

    Returns
    -------
    WorkEstimate
        ``bytes`` counts the pairs (float64, training and held-out) and the largest batch of
        factors, gradients and per-step arrays.
    """
    d_out, d_in, ranks, optimizer, steps = _runs(d_out, d_in, ranks, optimizer, steps)
    if not isinstance(data, DataConfig):
        raise ConfigError(f"`data` should be a DataConfig, got {type(data).__name__}")
    full, batch = data.full_batch, data.batch

    per_rank = step_values(d_out, d_in, batch, full)
    macs = data_macs(d_out, d_in, ranks, config=data, steps=steps, optimizer=optimizer)
    calls = 0.0
    peak = 0
    # Runs are concatenated along the rank axis (no padding) in groups that fit in memory,
    # exactly as lorarank.data.fit_data_runs groups them; per step a group also makes the
    # small products of each distinct rank.
    for group in rank_groups(ranks, lambda total: total * per_rank <= MAX_STEP_VALUES):
        n, total = len(group), sum(ranks[i] for i in group)
        factors = total * (d_out + d_in)
        gather = 0.0 if full else batch * (d_in + d_out) + 2.0 * n * batch * d_out
        macs += steps * (_ELEMENTWISE_PER_STEP[optimizer] * factors + gather)
        calls += steps * (_CALLS_PER_STEP[optimizer] + 30.0 * len({ranks[i] for i in group}))
        peak = max(peak, 8 * (factors * (6 if optimizer == "adam" else 3) + total * per_rank))
    calls += _CALLS_PER_RESULT * len(ranks) + 40.0
    pairs = 8 * (data.samples + data.heldout) * (d_in + d_out) + 8 * 2 * (d_in * d_in + d_out * d_in)
    return WorkEstimate(macs=macs, calls=calls, bytes=pairs + peak + 8 * len(ranks) * (steps + 1))


def data_sweep_cost(d_out: int, d_in: int, ranks: Sequence[int], *, samples: Sequence[int],
                    label_noise: float = 1.0, batch_size: int | None = None, heldout: int = 1000,
                    optimizer: str = "sgd", steps: int = 2000) -> WorkEstimate:
    """A data-mode Rank sweep: the target, then every rank on each n's pairs, one n at a time."""
    total = target_cost(d_out, d_in, matrix=True)
    if not samples:
        raise ConfigError("`samples` should list at least one number of training pairs")
    for n in samples:
        data = DataConfig(samples=n, label_noise=label_noise, batch_size=batch_size,
                          heldout=heldout)
        total = total + data_fit_cost(d_out, d_in, ranks, data=data, optimizer=optimizer,
                                      steps=steps)
    return total


def factored_svd_cost(d_out: int, d_in: int, rank: int) -> WorkEstimate:
    """The singular values of ``s B A`` from its factors: QR of B and of A^T, SVD of r x r.

    Householder QR of an m x r matrix costs about ``2 m r^2`` flops (taken as MACs), the
    r x r core product r^3 and its SVD about ``10 r^3``.

    A rank at least the smaller side (a full-rank 4096 x 4096 adapter) takes the engine's
    other branch (:func:`lorarank.spectrum.factored_svdvals`): no QR, the product ``B @ A``
    (``d_out d_in r`` MACs) and the singular values of that ``d_out x d_in`` matrix
    (bidiagonalisation, ``2 m n^2 - 2 n^3 / 3`` MACs with ``m >= n``). Counting the QRs there
    overstated a full-rank 4096 upload about six times (minutes shown for ~20 s of work).
    """
    d_out, d_in = _dims(d_out, d_in)
    r = check_int("rank", rank, minimum=1)
    m, n = max(d_out, d_in), min(d_out, d_in)
    if r >= n:
        macs = float(d_out) * d_in * r + 2.0 * m * n * n - 2.0 * n**3 / 3
        return WorkEstimate(macs=macs, calls=_CALLS_PER_MODULE,
                            bytes=8 * (r * (d_out + d_in) + 2 * d_out * d_in))
    macs = 2.0 * r * r * (d_out + d_in) + 11.0 * r**3
    return WorkEstimate(macs=macs, calls=_CALLS_PER_MODULE,
                        bytes=8 * (r * (d_out + d_in) * 2 + 3 * r * r))


def audit_cost(shapes: Sequence[tuple[int, int, int]]) -> WorkEstimate:
    """Auditing (or resizing, or comparing) modules of the given ``(d_out, d_in, r)`` shapes.

    One factored SVD per module (:func:`factored_svd_cost`), plus reading each factor into
    float64 (d_out + d_in) * r values.
    """
    total = WorkEstimate(0.0, 0.0, 0)
    for shape in shapes:
        try:
            d_out, d_in, r = shape
        except (TypeError, ValueError):
            raise ConfigError(f"each module shape should be (d_out, d_in, r), got {shape!r}") from None
        one = factored_svd_cost(d_out, d_in, r)
        total = total + WorkEstimate(one.macs + float(r) * (d_out + d_in), one.calls, one.bytes)
    return total
