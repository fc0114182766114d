"""Benchmark: `python -m lorarank audit --series DIR --json` on 50 Llama-3-8B-shaped checkpoints.

Writes N checkpoint folders (``checkpoint-<step>``, each a PEFT adapter of 32 layers x q, k, v,
o, gate, up, down with Llama-3-8B shapes, r = 16, bfloat16, about 84 MB, with a
``trainer_state.json``; the factors drift from checkpoint to checkpoint so no two files are
equal) to a temporary folder. Then, in the same run:

1. the single-adapter audit process, ``audit CHECKPOINT --json``, several times (the baseline);
2. ``audit --series`` processes over the first 5 and N checkpoints (``--sizes``; folders of
   symbolic links), each timed alone, with its own peak resident memory (``wait4``'s
   ``ru_maxrss`` of that child).

About 2 minutes on a quiet 2-core machine with the defaults.

Targets (issue 11): the series of 50 in <= 50 x the time of one audit (no repeated work beyond
reading each checkpoint), and peak memory independent of the number of checkpoints: it prints
the peak RSS growth per checkpoint from the smallest size to N (each checkpoint's audit is
written out as it is computed; what stays is its series fields, ~40 kB here).

Usage: ``python benchmarks/bench_series.py [--checkpoints 50] [--runs 3] [--sizes 5,50]``
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

import ml_dtypes
import numpy as np
from safetensors.numpy import save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.llama8b import CONFIG, LAYERS, RANK, SHAPES, module_name  # noqa: E402


def write_run(root: Path, n: int, every: int = 100) -> tuple[list[Path], float]:
    """n checkpoint folders whose factors drift; returns (folders, MB of one weights file).

    The first file is A0, B0 serialised once by safetensors. Checkpoint t (1..n) is the one
    before it with, in every module, row j = t mod r of A set to A0[j] + t dA[j] and column j
    of B set to (t / n) B0[:, j]: the bytes are patched in place and written, so no two files
    are equal and the spectra move over steps, while a checkpoint costs one file write
    (recomputing and serialising every factor made writing 50 checkpoints take minutes).
    """
    rng = np.random.default_rng(0)
    decay = np.geomspace(1.0, 0.02, RANK).astype(np.float32)
    base, tensors = {}, {}
    for layer in range(LAYERS):
        for module, (d_out, d_in) in SHAPES.items():
            name = module_name(layer, module)
            a0 = rng.standard_normal((RANK, d_in), dtype=np.float32) / np.sqrt(d_in)
            da = rng.standard_normal((RANK, d_in), dtype=np.float32) * (0.05 / np.sqrt(d_in)) * decay[:, None]
            b0 = rng.standard_normal((d_out, RANK), dtype=np.float32) * 0.01 * decay
            base[name] = (a0, da, b0)
            tensors[name + ".lora_A.weight"] = a0.astype(ml_dtypes.bfloat16)
            tensors[name + ".lora_B.weight"] = b0.astype(ml_dtypes.bfloat16)
    data = bytearray(save(tensors, metadata={"format": "pt"}))
    del tensors
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])

    def view(key: str) -> np.ndarray:  # the tensor's bf16 bits inside ``data``, writable
        start, end = header[key]["data_offsets"]
        return np.frombuffer(data, dtype=np.uint16, count=(end - start) // 2,
                             offset=8 + header_len + start).reshape(header[key]["shape"])

    views = {name: (view(name + ".lora_A.weight"), view(name + ".lora_B.weight")) for name in base}
    folders = []
    for t in range(1, n + 1):
        folder = root / f"checkpoint-{t * every}"
        folder.mkdir()
        j = t % RANK
        for name, (a0, da, b0) in base.items():
            a_bits, b_bits = views[name]
            a_bits[j] = (a0[j] + t * da[j]).astype(ml_dtypes.bfloat16).view(np.uint16)
            b_bits[:, j] = (b0[:, j] * (t / n)).astype(ml_dtypes.bfloat16).view(np.uint16)
        (folder / "adapter_model.safetensors").write_bytes(data)
        (folder / "adapter_config.json").write_text(json.dumps(CONFIG))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": t * every}))
        folders.append(folder)
    return folders, len(data) / 1e6


# Runs the lorarank child and reports its rusage. The wrapper is small when it forks, so the
# child's ru_maxrss is its own peak: ``ru_maxrss`` counts the pages a child inherits at fork,
# and this benchmark's parent holds the checkpoints it just wrote (about 400 MB more).
_WRAPPER = ("import json, os, subprocess, sys, time; t = time.perf_counter(); "
            "out = open(sys.argv[1], 'wb'); "
            "p = subprocess.Popen(sys.argv[2:], stdout=out, stderr=subprocess.PIPE); "
            "err = p.stderr.read(); _, status, u = os.wait4(p.pid, 0); "
            "sys.stderr.write(err.decode(errors='replace')); "
            "print(json.dumps({'rc': os.waitstatus_to_exitcode(status), 'wall': time.perf_counter() - t, "
            "'cpu': u.ru_utime + u.ru_stime, 'rss': u.ru_maxrss}))")


def run_child(args: list[str]) -> tuple[float, float, float, bytes]:
    """(wall s, CPU s, peak RSS MB, stdout) of one `python -m lorarank ...` child."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out_path = Path(tempfile.mkstemp(prefix="lorarank-bench-out-")[1])
    try:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(out_path), sys.executable, "-m", "lorarank",
                               *args], capture_output=True, env=env, cwd=str(ROOT))
        doc = json.loads(proc.stdout)
        if doc["rc"] != 0:
            raise SystemExit(f"`lorarank {' '.join(args)}` failed: {proc.stderr.decode().strip()[-500:]}")
        return doc["wall"], doc["cpu"], doc["rss"] / 1024, out_path.read_bytes()
    finally:
        out_path.unlink()


