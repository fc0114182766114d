"""Benchmark: what a small hostile file costs, before and after the bounds of issue 23.

Each line runs in a child process of its own and prints its wall time, its CPU time and its own
peak resident memory (``VmHWM``), the readers of issue 12 (the baseline: the library calls
lorarank used) beside the bounded readers of ``lorarank.bounded`` and the GGUF walk, in the
same run:

1. a 16 MiB ``adapter_config.json`` string: issue 12's depth pre-check (a regular expression
   over the text, then numpy over every byte) and ``json.loads``, against ``bounded.load_json``;
2. a 17 kB ``.npz`` whose bzip2 member declares 216 bytes and inflates to 512 MiB:
   ``np.load`` (``zipfile``) against ``bounded.ZipArchive`` (refused at byte 217);
3. a 2 MB checkpoint zip whose member inflates to 2 GiB by deflate, read as issue 12 read it
   (``zipfile``'s whole-member read) against ``ZipArchive``;
4. a GGUF of 200,000 empty metadata strings (1.6 MB): ``gguf.GGUFReader`` against the walk
   (``load_adapter_bytes``), and the 49-byte file declaring a 2^40-item array (the reader is
   stopped after 20 s: it loops);
5. the CLI on a full-rank 4096 x 4096 adapter (128 MB).

About 2 minutes on a quiet 2-core machine. Figures quoted in docs/benchmarks.md name the
machine and the date.

Usage: ``python benchmarks/bench_hostile.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "hostile"))

_MEASURE = textwrap.dedent("""
    import json, os, resource, sys, time
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {hostile!r})
    start = time.perf_counter()
    outcome = "ok"
    try:
        exec(compile(open({script!r}).read(), "case", "exec"))
    except BaseException as exc:  # the outcome is part of the figure
        outcome = type(exc).__name__ + ": " + str(exc)[:90]
    use = resource.getrusage(resource.RUSAGE_SELF)
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({{"wall": time.perf_counter() - start, "cpu": use.ru_utime + use.ru_stime,
                       "peak_mb": peak / 1024, "outcome": outcome}}))
""")


def measure(name: str, code: str, folder: Path, *, timeout: float = 120) -> None:
    script = folder / f"{abs(hash(name))}.py"
    script.write_text(textwrap.dedent(code))
    runner = _MEASURE.format(root=str(ROOT), hostile=str(ROOT / "tests" / "hostile"), script=str(script))
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=timeout,
                             cwd=folder)
        doc = json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        doc = {"wall": time.perf_counter() - start, "cpu": float("nan"), "peak_mb": float("nan"),
               "outcome": f"still running after {timeout:.0f} s (stopped)"}
    except (ValueError, IndexError):
        doc = {"wall": float("nan"), "cpu": float("nan"), "peak_mb": float("nan"),
               "outcome": f"crashed: {out.stderr.strip()[-120:]}"}
    print(f"{name:<58} {doc['wall']:7.2f} s wall {doc['cpu']:7.2f} s cpu {doc['peak_mb']:8.0f} MB  "
          f"{doc['outcome']}", flush=True)


def main() -> None:
    import corpus23

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_bytes(b'{"r": 4, "notes": "' + b"x" * (16 * 2**20 - 32) + b'"}')
        (folder / "bomb.npz").write_bytes(corpus23.npz_lie(12)()["bomb.npz"])
        (folder / "run.zip").write_bytes(corpus23.run_lie(8)["run.zip"])
        (folder / "strings.gguf").write_bytes(corpus23.gguf_many_strings(200_000)["a.gguf"])
        (folder / "array.gguf").write_bytes(corpus23.gguf_huge_array()["a.gguf"])
        full = folder / "full"
        full.mkdir()
        (full / "full.safetensors").write_bytes(corpus23.full_rank()["full.safetensors"])

        print("1. a 16 MiB config string")
        measure("   issue 12: regex depth pre-check + json.loads", """
            import re, json, numpy as np
            data = open("config.json", "rb").read()
            bare = re.sub(rb'"(?:[^"\\\\]|\\\\.)*"', b'""', data, flags=re.DOTALL)
            arr = np.frombuffer(bare, dtype=np.uint8)
            step = np.isin(arr, (91, 123)).astype(np.int32) - np.isin(arr, (93, 125)).astype(np.int32)
            int(np.cumsum(step).max(initial=0))
            json.loads(data)
        """, folder)
        measure("   bounded.load_json", """
            from lorarank.bounded import load_json
            load_json("config.json", open("config.json", "rb").read())
        """, folder)
        print("2. a 17 kB .npz, bzip2 member inflating to 2 GiB")
        measure("   issue 12: np.load (zipfile)", """
            import numpy as np
            np.load("bomb.npz", allow_pickle=False)["m.B"]
        """, folder)
        measure("   bounded.ZipArchive (load_adapter)", """
            from lorarank.adapters import load_adapter
            load_adapter("bomb.npz")
        """, folder)
        print("3. a 2 MB checkpoint zip, deflate member inflating to 2 GiB")
        measure("   issue 12: zipfile.ZipFile.read", """
            import zipfile
            z = zipfile.ZipFile("run.zip")
            z.read("out/checkpoint-10/adapter_model.safetensors")
        """, folder)
        measure("   bounded.ZipArchive (checkpoints_from_files)", """
            from lorarank.checkpoints import checkpoints_from_files
            from lorarank.series import audit_series
            audit_series(checkpoints_from_files({"run.zip": open("run.zip", "rb").read()}))
        """, folder)
        print("4. GGUF metadata")
        measure("   gguf.GGUFReader, 200,000 strings", """
            import gguf
            gguf.GGUFReader("strings.gguf")
        """, folder)
        measure("   lorarank's walk, 200,000 strings", """
            from lorarank.adapters import load_adapter
            load_adapter("strings.gguf")
        """, folder)
        measure("   gguf.GGUFReader, 49 bytes declaring 2^40 items", """
            import gguf
            gguf.GGUFReader("array.gguf")
        """, folder, timeout=20)
        measure("   lorarank's walk, 49 bytes declaring 2^40 items", """
            from lorarank.adapters import load_adapter
            load_adapter("array.gguf")
        """, folder)
        print("5. a full-rank 4096 x 4096 adapter (128 MB)")
        measure("   lorarank audit --json", """
            import io, contextlib
            from lorarank.cli import main
            with contextlib.redirect_stdout(io.StringIO()):
                main(["audit", "full/full.safetensors", "--json"])
        """, folder, timeout=300)


if __name__ == "__main__":
    main()
