"""Benchmark: `python -m lorarank audit DIR --json` on a Llama-3-8B-shaped PEFT adapter.

Writes a PEFT folder (32 layers x q,k,v,o,gate,up,down with Llama-3-8B shapes: hidden 4096,
kv 1024, intermediate 14336; r = 16; bfloat16; about 84 MB) to a temporary folder, then runs
the whole audit *process* several times and prints its wall time and peak resident memory
(``ru_maxrss`` of the finished children), alternating with Gradience when it is installed. Beside it, the dense approach (form ``scale * B @ A``,
then ``np.linalg.svd``) on a few modules, against the factored SVD on the same modules, in the
same process. Targets (PRODUCT.md): <= 1.0 s wall, <= 300 MB peak for the whole process.

The baseline: Gradience 0.11 (``gradience audit --peft-dir DIR --json``, torch + safetensors;
its per-module spectrum is an eigen-decomposition of the r x r Gram matrices) on the same
file, in the same run, when it is installed (``pip install gradience==0.11.0``; it needs torch:
install ``torch==2.13.0`` first so pip does not fetch a CUDA build). Issue 8's target: the
lorarank process >= 4x faster, peak <= 300 MB.

Then the same shapes as PEFT LoHa (``LoHaConfig``, r = 4: the exact factorisation has inner
dimension r^2 = 16, the LoRA's r) and LoKr (``LoKrConfig``, r = 16, PEFT's factorisation of each
dimension into the two closest factors, full ``lokr_w1``), audited by the same process.

Usage: ``python benchmarks/bench_audit.py [--runs 5] [--dense q_proj,k_proj] [--no-gradience]
[--gradience /path/to/venv/bin/gradience]
[--no-families]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
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

from lorarank.adapters import LoraModule  # noqa: E402
from lorarank.audit import module_spectrum  # noqa: E402
from lorarank.spectrum import single_threaded_blas  # noqa: E402

from benchmarks.llama8b import ALPHA, CONFIG, LAYERS, RANK, SHAPES, lora_tensors, module_name  # noqa: E402


def write_adapter(folder: Path, *, seed: int = 0) -> tuple[int, dict]:
    """Write adapter_model.safetensors + adapter_config.json; return (bytes, factors of layer 0)."""
    tensors = lora_tensors(seed=seed)
    layer0 = {module: (tensors[module_name(0, module) + ".lora_B.weight"],
                       tensors[module_name(0, module) + ".lora_A.weight"]) for module in SHAPES}
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(CONFIG, indent=2))
    return (folder / "adapter_model.safetensors").stat().st_size, layer0


def _factor_pair(d: int) -> tuple[int, int]:
    """PEFT LoKr ``factorization(d, -1)``: the two closest factors m <= n with m * n = d."""
    m = int(d**0.5)
    while d % m:
        m -= 1
    return m, d // m


def write_family(folder: Path, family: str, *, seed: int = 1) -> int:
    """A PEFT LoHa (r = 4) or LoKr (r = 16) adapter of the same shapes, bfloat16; returns bytes."""
    rng = np.random.default_rng(seed)
    tensors = {}
    r = 4 if family == "loha" else RANK
    for layer in range(LAYERS):
        for module, (d_out, d_in) in SHAPES.items():
            name = f"base_model.model.model.layers.{layer}.{module}"
            bf = lambda x: x.astype(ml_dtypes.bfloat16)  # noqa: E731
            if family == "loha":
                for half in ("1", "2"):
                    tensors[f"{name}.hada_w{half}_a"] = bf(rng.standard_normal((d_out, r), dtype=np.float32) * 0.05)
                    tensors[f"{name}.hada_w{half}_b"] = bf(rng.standard_normal((r, d_in), dtype=np.float32) * 0.05)
            else:
                o1, o2 = _factor_pair(d_out)
                i1, i2 = _factor_pair(d_in)
                tensors[f"{name}.lokr_w1"] = bf(rng.standard_normal((o1, i1), dtype=np.float32) * 0.1)
                tensors[f"{name}.lokr_w2_a"] = bf(rng.standard_normal((o2, r), dtype=np.float32) * 0.1)
                tensors[f"{name}.lokr_w2_b"] = bf(rng.standard_normal((r, i2), dtype=np.float32) * 0.1)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LOHA" if family == "loha" else "LOKR", "r": r, "alpha": 2 * r,
              "rank_pattern": {}, "alpha_pattern": {}, "rank_dropout": 0.0, "module_dropout": 0.0,
              "use_effective_conv2d": False, "target_modules": sorted({m.split(".")[-1] for m in SHAPES}),
              "task_type": "CAUSAL_LM"}
    if family == "lokr":
        config.update(decompose_both=False, decompose_factor=-1)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return (folder / "adapter_model.safetensors").stat().st_size


def _run_once(folder: Path, command: list[str]) -> dict:
    """One whole process in a fresh ``python -c`` wrapper that reports its child's wall time,
    CPU time and peak RSS (``ru_maxrss`` of RUSAGE_CHILDREN is a maximum over all children,
    so one wrapper per run keeps one command's peak apart from another's)."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True); w = time.perf_counter() - t; "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "sys.stderr.write(p.stderr.decode(errors='replace')); "
               "sys.stdout.write(json.dumps({'rc': p.returncode, 'wall': w, 'rss': u.ru_maxrss, "
               "'cpu': u.ru_utime + u.ru_stime, 'sys': u.ru_stime, 'out': p.stdout.decode(errors='replace')}))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, env=env,
                          cwd=str(ROOT))
    doc = json.loads(proc.stdout)
    if doc["rc"] != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed: {proc.stderr.decode().strip()[-500:]}")
    return doc


