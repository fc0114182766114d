"""Rank sweep speed: the article's sweep, and a d = 1024 sweep against the plain numpy loop.

Run: ``python benchmarks/bench_sweep.py [--steps 200] [--d 1024] [--repeat 3] [--no-check]
[--against REV]``.
Prints the figures quoted in docs/benchmarks.md, each with the load average (the machine may be
shared: compare the ratio, which is measured in one run).

- the article's sweep (64 x 64, k = 4, r = 2, 4, 16, 2000 SGD steps, target included), in process;
  with ``--against REV`` also the same sweep of another commit (checked out in a temporary git
  worktree) and of this tree, each in a fresh process, alternating, best and median of 7 each
  (e.g. ``--against f595072~1``, the tree before the SVD-built targets);
- d = 1024, k = 16, ranks 1..64 (seven), SGD, 200 steps: the **whole process**
  ``python -m lorarank sweep ... --json`` (interpreter start, imports, target, fit, output;
  median of ``--repeat``) against the plain per-rank numpy loop in **float32** with numpy's
  default BLAS threads (``R = B@A - T; gB = R@A.T; gA = B.T@R``, per rank, from the same
  initialisation), timed in this process on the same target. Target: >= 3x.
- the results the process printed against the float64 textbook loop
  (:func:`lorarank.fit.fit_lora_reference`, one BLAS thread, not timed): final errors and
  singular values must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorarank.fit import DEFAULT_LR, fit_lora, fit_lora_reference, init_lora  # noqa: E402
from lorarank.spectrum import single_threaded_blas  # noqa: E402
from lorarank.synthetic import make_target  # noqa: E402


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def best_of(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def plain_float32_loop(T: np.ndarray, ranks: list[int], *, lr: float, steps: int) -> None:
    """The loop a user would write: float32, default BLAS threads, one rank after another."""
    T32 = T.astype(np.float32)
    for r in ranks:
        B, A = init_lora(T.shape[0], T.shape[1], r)
        B, A = B.astype(np.float32), A.astype(np.float32)
        for _ in range(steps):
            R = B @ A - T32
            gB = R @ A.T
            gA = B.T @ R
            B -= lr * gB
            A -= lr * gA


ARTICLE = """
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
from lorarank.fit import fit_lora
from lorarank.synthetic import make_target
times = []
for _ in range(7):
    t0 = time.perf_counter()
    fit_lora(make_target(), [2, 4, 16])
    times.append(time.perf_counter() - t0)
print(min(times), statistics.median(times))
"""


def article_against(rev: str) -> None:
    """The article's sweep of ``rev`` and of this tree, in fresh processes, alternating."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            best = {"this tree": [], rev: []}
            for _ in range(2):
                for label, tree in (("this tree", ROOT), (rev, other)):
                    out = subprocess.run([sys.executable, "-c", ARTICLE, str(tree)], cwd=tmp,
                                         capture_output=True, text=True, check=True).stdout.split()
                    best[label].append((float(out[0]), float(out[1])))
            for label, runs in best.items():
                print(f"  {label:>12}: best {min(b for b, _ in runs):.3f} s, median "
                      f"{statistics.median(m for _, m in runs):.3f} s (2 processes x 7 runs)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT,
                           capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the lorarank process (median)")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 oracle comparison")
    ap.add_argument("--against", metavar="REV", help="also time the article's sweep of this commit")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"start: {load()}")

    # 1. The article's sweep: 64 x 64, k = 4, r in {2, 4, 16}, defaults (SGD, 2000 steps).
    def article():
        fit_lora(make_target(), [2, 4, 16])
    best, med = best_of(article, 7)
    print(f"article sweep (64x64, k=4, r=2,4,16, sgd lr {DEFAULT_LR['sgd']}, 2000 steps, "
          f"target included): best {best:.3f} s, median {med:.3f} s  [target <= 0.2 s]")
    if args.against:
        print(f"  against {args.against}, same run ({load()}):")
        article_against(args.against)

    # 2. d x d, seven ranks, SGD, fixed steps: the whole lorarank process against the plain loop.
    ranks = [1, 2, 4, 8, 16, 32, 64]
    argv = [sys.executable, "-m", "lorarank", "sweep", "--d-out", str(args.d), "--d-in", str(args.d),
            "--true-rank", "16", "--ranks", ",".join(map(str, ranks)), "--steps", str(args.steps),
            "--lr", str(args.lr), "--json"]
    print(f"d={args.d} sweep, k=16, ranks {ranks}, sgd lr {args.lr}, {args.steps} steps:")
    print(f"  before: {load()}")
    walls, out = [], ""
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
        out = proc.stdout
    t_proc = statistics.median(walls)
    doc = json.loads(out)
    target = make_target(args.d, args.d, true_rank=16, seed=0)
    T = np.array(target.matrix)
    t0 = time.perf_counter()
    plain_float32_loop(T, ranks, lr=args.lr, steps=args.steps)
    t_plain = time.perf_counter() - t0
    print(f"  after:  {load()}")
    print(f"  lorarank sweep, whole process: {t_proc:.2f} s (median of {args.repeat}: "
          f"{', '.join(f'{w:.2f}' for w in walls)}; its own fit + target report {doc['seconds']:.2f} s)")
    print(f"  plain float32 per-rank numpy loop, default BLAS threads: {t_plain:.2f} s")
    print(f"  ratio: {t_plain / t_proc:.1f}x  [target >= 3x]")

    # 3. The process's numbers against the float64 textbook loop (not timed).
    if args.no_check:
        return
    worst_err = worst_sv = 0.0
    with single_threaded_blas():
        for res in doc["results"]:
            B, A, _ = fit_lora_reference(T, res["rank"], scale=res["scale"], lr=args.lr, steps=args.steps)
            dense = res["scale"] * B @ A
            rel = np.linalg.norm(dense - T) / np.linalg.norm(T)
            sv = np.linalg.svd(dense, compute_uv=False)[: res["rank"]]
            worst_err = max(worst_err, abs(rel - res["rel_err"]) / rel)
            worst_sv = max(worst_sv, float(np.max(np.abs(sv - np.array(res["singular_values"]))) / sv[0]))
    print(f"  same results as the float64 textbook loop: largest relative difference of the final "
          f"error {worst_err:.1e}, of the singular values {worst_sv:.1e} (of sigma_1)")


if __name__ == "__main__":
    main()
