"""Seconds for the alpha/r stability grid: the page's default grid and the CLI's.

Prints, for each grid, the wall time of ``run_stability`` (best of ``--repeat``) beside a plain
per-cell numpy loop doing the same cells in the same process (the textbook step with one dense
residual ``s B A - T`` per step, stopping at divergence by the same rule), and the ratio.

Run from the repository root: ``python benchmarks/bench_stability.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from lorarank.fit import SCALING_RULES, init_lora, lora_scale
from lorarank.stability import DEFAULT_LRS, DEFAULT_RANKS, DEFAULT_STEPS, run_stability
from lorarank.synthetic import make_target

GRIDS = {
    # the page's default grid and `lorarank stability`'s engine defaults (d = 64)
    "page default (d=64)": dict(d=64, ranks=DEFAULT_RANKS, lrs=DEFAULT_LRS, steps=DEFAULT_STEPS),
    # `python -m lorarank stability` with no options (the CLI's target is d = 256)
    "CLI default (d=256)": dict(d=256, ranks=(4, 8, 32, 128), lrs=(0.003, 0.01, 0.03),
                                steps=DEFAULT_STEPS),
}


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _plain_cell(T: np.ndarray, rank: int, scale: float, optimizer: str, lr: float,
                steps: int, factor: float = 1e4) -> None:
    """One cell the textbook way: dense residual, SGD or Adam, stop once the loss blows up."""
    B, A = init_lora(T.shape[0], T.shape[1], rank)
    mB, vB, mA, vA = np.zeros_like(B), np.zeros_like(B), np.zeros_like(A), np.zeros_like(A)
    limit = factor * 0.5 * float(np.sum(T * T))
    for t in range(steps + 1):
        R = scale * (B @ A) - T
        loss = 0.5 * float(np.sum(R * R))
        if not np.isfinite(loss) or loss > limit or t == steps:
            return
        gB, gA = scale * (R @ A.T), scale * (B.T @ R)
        if optimizer == "sgd":
            B -= lr * gB
            A -= lr * gA
            continue
        c1, c2 = 1 - 0.9 ** (t + 1), 1 - 0.999 ** (t + 1)
        for p, g, m, v in ((B, gB, mB, vB), (A, gA, mA, vA)):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def _baseline(target, ranks, lrs, steps, optimizer, alpha=16.0) -> None:
    with np.errstate(all="ignore"):
        for rule in SCALING_RULES:
            for lr in lrs:
                for r in ranks:
                    _plain_cell(target.matrix, r, lora_scale(rule, r, alpha=alpha), optimizer,
                                lr, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}")
    for name, g in GRIDS.items():
        target = make_target(g["d"], g["d"])
        cells = len(SCALING_RULES) * len(g["ranks"]) * len(g["lrs"])
        for optimizer in ("sgd", "adam"):
            fast = _best(lambda: run_stability(target, ranks=g["ranks"], lrs=g["lrs"],
                                               steps=g["steps"], optimizer=optimizer), args.repeat)
            line = (f"{name:<20} {optimizer:<4} {cells} cells x {g['steps']} steps: "
                    f"run_stability {fast:6.2f} s")
            if not args.no_baseline:
                slow = _best(lambda: _baseline(target, g["ranks"], g["lrs"], g["steps"], optimizer), 1)
                line += f" | plain per-cell loop {slow:6.2f} s | {slow / fast:4.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