def audit_command(folder: Path) -> list[str]:
    """``python -m lorarank audit DIR --json``."""
    return [sys.executable, "-m", "lorarank", "audit", str(folder), "--json"]


def time_cli(folder: Path, runs: int, command: list[str] | None = None) -> tuple[list[float], float, float, int]:
    """Wall seconds of each audit process run, peak RSS (MB), CPU s per run, modules.

    ``command`` defaults to ``python -m lorarank audit DIR --json``.
    """
    command = command or audit_command(folder)
    walls, peaks, cpus, modules = [], [], [], 0
    for _ in range(runs):
        doc = _run_once(folder, command)
        walls.append(doc["wall"])
        peaks.append(doc["rss"] / 1024)  # Linux: KiB
        cpus.append(doc["cpu"])
        try:
            modules = len(json.loads(doc["out"])["modules"])
        except (ValueError, KeyError, TypeError):
            modules = 0
    return walls, max(peaks), statistics.mean(cpus), modules


def alternate(folder: Path, runs: int, a: list[str], b: list[str]) -> tuple[list[dict], list[dict]]:
    """``a`` and ``b`` in turn (a b a b ...), one warm-up of each first (not counted), so that a
    drift of the machine's speed hits both alike."""
    _run_once(folder, a), _run_once(folder, b)
    out_a, out_b = [], []
    for _ in range(runs):
        out_a.append(_run_once(folder, a))
        out_b.append(_run_once(folder, b))
    return out_a, out_b


def _figures(runs: list[dict]) -> str:
    walls = [r["wall"] for r in runs]
    return (f"wall median {statistics.median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f}); "
            f"CPU median {statistics.median(r['cpu'] for r in runs):.3f} s "
            f"(system {statistics.median(r['sys'] for r in runs):.3f} s); "
            f"peak RSS {max(r['rss'] for r in runs) / 1024:.0f} MB")


def gradience_command(folder: Path, exe: str | None = None) -> list[str] | None:
    """``gradience audit --peft-dir DIR --json`` when Gradience is installed, else None."""
    exe = exe or shutil.which("gradience")
    if exe is None:
        return None
    return [exe, "audit", "--peft-dir", str(folder), "--json"]


def phases(folder: Path) -> dict[str, float]:
    """In-process seconds of the audit's phases (imports already done): read, spectra + metrics, JSON."""
    from lorarank.adapters import load_adapter
    from lorarank.audit import audit_adapter

    t0 = time.perf_counter()
    adapter = load_adapter(folder)
    t1 = time.perf_counter()
    report = audit_adapter(adapter)
    t2 = time.perf_counter()
    json.dumps(report.to_dict(), allow_nan=False)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "audit": t2 - t1, "json": t3 - t2}


