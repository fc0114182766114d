"""Resize speed: an SDXL-sized kohya LoRA resized by the CLI, its phases, and another commit.

Writes a kohya-format LoRA with SDXL UNet-like module shapes (``--modules`` 700 by default:
640 / 1280-wide attention, 2048-wide cross-attention inputs, 5120 / 10240-wide feed-forward; r =
32, float16, with a trained-looking decaying spectrum and kohya ``ss_*`` metadata), then:

- the whole process ``python -m lorarank resize FILE --rank 8 -o OUT`` and ``--sv-fro 0.9``
  (median of ``--runs``, wall, CPU and peak RSS of the child), alternating with the same commands
  of ``--against REV`` (checked out in a temporary git worktree) when given;
- in this process: the preview (every module's spectrum and plan) and the write (the new factors
  formed and serialised), and the largest number of BLAS threads seen while the factors were
  formed (1: the one-BLAS-thread guard holds; threads spinning on busy shared cores made this
  phase 60-73 s for 2.4 s of work).

Usage: ``python benchmarks/bench_resize.py [--modules 700] [--runs 3] [--against REV]``.
Prints the load average: on a shared machine compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (d_out, d_in) of SDXL UNet LoRA targets (attention q/k/v/out, cross-attention k/v from the
#: 2048-wide text states, feed-forward in/out, projections), cycled over the modules.
SHAPES = [(640, 640), (640, 640), (640, 2048), (640, 2048), (640, 640), (5120, 640), (640, 2560),
          (1280, 1280), (1280, 1280), (1280, 2048), (1280, 2048), (1280, 1280), (10240, 1280),
          (1280, 5120), (640, 640), (1280, 1280)]
RANK = 32


def write_kohya(path: Path, modules: int, seed: int = 0) -> int:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    decay = np.geomspace(1.0, 0.01, RANK)
    tensors = {}
    for i in range(modules):
        d_out, d_in = SHAPES[i % len(SHAPES)]
        name = f"lora_unet_block_{i // len(SHAPES)}_module_{i % len(SHAPES)}"
        tensors[name + ".lora_down.weight"] = (rng.standard_normal((RANK, d_in)) / np.sqrt(d_in)
                                               * decay[:, None]).astype(np.float16)
        tensors[name + ".lora_up.weight"] = (rng.standard_normal((d_out, RANK)) * 0.02).astype(np.float16)
        tensors[name + ".alpha"] = np.array(16.0, dtype=np.float16)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": "16.0",
            "ss_base_model_version": "sdxl_base_v1-0", "ss_training_comment": "benchmark",
            "sshs_model_hash": "x", "sshs_legacy_hash": "x"}
    save_file(tensors, str(path), metadata=meta)
    return path.stat().st_size


def run_process(tree: Path, args: list[str]) -> dict:
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True); w = time.perf_counter() - t; "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "sys.stdout.write(json.dumps({'rc': p.returncode, 'wall': w, 'rss': u.ru_maxrss / 1024, "
               "'cpu': u.ru_utime + u.ru_stime, 'err': p.stderr.decode(errors='replace')[-400:]}))")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "lorarank", *args],
                         cwd=str(tree), capture_output=True, text=True)
    doc = json.loads(out.stdout)
    if doc["rc"] != 0:
        raise SystemExit(f"{' '.join(args[:3])} in {tree} failed: {doc['err']}")
    return doc


def phases(path: Path) -> None:
    from threadpoolctl import threadpool_info

    from lorarank.adapters import LazyArray, adapter_files, load_adapter
    from lorarank.resize import resize_adapter

    adapter = load_adapter(path)
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = resize_adapter(adapter, rank=8)
    t1, c1 = time.perf_counter(), time.process_time()
    seen = []
    probe = result.adapter.modules[0]
    original = probe.A

    def spy():
        seen.append(max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1))
        return np.asarray(original)

    modules = [probe.__class__(**{**probe.__dict__, "A": LazyArray(spy, original.shape, original.dtype)}),
               *result.adapter.modules[1:]]
    files = adapter_files(result.adapter.__class__(**{**result.adapter.__dict__, "modules": modules}))
    t2, c2 = time.perf_counter(), time.process_time()
    size = sum(len(b) for b in files.values())
    print(f"in process: preview (spectra + plan) {t1 - t0:.2f} s wall / {c1 - c0:.2f} s CPU; write "
          f"(factors formed + serialised, {size / 1e6:.1f} MB) {t2 - t1:.2f} s wall / {c2 - c1:.2f} s CPU; "
          f"BLAS threads while the factors were formed: {max(seen)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", type=int, default=700)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", metavar="REV", help="also time the same commands of this commit")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, numpy {np.__version__}; "
          f"load {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="lorarank-resize-") as tmp:
        tmp = Path(tmp)
        src = tmp / "sdxl_r32.safetensors"
        size = write_kohya(src, args.modules)
        print(f"wrote a kohya LoRA: {args.modules} modules, r = {RANK}, float16, {size / 1e6:.1f} MB")
        trees = {"this tree": ROOT}
        if args.against:
            other = tmp / "against"
            subprocess.run(["git", "worktree", "add", "--detach", str(other), args.against], cwd=ROOT,
                           check=True, capture_output=True)
            trees[args.against] = other
        try:
            for label, cmd in (("--rank 8", ["--rank", "8"]), ("--sv-fro 0.9", ["--sv-fro", "0.9"])):
                runs: dict[str, list[dict]] = {name: [] for name in trees}
                for i in range(args.runs):
                    for name, tree in trees.items():
                        if name != "this tree" and cmd[0] == "--sv-fro":
                            continue  # older commits have no kohya rule options
                        out = tmp / f"out-{len(runs[name])}-{abs(hash(name))}.safetensors"
                        runs[name].append(run_process(tree, ["resize", str(src), *cmd, "-o", str(out),
                                                             "--force"]))
                for name, docs in runs.items():
                    if not docs:
                        continue
                    print(f"`resize {label}` ({name}), {len(docs)} runs: wall median "
                          f"{statistics.median(d['wall'] for d in docs):.2f} s, CPU median "
                          f"{statistics.median(d['cpu'] for d in docs):.2f} s, peak RSS "
                          f"{max(d['rss'] for d in docs):.0f} MB")
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "against")], cwd=ROOT,
                               capture_output=True)
        phases(src)
        print(f"load after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
