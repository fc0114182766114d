"""Calibrate the work estimates of ``lorarank.cost`` against measured wall time.

Run: ``python benchmarks/bench_cost.py [--quick]``. For a spread of sweeps, stability grids
and factored SVDs (small problems where per-call overhead dominates, large ones where BLAS
does), it measures the engine's wall and CPU time and prints the MACs and calls the model counts,
the least-squares fit of ``seconds = a * macs + b * calls`` (the constants to put in
``lorarank/cost.py``) and, per case, estimate / measured with the constants in use. A ratio
above 1 means the server asks (or refuses) a little early; far below 1 would let a long run
start unasked. Report ``uptime`` with the figures: on a loaded 2-core machine both drift.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorarank import cost  # noqa: E402
from lorarank.data import DataConfig, fit_data  # noqa: E402
from lorarank.fit import fit_lora  # noqa: E402
from lorarank.spectrum import factored_svdvals  # noqa: E402
from lorarank.stability import run_stability  # noqa: E402
from lorarank.synthetic import make_target  # noqa: E402


def sweep_case(d: int, ranks: list[int], optimizer: str, steps: int):
    def run() -> None:
        target = make_target(d, d, true_rank=min(4, d), seed=0)
        fit_lora(target, ranks, optimizer=optimizer, steps=steps)
    return (f"sweep d={d} r={ranks} {optimizer} {steps} steps",
            cost.sweep_cost(d, d, ranks, optimizer=optimizer, steps=steps), run)


def grid_case(d: int, ranks: list[int], n_lrs: int, steps: int, optimizer: str = "sgd"):
    lrs = [0.001 * 3**i for i in range(n_lrs)]
    def run() -> None:
        target = make_target(d, d, true_rank=min(4, d), seed=0)
        run_stability(target, ranks=ranks, lrs=lrs, optimizer=optimizer, steps=steps)
    return (f"grid d={d} r={ranks} x {n_lrs} lrs x 4 rules, {optimizer} {steps} steps",
            cost.stability_cost(d, d, ranks, n_lrs=n_lrs, n_rules=4, optimizer=optimizer,
                                steps=steps), run)


def data_case(d: int, ranks: list[int], samples: list[int], optimizer: str, steps: int,
              batch_size: int | None = None):
    def run() -> None:
        target = make_target(d, d, true_rank=min(4, d), seed=0)
        for n in samples:
            fit_data(target, ranks, data=DataConfig(samples=n, batch_size=batch_size),
                     optimizer=optimizer, steps=steps)
    batch = "full batch" if batch_size is None else f"batch {batch_size}"
    return (f"data d={d} r={ranks} n={samples} {batch} {optimizer} {steps}",
            cost.data_sweep_cost(d, d, ranks, samples=samples, batch_size=batch_size,
                                 optimizer=optimizer, steps=steps), run)


def data_grid_case(d: int, ranks: list[int], n_lrs: int, samples: int, steps: int,
                   batch_size: int | None = None):
    lrs = [0.001 * 3**i for i in range(n_lrs)]
    data = DataConfig(samples=samples, batch_size=batch_size)
    def run() -> None:
        target = make_target(d, d, true_rank=min(4, d), seed=0)
        run_stability(target, ranks=ranks, lrs=lrs, steps=steps, data=data)
    return (f"data grid d={d} r={ranks} x {n_lrs} lrs x 4 rules n={samples} b={batch_size}",
            cost.stability_cost(d, d, ranks, n_lrs=n_lrs, n_rules=4, steps=steps, data=data), run)


def svd_case(d_out: int, d_in: int, r: int, modules: int):
    rng = np.random.default_rng(0)
    factors = [(rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in)))
               for _ in range(modules)]
    def run() -> None:
        for B, A in factors:
            factored_svdvals(B, A, scale=1.0)
    return (f"{modules} factored SVDs {d_out}x{d_in} r={r}",
            cost.audit_cost([(d_out, d_in, r)] * modules), run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    args = parser.parse_args()
    cases = [
        sweep_case(64, [2, 4, 16], "sgd", 2000),
        sweep_case(256, [4, 32, 128], "sgd", 500),
        sweep_case(256, [8, 64], "adam", 300),
        grid_case(64, [4, 8, 32], 3, 200),
        svd_case(4096, 4096, 16, 8),
        svd_case(64, 64, 8, 2000),
        data_case(64, [2, 4, 16], [128, 512, 2048], "sgd", 2000),
        data_case(64, [2, 4, 16], [512], "adam", 1000, batch_size=32),
        data_case(256, [8, 64], [2048], "sgd", 300, batch_size=256),
        data_grid_case(64, [4, 8, 32], 3, 256, 200),
    ]
    if not args.quick:
        cases += [
            sweep_case(1024, [4, 256], "sgd", 100),
            sweep_case(512, [64], "adam", 100),
            grid_case(256, [4, 8, 32, 128], 3, 200),
            svd_case(1024, 1024, 512, 2),
            data_case(512, [16, 128], [8192], "adam", 200),
            data_case(256, [4, 32], [4096], "sgd", 500, batch_size=64),
        ]
    rows = []
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average), {os.cpu_count()} cores")
    print(f"{'case':62} {'macs':>10} {'calls':>9} {'measured s':>10} {'CPU s':>7} {'estimate s':>10} "
          f"{'est/meas':>8} {'est/CPU':>7}")
    for label, est, run in cases:
        run()  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        run()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu  # one BLAS thread: about the quiet machine's wall time
        rows.append((est.macs, est.calls, seconds))
        print(f"{label:62} {est.macs:10.3g} {est.calls:9.3g} {seconds:10.3f} {cpu:7.3f} "
              f"{est.seconds:10.3f} {est.seconds / seconds:8.2f} {est.seconds / cpu:7.2f}")
    X = np.array([[m, c] for m, c, _ in rows])
    y = np.array([s for _, _, s in rows])
    # Relative least squares: each case weighs the same whatever its length.
    coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones_like(y), rcond=None)
    print(f"fit: seconds = {coef[0]:.3g} * macs + {coef[1]:.3g} * calls "
          f"(in use: {cost.SECONDS_PER_MAC:.3g}, {cost.SECONDS_PER_CALL:.3g})")


if __name__ == "__main__":
    main()
