"""Server memory of auditing an uploaded adapter: peak RSS over the upload's size.

Run: ``python benchmarks/bench_upload_memory.py [--mb 84]``. Writes a Llama-3-8B-shaped
PEFT adapter (32 layers x q,k,v,o,gate,up,down, r = 16, bfloat16: 84 MB) with the real
``safetensors`` writer into memory, then, in a fresh child process per step so each peak is
its own, measures the peak resident memory (``VmHWM``, reset after the file is built) of: holding the bytes as the
uploader does; ``load_adapter_bytes``; the page's audit path (detect + audit + budget + resize
preview, as ``ui.audit`` runs it, without Streamlit). Prints each peak and its ratio to the
file size; the target is <= 3x the file (issue 9) on top of the interpreter's baseline.
Report ``uptime`` with the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.llama8b import adapter_bytes as _adapter_bytes  # noqa: E402


def adapter_bytes(layers: int = 32) -> tuple[bytes, bytes]:
    """``(adapter_model.safetensors, adapter_config.json)`` of the bf16 Llama-3-8B-shaped LoRA."""
    return _adapter_bytes(layers=layers)


CHILD = r"""
import gc, sys, time
sys.path.insert(0, {root!r})
def status(field):  # MB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
def reset_peak():  # Linux: VmHWM := VmRSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
import numpy, safetensors, ml_dtypes
from benchmarks.bench_upload_memory import adapter_bytes
import lorarank.adapters, lorarank.audit
from lorarank.audit import audit_adapter, budget_curve, allocate_budget, resize_adapter
base = status("VmRSS")
weights, config = adapter_bytes(layers={layers})
files = [("adapter_model.safetensors", weights), ("adapter_config.json", config)]
gc.collect()
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the builder's freed temporaries back to the OS
held = status("VmRSS")
reset_peak()
step = {step!r}
t = time.perf_counter()
if step == "load":
    adapter = lorarank.adapters.load_adapter_bytes(files)
elif step == "audit":
    adapter = lorarank.adapters.load_adapter_bytes(files)
    report = audit_adapter(adapter)
    del adapter
    budget_curve(report); allocate_budget(report, rank_budget=4 * len(report.modules))
    adapter = lorarank.adapters.load_adapter_bytes(files)
    resize_adapter(adapter, rule="energy", value=0.99)
print(base, held, status("VmHWM"), len(weights), time.perf_counter() - t)
"""


def measure(step: str, layers: int) -> tuple[float, float, float, int, float]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), layers=layers,
                                                             step=step)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    base, held, peak, size, seconds = out.stdout.split()
    return float(base), float(held), float(peak), int(size), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="32 layers: 84 MB")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average), {os.cpu_count()} cores")
    for step in ("bytes", "load", "audit"):
        base, held, peak, size, seconds = measure(step, args.layers)
        mb = size / 2**20
        print(f"{step:6} file {mb:5.1f} MB  interpreter {base:6.1f} MB  with the bytes "
              f"{held:6.1f} MB  peak {peak:6.1f} MB: peak - interpreter = {peak - base:6.1f} MB "
              f"= {(peak - base) / mb:4.2f}x the file ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
