"""Benchmark: ``python -m lorarank audit --finetuned FT --base BASE`` on a Llama-3-8B-shaped layer stack.

Writes a base model and a "full fine-tune" of it with Llama-3-8B's shapes (hidden 4096, kv 1024,
intermediate 14336; q, k, v, o, gate, up, down per layer; bfloat16, one shard per layer with a
``model.safetensors.index.json``, as transformers saves big models), for the largest layer
count asked (default 4 layers: 3.5 GB on disk; a 32-layer stack is 32 GB and only adds time,
see below). Each fine-tuned weight is ``W0 + dW`` with a full-rank ``dW``: a slowly decaying
part of rank 256 (singular values about ``i^-0.5``, like a full fine-tune's) plus a small
Gaussian floor.

1. **The whole process per layer count** (1, 2, 4 layers by default; a shard index naming the
   first L shards): wall time and peak resident memory (``ru_maxrss`` of the child) of
   ``audit --finetuned ... --json``, the least-squares slope of peak RSS and of wall time
   against L. Memory should not grow with L (one module pair at a time): the slope in MB per
   layer is the figure to read.
2. **The randomised method against LAPACK's dense SVD, per module, in this process**: for each
   module type of layer 0, the same ``dW`` (read as the audit reads it) through
   :func:`lorarank.randsvd.top_svd` (top 64, tolerance 1e-6 of sigma_1) and through
   ``np.linalg.svd(dW, compute_uv=False)`` in float64: seconds of each, their ratio, the
   largest difference of the top 64 values over sigma_1 and the bound the method reported.

Usage: ``python benchmarks/bench_finetune.py [--layers 1,2,4] [--max-rank 64]
[--dense q_proj,k_proj,...|none] [--keep DIR]``. The audit runs with ``--max-rank 64``
(energy ranks above 64 are reported as "> 64"; more values cost proportionally more) and
``--no-embeddings`` (the stack has none). Prints the machine's load next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.llama8b import SHAPES  # noqa: E402

#: Rank of the slowly decaying part of each synthetic update.
UPDATE_RANK = 256


def write_layer(folder: Path, layer: int, *, seed: int) -> int:
    """Shard ``layer`` of the base (``folder/base``) and of the fine-tune (``folder/ft``)."""
    rng = np.random.default_rng(seed + layer)
    base, ft = {}, {}
    s = (np.arange(1, UPDATE_RANK + 1) ** -0.5).astype(np.float32)
    for module, (d_out, d_in) in SHAPES.items():
        key = f"model.layers.{layer}.{module}.weight"
        w0 = rng.standard_normal((d_out, d_in), dtype=np.float32) * 0.02
        left = rng.standard_normal((d_out, UPDATE_RANK), dtype=np.float32) / np.sqrt(d_out)
        right = rng.standard_normal((UPDATE_RANK, d_in), dtype=np.float32) / np.sqrt(d_in)
        dw = (left * (0.05 * s)) @ right
        dw += rng.standard_normal((d_out, d_in), dtype=np.float32) * 1e-5
        base[key] = w0.astype(ml_dtypes.bfloat16)
        ft[key] = (w0 + dw).astype(ml_dtypes.bfloat16)
    name = f"model-{layer + 1:05d}.safetensors"
    for which, tensors in (("base", base), ("ft", ft)):
        (folder / which).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / which / name), metadata={"format": "pt"})
    return sum((folder / w / name).stat().st_size for w in ("base", "ft"))


def stack(folder: Path, layers: int) -> tuple[Path, Path]:
    """Folders holding the first ``layers`` shards of each model (symlinks) and their index."""
    out = []
    for which in ("base", "ft"):
        target = folder / f"{which}-{layers}"
        target.mkdir(exist_ok=True)
        weight_map = {}
        for layer in range(layers):
            name = f"model-{layer + 1:05d}.safetensors"
            link = target / name
            if not link.exists():
                link.symlink_to(folder / which / name)
            for module in SHAPES:
                weight_map[f"model.layers.{layer}.{module}.weight"] = name
        (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        out.append(target)
    return out[1], out[0]


def run_process(command: list[str]) -> dict:
    """One whole process in a wrapper reporting its wall time, CPU time and peak RSS."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True); w = time.perf_counter() - t; "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "sys.stderr.write(p.stderr.decode(errors='replace')[-2000:]); "
               "sys.stdout.write(json.dumps({'rc': p.returncode, 'wall': w, 'rss': u.ru_maxrss, "
               "'cpu': u.ru_utime + u.ru_stime, 'out': p.stdout.decode(errors='replace')}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    doc = json.loads(proc.stdout)
    if doc["rc"] != 0:
        raise SystemExit(f"the audit failed: {proc.stderr.decode()[-800:]}")
    return doc


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs (0 for a single point)."""
    if len(xs) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def randomized_vs_dense(ft: Path, base: Path, names: list[str]):
    """Per module type of layer 0: top_svd against np.linalg.svd on the same dW, same process
    (yields one row per module as soon as it is measured)."""
    from lorarank.finetune import module_update, pair_models
    from lorarank.randsvd import top_svd
    from lorarank.weights import open_model

    fm, bm = open_model(ft), open_model(base)
    for pair in pair_models(fm, bm).pairs:
        if pair.layer != 0 or pair.module_type not in names:
            continue
        dW, _ = module_update(pair, fm, bm)
        t = time.perf_counter()
        got = top_svd(dW, 64, method="randomized")
        fast = time.perf_counter() - t
        t = time.perf_counter()
        exact = np.linalg.svd(dW.astype(np.float64), compute_uv=False)
        slow = time.perf_counter() - t
        s1 = float(exact[0])
        yield {"module": pair.module_type, "shape": pair.shape, "randomized_s": fast, "dense_s": slow,
               "iterations": got.iterations, "max_err": float(np.max(np.abs(got.S - exact[:64]))) / s1,
               "bound": got.max_bound / s1, "load": os.getloadavg()[0]}
        del dW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1,2,4", help="layer counts, comma-separated (default 1,2,4)")
    parser.add_argument("--max-rank", type=int, default=64, help="audit --max-rank (default 64)")
    parser.add_argument("--dense", default=",".join(m.split(".")[-1] for m in SHAPES),
                        help="module types compared with a dense SVD (default all seven; 'none' to skip)")
    parser.add_argument("--keep", default=None, help="write the models here and keep them")
    args = parser.parse_args()
    counts = sorted({int(x) for x in args.layers.split(",") if x.strip()})
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lorarank-bench-ft-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}, numpy {np.__version__}; {time.strftime('%Y-%m-%d')}")
    try:
        t = time.perf_counter()
        size = 0
        for layer in range(max(counts)):
            if not (folder / "ft" / f"model-{layer + 1:05d}.safetensors").exists():
                size += write_layer(folder, layer, seed=0)
        print(f"wrote {max(counts)} Llama-3-8B-shaped layers of base + fine-tune (bfloat16, "
              f"{size / 1e9:.2f} GB new) in {time.perf_counter() - t:.0f} s")
        rows = []
        for layers in counts:
            ft, base = stack(folder, layers)
            doc = run_process([sys.executable, "-m", "lorarank", "audit", "--finetuned", str(ft), "--base",
                               str(base), "--json", "--max-rank", str(args.max_rank), "--no-embeddings"])
            report = json.loads(doc["out"])
            rss = doc["rss"] / 1024
            rows.append((layers, doc["wall"], rss))
            k50 = [m["energy_rank"]["0.5"] for m in report["modules"]]
            print(f"{layers:>3} layers ({7 * layers:>3} modules): wall {doc['wall']:7.1f} s, CPU {doc['cpu']:7.1f} s, "
                  f"peak RSS {rss:6.0f} MB; k(0.5) known in {sum(k is not None for k in k50)} of "
                  f"{len(k50)} modules; load {os.getloadavg()[0]:.1f}")
        if len(rows) > 1:
            print(f"peak RSS slope: {slope([r[0] for r in rows], [r[2] for r in rows]):+.1f} MB per layer; "
                  f"wall slope: {slope([r[0] for r in rows], [r[1] for r in rows]):.1f} s per layer "
                  f"(a 32-layer stack: about {rows[0][1] + 31 * slope([r[0] for r in rows], [r[1] for r in rows]):.0f} s)")
        names = [] if args.dense == "none" else [n.strip() for n in args.dense.split(",") if n.strip()]
        if names:
            ft, base = stack(folder, 1)
            print()
            print(f"{'module':<10} {'d_out x d_in':>13} {'randomized':>11} {'passes':>6} {'dense SVD':>10} "
                  f"{'ratio':>6} {'max err/s1':>11} {'bound/s1':>9} {'load':>5}")
            for r in randomized_vs_dense(ft, base, names):
                shape = f"{r['shape'][0]} x {r['shape'][1]}"
                print(f"{r['module']:<10} {shape:>13} {r['randomized_s']:>10.2f}s {r['iterations']:>6} "
                      f"{r['dense_s']:>9.2f}s {r['dense_s'] / r['randomized_s']:>5.1f}x {r['max_err']:>11.1e} "
                      f"{r['bound']:>9.1e} {r['load']:>5.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
