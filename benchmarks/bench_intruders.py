"""Benchmark: intruder dimensions of a second adapter on a cached base, against PEFT's own function.

PEFT's ``reduce_intruder_dimension`` (``peft.tuners.lora.intruders``) takes a loaded torch model
and, for every LoRA layer, computes dense SVDs of ``W0`` and of ``W0 + dW`` (and of the mitigated
update where it finds intruders), then writes the mitigated adapter. Every adapter pays for all
of them again. lorarank computes the base's SVD once (:mod:`lorarank.base_svd`, by content,
memory and disk) and each adapter's intruders from it by a rank-r update
(:func:`lorarank.intruders.intruders_lowrank`): ``O(d^2 r)`` per module.

The files (written once into ``--work``, by torch and PEFT themselves):

- ``base/model.safetensors``: ``--layers`` transformer blocks with ``--shapes`` (``8b``:
  Llama-3-8B's q, k, v, o, gate, up, down: hidden 4096, kv 1024, intermediate 14336; ``1b``:
  Llama-3.2-1B's, 2048 / 512 / 8192; ``small``: 512 / 128 / 1536), bfloat16, a random bulk plus
  32 strong directions (a spectrum with structure);
- ``adapter_a/``, ``adapter_b/``: PEFT ``save_pretrained`` of two LoRA adapters (r = 16, alpha
  32, every projection) whose ``lora_B`` were set to random values large enough to create
  intruders (as a high learning rate does).

Then, each in its own process (peak memory is ``ru_maxrss`` of that process), in one run:

1. **PEFT**: ``PeftModel.from_pretrained`` on the base, then ``reduce_intruder_dimension``
   (default top_k 10, epsilon 0.5, lambda 0.75) timed on its own (loading excluded); torch with
   one thread by default, like lorarank's engine (``--torch-threads 0``: torch's default).
2. **lorarank cold**: an empty cache folder; ``mitigate_adapter`` of adapter A (the same work:
   intruders and the mitigated factors) computes and stores the base's SVDs; then, in the same
   process, adapter B (memory cache) by ``mitigate_adapter`` and by ``audit_adapter(intruders=True)``.
3. **lorarank warm**: a new process on the same cache folder (another run, session or
   checkpoint on the same base): ``mitigate_adapter`` of adapter B from the disk cache.

Both sides' intruder counts are printed and compared (they must agree). Targets (issue 18):
warm >= 10x faster than PEFT, cold no slower. lorarank runs with one BLAS thread (its engine's
policy on shared cores); say the load (``uptime``) with the figures.

Usage: ``python benchmarks/bench_intruders.py [--shapes 8b] [--layers 1] [--work DIR]``
(needs torch, peft and transformers: ``requirements-oracles.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {  # hidden, kv, intermediate
    "8b": (4096, 1024, 14336),
    "1b": (2048, 512, 8192),
    "small": (512, 128, 1536),
}
RANK, ALPHA = 16, 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shapes(preset: str) -> dict[str, tuple[int, int]]:
    h, kv, inter = PRESETS[preset]
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
            "mlp.down_proj": (h, inter)}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ torch side
def torch_model(preset: str, layers: int):
    import torch
    from torch import nn

    class Attn(nn.Module):
        def __init__(self, s):
            super().__init__()
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                d_out, d_in = s["self_attn." + name]
                setattr(self, name, nn.Linear(d_in, d_out, bias=False, device="meta"))

    class MLP(nn.Module):
        def __init__(self, s):
            super().__init__()
            for name in ("gate_proj", "up_proj", "down_proj"):
                d_out, d_in = s["mlp." + name]
                setattr(self, name, nn.Linear(d_in, d_out, bias=False, device="meta"))

    class Block(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.self_attn, self.mlp = Attn(s), MLP(s)

    class Inner(nn.Module):
        def __init__(self, s, n):
            super().__init__()
            self.layers = nn.ModuleList([Block(s) for _ in range(n)])

    class Model(nn.Module):
        def __init__(self, s, n):
            super().__init__()
            self.model = Inner(s, n)

        def forward(self, x):  # never called; PEFT wants a model
            return x

    return Model(shapes(preset), layers)


def phase_prep(args) -> dict:
    """Write the base and the two adapters with torch and PEFT (skipped when present)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    work = Path(args.work)
    if (work / "adapter_b" / "adapter_model.safetensors").is_file():
        return {"prep": "reused"}
    torch.manual_seed(0)
    state = {}
    for layer in range(args.layers):
        for module, (d_out, d_in) in shapes(args.shapes).items():
            bulk = torch.randn(d_out, d_in) / d_in ** 0.5
            x, y = torch.randn(d_out, 32), torch.randn(32, d_in)
            strength = torch.logspace(0.6, -0.3, 32)  # 4 .. 0.5
            w = bulk + (x / d_out ** 0.5 * strength) @ (y / d_in ** 0.5)
            state[f"model.layers.{layer}.{module}.weight"] = w.to(torch.bfloat16).contiguous()
    (work / "base").mkdir(parents=True, exist_ok=True)
    save_file(state, str(work / "base" / "model.safetensors"), metadata={"format": "pt"})
    for name, seed in (("adapter_a", 1), ("adapter_b", 2)):
        model = torch_model(args.shapes, args.layers)
        model.load_state_dict(state, assign=True)
        torch.manual_seed(seed)
        pm = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
        gen = torch.Generator().manual_seed(seed)
        for n, mod in pm.named_modules():
            if hasattr(mod, "lora_B") and "default" in mod.lora_B:
                d_out = mod.lora_B["default"].weight.shape[0]
                size = 2.6 / d_out ** 0.5 * float(torch.empty(1).uniform_(0.5, 2.0, generator=gen))
                with torch.no_grad():
                    mod.lora_B["default"].weight.copy_(torch.randn(d_out, RANK, generator=gen) * size)
        pm.save_pretrained(str(work / name))
        del pm, model
    return {"prep": "written"}


