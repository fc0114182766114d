"""Data-mode speed: d = 1024, n = 4096, seven ranks, against the textbook per-rank loop.

Run: ``python benchmarks/bench_data.py [--d 1024] [--n 4096] [--steps 50] [--batch 256]``.
Prints figures quoted in docs/benchmarks.md, with the load average (the machine is shared). The
baseline is :func:`lorarank.data.fit_data_reference`, the plain per-rank minibatch loop on the
pairs themselves (``P = X_b A^T; R = s P B^T - Y_b; gB = s/b R^T P; gA = s/b (R B)^T X_b``), from
the same initialisation and minibatch order, in the same process; the results must agree.
Both run with one BLAS thread (lorarank's fit always does: on a busy shared machine OpenBLAS's
spinning threads cost ~10x). lorarank's time includes everything its fit reports beyond the loop:
the reduced-rank bound (a Cholesky factor of ``X^T X / n``, a triangular solve and the
eigenvalues of a d x d Gram matrix), spectra and final losses. Both the full-batch case
(lorarank steps on the data's moments) and a minibatch case (lorarank concatenates the ranks
and steps in Gram form, four large products per step for all ranks) are timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorarank.data import DataConfig, fit_data, fit_data_reference, make_dataset  # noqa: E402
from lorarank.fit import lora_scale  # noqa: E402
from lorarank.spectrum import single_threaded_blas  # noqa: E402
from lorarank.synthetic import make_target  # noqa: E402

from bench_sweep import machine  # noqa: E402


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def compare(target, ranks, cfg: DataConfig, *, lr: float, steps: int) -> None:
    ds = make_dataset(target, cfg)
    print(f"  before: {load()}")
    t0 = time.perf_counter()
    fast = fit_data(target, ranks, data=cfg, dataset=ds, lr=lr, steps=steps)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    worst = 0.0
    with single_threaded_blas():  # the same BLAS conditions as lorarank's fit
        for res in fast:
            B, A, loss = fit_data_reference(ds.X, ds.Y, res.rank, scale=lora_scale("alpha-eq-r", res.rank),
                                            lr=lr, steps=steps, batch_size=cfg.batch_size)
            worst = max(worst, float(np.max(np.abs(loss - res.loss) / loss[0])))
    t_loop = time.perf_counter() - t0
    print(f"  after:  {load()}")
    batch = "full batch" if cfg.full_batch else f"batch {cfg.batch}"
    print(f"  {batch}: lorarank {t_fast:.2f} s, plain loop {t_loop:.2f} s, ratio {t_loop / t_fast:.1f}x "
          f"[target >= 3x]; largest loss-curve difference {worst:.1e} of the start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.002)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    ranks = [1, 2, 4, 8, 16, 32, 64]
    target = make_target(args.d, args.d, true_rank=16, seed=0)
    print(f"data mode {args.d} x {args.d}, n = {args.n} pairs, ranks {ranks}, sgd lr {args.lr}, "
          f"{args.steps} steps (data drawn once, outside the timings)")
    compare(target, ranks, DataConfig(samples=args.n, heldout=256), lr=args.lr, steps=args.steps)
    compare(target, ranks, DataConfig(samples=args.n, heldout=256, batch_size=args.batch), lr=args.lr,
            steps=args.steps)


if __name__ == "__main__":
    main()