def subset(root: Path, folders: list[Path], n: int) -> Path:
    """A run folder holding links to the first n checkpoints."""
    run = root / f"run{n}"
    run.mkdir()
    for folder in folders[:n]:
        (run / folder.name).symlink_to(folder, target_is_directory=True)
    return run


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="runs of the single audit (median kept)")
    parser.add_argument("--sizes", default="5",
                        help="series lengths timed besides --checkpoints itself, comma-separated "
                             "(default %(default)s; e.g. 5,10,25)")
    args = parser.parse_args()
    n = args.checkpoints
    start = time.perf_counter()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, numpy {np.__version__}; "
          f"load average (1, 5, 15 min) at start: {load()}")
    with tempfile.TemporaryDirectory(prefix="lorarank-bench-series-") as tmp:
        root = Path(tmp)
        (root / "all").mkdir()
        t0 = time.perf_counter()
        folders, mb = write_run(root / "all", n)
        print(f"wrote {n} checkpoints of {LAYERS} layers x {len(SHAPES)} modules, r = {RANK}, bfloat16, "
              f"{mb:.1f} MB each, in {time.perf_counter() - t0:.0f} s")
        singles = [run_child(["audit", str(folders[-1]), "--json"]) for _ in range(args.runs)]
        one_wall = statistics.median(s[0] for s in singles)
        one_cpu = statistics.median(s[1] for s in singles)
        one_rss = max(s[2] for s in singles)
        print(f"one checkpoint, `audit DIR --json`, {args.runs} runs: wall median {one_wall:.3f} s, "
              f"CPU {one_cpu:.3f} s, peak RSS {one_rss:.0f} MB   (load {load()})")
        print()
        print(f"{'checkpoints':>11} | {'wall s':>7} | {'CPU s':>7} | {'wall / one':>10} | {'CPU / one':>9} | "
              f"{'CPU per ckpt':>12} | {'peak RSS MB':>11} | load (1, 5, 15 min)")
        sizes = sorted({k for k in (*map(int, args.sizes.split(",")), n) if 0 < k <= n})
        figures = {}
        for k in sizes:
            run = subset(root, folders, k)
            wall, cpu, rss, out = run_child(["audit", "--series", str(run), "--json"])
            doc = json.loads(out)
            assert len(doc["checkpoints"]) == k and len(doc["series"]["modules"]) == LAYERS * len(SHAPES)
            print(f"{k:>11} | {wall:>7.2f} | {cpu:>7.2f} | {wall / one_wall:>9.1f}x | {cpu / one_cpu:>8.1f}x | "
                  f"{cpu / k:>10.3f} s | {rss:>11.0f} | {load()}")
            figures[k] = (wall, cpu, rss)
        print()
        small = sizes[0]
        growth = figures[n][2] - figures[small][2]
        per = growth / (n - small) if n > small else 0.0
        print(f"{n} checkpoints: {figures[n][0] / one_wall:.1f}x one audit's wall time, "
              f"{figures[n][1] / one_cpu:.1f}x its CPU time; peak RSS {growth:+.1f} MB from {small} to {n} "
              f"checkpoints ({per * 1024:+.0f} KiB per checkpoint; one checkpoint's file is {mb:.1f} MB); "
              f"whole benchmark {time.perf_counter() - start:.0f} s")
        print(f"targets: {n} checkpoints in <= {n}x one audit's time; peak RSS flat in the number of "
              f"checkpoints (per-checkpoint summaries only).")


if __name__ == "__main__":
    main()