def phase_peft(args) -> dict:
    """PEFT's reduce_intruder_dimension on adapter A (loading excluded from the time)."""
    import re

    import torch
    from peft import PeftModel

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    from peft.tuners.lora.intruders import reduce_intruder_dimension
    from safetensors.torch import load_file

    work = Path(args.work)
    t0 = time.perf_counter()
    model = torch_model(args.shapes, args.layers)
    model.load_state_dict(load_file(str(work / "base" / "model.safetensors")), assign=True)
    pm = PeftModel.from_pretrained(model, str(work / args.adapter))
    load_s = time.perf_counter() - t0
    lines: list[str] = []
    t0 = time.perf_counter()
    reduce_intruder_dimension(pm, logging_sink=lambda *a, **k: lines.append(" ".join(map(str, a))))
    seconds = time.perf_counter() - t0
    counts = {}
    for line in lines:
        m = re.match(r"^(.*): (?:Intruders: (\d+)|No intruders)$", line)
        if m:
            counts[m.group(1)] = int(m.group(2) or 0)
    return {"seconds": seconds, "load_seconds": load_s, "counts": counts, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------- lorarank side
def _ours(args, cache, adapter: str, what: str) -> tuple[float, dict]:
    from lorarank.adapters import load_adapter
    from lorarank.audit import audit_adapter
    from lorarank.base import open_base
    from lorarank.mitigate import mitigate_adapter

    work = Path(args.work)
    t0 = time.perf_counter()
    base = open_base(work / "base")
    loaded = load_adapter(work / adapter)
    if what == "mitigate":
        result = mitigate_adapter(loaded, base, cache=cache)
        counts = dict(result.intruders)
    else:
        report = audit_adapter(loaded, base=base, intruders=True, svd_cache=cache)
        counts = {m.name: m.intruders["count"] for m in report.modules}
    return time.perf_counter() - t0, counts


def phase_cold(args) -> dict:
    from lorarank.base_svd import BaseSVDCache

    cache = BaseSVDCache(directory=args.cache, memory_bytes=64 * 2**30, disk_bytes=256 * 2**30)
    cold, counts_a = _ours(args, cache, "adapter_a", "mitigate")
    warm_mem, counts_b = _ours(args, cache, "adapter_b", "mitigate")
    audit_mem, _ = _ours(args, cache, "adapter_b", "audit")
    return {"cold_seconds": cold, "warm_memory_seconds": warm_mem, "audit_warm_memory_seconds": audit_mem,
            "counts_a": counts_a, "counts_b": counts_b, "stats": dict(cache.stats)}


def phase_warm(args) -> dict:
    from lorarank.base_svd import BaseSVDCache

    cache = BaseSVDCache(directory=args.cache, memory_bytes=64 * 2**30, disk_bytes=256 * 2**30)
    warm_disk, counts_b = _ours(args, cache, "adapter_b", "mitigate")
    return {"warm_disk_seconds": warm_disk, "counts_b": counts_b, "stats": dict(cache.stats)}


# ---------------------------------------------------------------------------------- driver
def run_phase(args, phase: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--shapes", args.shapes, "--layers", str(args.layers),
           "--work", str(args.work), "--cache", str(args.cache), "--torch-threads", str(args.torch_threads)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    doc["process_seconds"] = time.perf_counter() - t0
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", choices=sorted(PRESETS), default="8b")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--work", default=None, help="folder for the files (kept; default: a temporary one, removed)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads for PEFT's function (default 1, as lorarank's BLAS; 0: torch's default)")
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--adapter", default="adapter_a", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        doc = {"prep": phase_prep, "peft": phase_peft, "cold": phase_cold, "warm": phase_warm}[args.phase](args)
        doc["peak_mb"] = peak_mb()
        print(json.dumps(doc))
        return
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench_intruders needs torch and peft for PEFT's function (requirements-oracles.txt): {exc}")
    temp = args.work is None
    args.work = Path(args.work or tempfile.mkdtemp(prefix="bench-intruders-"))
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache = args.work / "svd-cache"
    shutil.rmtree(args.cache, ignore_errors=True)
    h, kv, inter = PRESETS[args.shapes]
    print(f"bench_intruders: {args.layers} block(s) of {args.shapes} shapes (hidden {h}, kv {kv}, intermediate "
          f"{inter}), 7 modules each, base bfloat16, adapters r={RANK}; load {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    prep = run_phase(args, "prep")
    print(f"files: {prep['prep']} in {prep['process_seconds']:.0f} s", flush=True)
    peft_doc = run_phase(args, "peft", adapter="adapter_a")
    print(f"PEFT reduce_intruder_dimension (adapter A): {peft_doc['seconds']:.1f} s (+ {peft_doc['load_seconds']:.1f} s "
          f"loading; torch {peft_doc['threads']} threads), peak {peft_doc['peak_mb']:.0f} MB", flush=True)
    cold = run_phase(args, "cold")
    print(f"lorarank cold (adapter A, empty cache): {cold['cold_seconds']:.1f} s, peak {cold['peak_mb']:.0f} MB "
          f"(the process, with adapter B after it)", flush=True)
    print(f"lorarank warm, memory cache (adapter B, same process): mitigate {cold['warm_memory_seconds']:.2f} s, "
          f"audit --intruders {cold['audit_warm_memory_seconds']:.2f} s", flush=True)
    warm = run_phase(args, "warm")
    print(f"lorarank warm, disk cache (adapter B, new process): {warm['warm_disk_seconds']:.2f} s, peak "
          f"{warm['peak_mb']:.0f} MB, cache stats {warm['stats']}", flush=True)
    same_a = peft_doc["counts"] == cold["counts_a"]
    print(f"intruder counts, PEFT vs lorarank (adapter A): {'equal' if same_a else 'DIFFERENT'} "
          f"({sum(peft_doc['counts'].values())} vs {sum(cold['counts_a'].values())} in "
          f"{len(peft_doc['counts'])} modules); adapter B: {sum(warm['counts_b'].values())}")
    print(f"ratio PEFT / lorarank: cold {peft_doc['seconds'] / cold['cold_seconds']:.2f}x, warm (memory) "
          f"{peft_doc['seconds'] / cold['warm_memory_seconds']:.1f}x, warm (disk) "
          f"{peft_doc['seconds'] / warm['warm_disk_seconds']:.1f}x (targets: warm >= 10x, cold >= 1x)")
    if temp:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