def dense_vs_factored(layer0: dict, names: list[str]) -> list[tuple[str, tuple[int, int], float, float, float]]:
    """(module, shape, dense s, factored s, max relative difference of the singular values)."""
    out = []
    scale = ALPHA / RANK
    for name in names:
        key = next(k for k in SHAPES if k.endswith(name))
        b, a = (x.astype(np.float32) for x in layer0[key])  # dense baseline in float32
        t0 = time.perf_counter()
        dense = np.linalg.svd(scale * (b @ a), compute_uv=False)[:RANK]
        t_dense = time.perf_counter() - t0
        module = LoraModule(key, layer0[key][1], layer0[key][0], scale)
        t0 = time.perf_counter()
        with single_threaded_blas():
            fact = module_spectrum(module)  # what the audit runs (bf16 -> float64, R-only QRs)
        t_fact = time.perf_counter() - t0
        diff = float(np.max(np.abs(dense - fact) / fact[0]))
        out.append((key, SHAPES[key], t_dense, t_fact, diff))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dense", default="k_proj,q_proj",
                        help="comma-separated module types of layer 0 for the dense SVD comparison")
    parser.add_argument("--no-gradience", action="store_true", help="skip the Gradience 0.11 baseline")
    parser.add_argument("--gradience", metavar="EXE", default=None,
                        help="the gradience executable (default: the one on PATH), e.g. one installed "
                             "with torch in another venv")
    parser.add_argument("--no-families", action="store_true", help="skip the LoHa and LoKr adapters")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="lorarank-bench-") as tmp:
        folder = Path(tmp) / "llama3_8b_r16_bf16"
        folder.mkdir()
        t0 = time.perf_counter()
        size, layer0 = write_adapter(folder)
        print(f"wrote {folder.name}: {LAYERS} layers x {len(SHAPES)} modules, r = {RANK}, bfloat16, "
              f"{size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
        load_before = os.getloadavg()
        gcmd = None if args.no_gradience else gradience_command(folder, args.gradience)
        if gcmd is None and not args.no_gradience:
            print("Gradience baseline skipped: `gradience` is not installed (pip install gradience==0.11.0)")
        if gcmd is None:
            walls, peak, cpu, modules = time_cli(folder, args.runs)
            print(f"`python -m lorarank audit DIR --json` ({modules} modules), {args.runs} runs: "
                  f"wall median {statistics.median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f}); "
                  f"CPU {cpu:.3f} s per run; peak RSS {peak:.0f} MB   [targets: <= 1.0 s, <= 300 MB]")
        else:
            ours, theirs = alternate(folder, args.runs, audit_command(folder), gcmd)
            print(f"alternating runs (lorarank, Gradience, lorarank, ...), {args.runs} of each after one "
                  f"warm-up each; PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
            print(f"`python -m lorarank audit DIR --json`: {_figures(ours)}   [targets: <= 1.0 s, <= 300 MB]")
            print(f"`gradience audit --peft-dir DIR --json` (Gradience 0.11): {_figures(theirs)}")
            pairs = [t["wall"] / o["wall"] for o, t in zip(ours, theirs)]
            print(f"lorarank vs Gradience on the same file: "
                  f"{statistics.median(t['wall'] for t in theirs) / statistics.median(o['wall'] for o in ours):.2f}x "
                  f"wall (ratio of medians), pairwise median {statistics.median(pairs):.2f}x "
                  f"(min {min(pairs):.2f}, max {max(pairs):.2f}); "
                  f"{statistics.median(t['cpu'] for t in theirs) / statistics.median(o['cpu'] for o in ours):.2f}x CPU   "
                  "[target >= 4x wall on a quiet machine]")
        load_after = os.getloadavg()
        print(f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
              f"{', '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores (above ~0.5, other "
              "processes share the cores: Gradience's torch threads suffer more from that than lorarank's "
              "single BLAS thread, so the wall ratio is only meaningful on a quiet machine)")
        if not args.no_families:
            for family in ("loha", "lokr"):
                fam = Path(tmp) / f"llama3_8b_{family}_bf16"
                fam.mkdir()
                fam_size = write_family(fam, family)
                try:
                    f_walls, f_peak, f_cpu, f_modules = time_cli(fam, args.runs)
                except SystemExit as exc:
                    print(f"{family}: {exc}")
                    continue
                print(f"{family} (PEFT, same shapes, {fam_size / 1e6:.1f} MB, {f_modules} modules), {args.runs} runs: "
                      f"wall median {statistics.median(f_walls):.3f} s (min {min(f_walls):.3f}); CPU "
                      f"{f_cpu:.3f} s per run; peak RSS {f_peak:.0f} MB; load {os.getloadavg()[0]:.2f}")
        ph = phases(folder)
        print("in-process phases: " + ", ".join(f"{k} {v:.3f} s" for k, v in ph.items()))
        names = [n.strip() for n in args.dense.split(",") if n.strip()]
        rows = dense_vs_factored(layer0, names)
        print()
        print(f"{'module (layer 0)':<18} | {'shape':>13} | {'dense B@A + svd':>15} | {'factored':>9} | "
              f"{'ratio':>7} | max |diff| / sigma_1")
        for key, shape, t_dense, t_fact, diff in rows:
            print(f"{key:<18} | {f'{shape[0]} x {shape[1]}':>13} | {t_dense:>13.3f} s | {t_fact * 1e3:>6.2f} ms | "
                  f"{t_dense / t_fact:>6.0f}x | {diff:.1e}")
        per_module = {key: t_dense for key, _, t_dense, _, _ in rows}
        if per_module:
            est = sum(per_module.get(k, 0.0) for k in SHAPES) * LAYERS
            covered = [k for k in SHAPES if k in per_module]
            print(f"dense estimate for those module types over all {LAYERS} layers: {est:.0f} s "
                  f"({', '.join(covered)} only; the 14336-wide modules cost more)")


if __name__ == "__main__":
    main()
