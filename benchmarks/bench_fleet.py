"""Benchmark: `lorarank fleet` on 500 small adapters and 50 Llama-3-8B-shaped ones, same run.

Writes a fleet into a temporary folder: ``--small`` PEFT adapters (2 layers x q, v of a
256-wide model, r in 4..64, float32, 8-260 kB each) and ``--large`` Llama-3-8B-shaped ones (32
layers x 7 modules, r = 16, bfloat16, 84 MB each; every file different). Then, in the same run,
for each half of the fleet (the figures are ratios, so the machine's load matters less):

1. full audit, 1 local worker (this process) and 2 local worker processes: adapters per second
   and the ratio (target: 2 workers >= 1.7x one);
2. the same on a local Ray (``ray.init(num_cpus=2)``) and a Dask ``LocalCluster`` (2 worker
   processes, 1 thread each; without Dask's ``MALLOC_TRIM_THRESHOLD_``, see :func:`dask_env`),
   one engine at a time (an idle cluster's own processes take 5-10 % of a core from the
   other), each started and warmed before timing: the overhead against 2 local processes
   (target <= 20 %); the local pool's start is inside its timing, the clusters' is not;
3. header screening, 1 worker, against the full audit, 1 worker (target >= 50x): as the
   fleet is (adapters of one recipe at one rank store byte-identical headers, which the
   screening answers once, :func:`lorarank.adapters.headers.screen_header`), and again with
   every header parsed as if new (kohya-style files, whose metadata differs per file);
4. peak memory: of one audit of an 8B-shaped adapter in a fresh process (what a worker holds),
   and of each Ray / Dask worker after the whole large fleet.

Every configuration runs ``--repeats`` times (the small half's ``--small-repeats``) and the
best is kept. It prints the machine's load (``os.getloadavg``) before and after, and the CPU
seconds per adapter of each local and Dask run (this process, its reaped worker processes, the
Dask workers): with Linux's autogroup scheduling, a session's processes share one slice of a
busy machine, so on a shared machine two workers cannot beat one in wall time, and ``2 x CPU(1
worker) / CPU(2 workers)`` projects the speedup on two idle cores. Rows of every executor are
checked to be identical.

Usage: ``python benchmarks/bench_fleet.py [--small 500] [--large 50] [--repeats 2] [--no-clusters]``
(about 10 minutes on a busy 2-core machine with the defaults; 4.2 GB of temporary files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import llama8b  # noqa: E402
from lorarank.adapters.headers import header_memo  # noqa: E402
from lorarank.fleet import FleetOptions, expand_sources, run_fleet  # noqa: E402


def write_small(folder: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        r = int(2 ** rng.integers(2, 7))
        out = folder / f"run-{i:04d}"
        out.mkdir(parents=True)
        tensors = {}
        for layer in range(2):
            for mod, (d_out, d_in) in {"q_proj": (256, 256), "v_proj": (128, 256)}.items():
                name = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
                decay = np.geomspace(1, 1e-3, r)
                tensors[name + ".lora_A.weight"] = (rng.standard_normal((r, d_in)) * decay[:, None]).astype(np.float32)
                tensors[name + ".lora_B.weight"] = rng.standard_normal((d_out, r)).astype(np.float32)
        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        (out / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
             "base_model_name_or_path": "tiny/llama"}))


def write_large(folder: Path, n: int) -> int:
    """``n`` 8B-shaped adapters: one set of factors, each copy's first B factor scaled
    differently, so every file (and every content hash) differs."""
    import ml_dtypes
    import safetensors.numpy

    tensors = llama8b.lora_tensors()
    first = llama8b.module_name(0, "self_attn.q_proj") + ".lora_B.weight"
    base = tensors[first].astype(np.float32)
    size = 0
    for i in range(n):
        out = folder / f"big-{i:03d}"
        out.mkdir(parents=True)
        tensors[first] = (base * (1 + i / 64)).astype(ml_dtypes.bfloat16)
        data = safetensors.numpy.save(tensors, metadata={"format": "pt"})
        (out / "adapter_model.safetensors").write_bytes(data)
        (out / "adapter_config.json").write_text(json.dumps(llama8b.CONFIG))
        size = len(data)
    return size


CPU: dict[tuple, float] = {}
#: Tasks each configuration's executor ran (``FleetResult.tasks``: adapters are grouped into tasks).
TASKS: dict[tuple, int] = {}


def _cpu(dask_client=None) -> float:
    """CPU seconds used so far by this process, its reaped children (the local pool's workers)
    and, given a Dask client, the Dask workers."""
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own + kids.ru_utime + kids.ru_stime
    if dask_client is not None:
        total += sum(dask_client.run(time.process_time).values())
    return total


def repeats(args, half: str) -> int:
    """Runs of each configuration of a half: the small half's take ~1 s, so one busy second
    moves a ratio by 15 %; more of them cost little."""
    return args.small_repeats if half == "small" else args.repeats


def timed(members, options, repeats: int, **where) -> tuple[float, list]:
    """Best wall time of ``repeats`` runs; the CPU seconds of that run go into ``CPU``."""
    best, rows = float("inf"), None
    client = where.get("dask")
    for _ in range(repeats):
        c = _cpu(client if not isinstance(client, str) else None)
        t = time.perf_counter()
        result = run_fleet(members, options, **where)
        wall = time.perf_counter() - t
        if wall < best:
            best = wall
            CPU[(id(members), options.screen, str(where))] = _cpu(client if not isinstance(client, str) else None) - c
        rows = result.rows
        TASKS[(id(members), options.screen, str(where))] = getattr(result, "tasks", len(members))
    assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]][:3]
    return best, rows


def tasks_of(members, options, **where) -> int | None:
    return TASKS.get((id(members), options.screen, str(where)))


def cpu_of(members, options, **where) -> float:
    return CPU.get((id(members), options.screen, str(where)), float("nan"))


def start_engine(label: str, *, dask_trim: bool):
    """``(run_fleet keyword, stop)`` of a local Ray (2 CPUs) or Dask ``LocalCluster`` (2 worker
    processes, 1 thread each)."""
    if label == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        return {"ray": "auto"}, ray.shutdown
    import distributed

    dask_env(keep_trim=dask_trim)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)

    def stop() -> None:
        client.close()
        cluster.close()
    return {"dask": client}, stop


def engine_peaks(label: str, where: dict) -> list[int]:
    """Peak resident memory (MiB) of the engine's worker processes."""
    if label == "ray":
        import ray

        got = ray.get([ray.remote(num_cpus=1)(worker_rss).remote() for _ in range(4)])
        return sorted({p // 1024 for p in got})
    return sorted(p // 1024 for p in where["dask"].run(worker_rss).values())


def dask_env(*, keep_trim: bool) -> None:
    """Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off glibc's
    dynamic mmap threshold: every large numpy temporary is then mmap'ed and unmapped, and an
    8B-shaped audit costs ~3x its CPU (measured: 1.5 s against 0.5 s). Unless ``keep_trim``,
    the variable is left out of the workers' environment (the fleet's function gives memory back
    itself after each large adapter)."""
    import dask

    if keep_trim:
        return
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    dask.config.config.setdefault("distributed", {}).setdefault("nanny", {})["pre-spawn-environ"] = env


def one_audit_rss(path: Path) -> float:
    """Peak RSS (MiB) of a fresh process that audits one adapter through the fleet's function."""
    hwm = ("def hwm():\n"
           "    for line in open('/proc/self/status'):\n"
           "        if line.startswith('VmHWM:'):\n"
           "            return int(line.split()[1])\n")
    code = hwm + ("import sys, resource; sys.path.insert(0, %r)\n"
            "from lorarank.fleet import FleetOptions, expand_sources, audit_member\n"
            "(m,) = expand_sources([%r]).members\n"
            "row = audit_member(m, FleetOptions()); assert row['ok']\n"
            "print(hwm())") % (str(ROOT), str(path))
    base = hwm + ("import sys, resource; sys.path.insert(0, %r)\n"
            "import lorarank.fleet, lorarank.audit, lorarank.adapters\n"
            "print(hwm())") % (str(ROOT),)
    after = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    idle = int(subprocess.run([sys.executable, "-c", base], capture_output=True, text=True, check=True).stdout)
    return after / 1024, idle / 1024


def worker_rss() -> int:
    """Peak resident memory (KiB) of the calling process's own image (``VmHWM``; unlike
    ``ru_maxrss`` it does not carry the peak of the process it was forked from)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (best kept)")
    parser.add_argument("--small-repeats", type=int, default=5,
                        help="the same for the small half, whose configurations take about a second each")
    parser.add_argument("--no-clusters", action="store_true", help="skip Ray and Dask")
    parser.add_argument("--dask-trim", action="store_true",
                        help="keep Dask's default MALLOC_TRIM_THRESHOLD_=65536 in its workers (~3x the "
                             "audit's CPU there)")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="lorarank-fleet-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_small(tmp / "small", args.small)
        size = write_large(tmp / "large", args.large)
        print(f"wrote {args.small} small adapters and {args.large} x {size / 1e6:.1f} MB 8B-shaped ones "
              f"in {time.perf_counter() - t:.0f} s")
        fleets = {name: expand_sources([str(tmp / folder)]).members
                  for name, folder, count in (("small", "small", args.small), ("8B", "large", args.large))
                  if count > 0}
        audit, screen = FleetOptions(), FleetOptions(screen=True)
        results, reference, two_workers = {}, {}, {}
        # 1. Local executors first (a single-threaded process: the pool forks its workers).
        for name, members in fleets.items():
            n = len(members)
            reps = repeats(args, name)
            one, rows1 = timed(members, audit, reps, workers=1)
            two, rows2 = timed(members, audit, reps, workers=2)
            scr, rows_s = timed(members, screen, reps, workers=1)
            with header_memo(enabled=False):   # every header parsed as if never seen
                new, rows_n = timed(members, screen, reps, workers=1)
            assert rows1 == rows2 and rows_s == rows_n
            reference[name], two_workers[name] = rows1, two
            cpu1, cpu2 = cpu_of(members, audit, workers=1), cpu_of(members, audit, workers=2)
            results[name] = {"adapters": n, "1 worker /s": n / one, "2 workers /s": n / two,
                             "speedup 2 vs 1": one / two,
                             "CPU s/adapter, 1 worker": cpu1 / n, "CPU s/adapter, 2 workers": cpu2 / n,
                             "projected speedup on 2 idle cores": 2 * cpu1 / cpu2,
                             "screen /s": n / scr,
                             "screen vs audit (1 worker)": one / scr, "audit s/adapter (1 worker)": one / n,
                             "screen s/adapter": scr / n,
                             "screen vs audit, every header new": one / new,
                             "screen s/adapter, every header new": new / n}
        # 2. The clusters, one at a time (each started, warmed outside the timings, measured on
        # both halves, then shut down: an idle cluster's own processes use ~5-10 % of a core,
        # which would be charged to the other engine).
        peaks: dict[str, list[int]] = {}
        if not args.no_clusters:
            for label in ("ray", "dask"):
                t = time.perf_counter()
                where, stop = start_engine(label, dask_trim=args.dask_trim)
                run_fleet(next(iter(fleets.values()))[:8], audit, **where)
                print(f"{label} started and warmed in {time.perf_counter() - t:.0f} s (not timed below)")
                try:
                    for name, members in fleets.items():
                        n = len(members)
                        took, got = timed(members, audit, repeats(args, name), **where)
                        same = sum(a == b for a, b in zip(reference[name], got))
                        results[name][f"{label} rows identical"] = f"{same} of {n}"
                        for a, b in zip(reference[name], got):
                            if a != b:
                                print(f"{label}: {a['source']} differs in "
                                      f"{[k for k in a if a[k] != b[k]]}: {[(a[k], b[k]) for k in a if a[k] != b[k]][:1]}")
                                break
                        results[name][f"tasks, {label}"] = tasks_of(members, audit, **where)
                        results[name][f"{label} /s"] = n / took
                        if label == "dask":
                            cpu_d = cpu_of(members, audit, **where)
                            results[name]["CPU s/adapter, dask"] = cpu_d / n
                            results[name]["projected dask overhead on idle cores"] = (
                                cpu_d / cpu_of(members, audit, workers=2) - 1)
                        results[name][f"{label} overhead vs 2 processes"] = took / two_workers[name] - 1
                    peaks[label] = engine_peaks(label, where)
                finally:
                    stop()
            for name, members in fleets.items():
                results[name]["tasks, 2 processes"] = tasks_of(members, audit, workers=2)
        for name, line in results.items():
            print(f"\n{name}: {line['adapters']} adapters")
            for key, value in line.items():
                if key == "adapters":
                    continue
                if "overhead" in key:
                    print(f"  {key:<36} {100 * value:+.1f} %")
                elif "speedup" in key or "vs audit" in key:
                    print(f"  {key:<36} {value:.2f}x")
                elif "s/adapter" in key:
                    print(f"  {key:<36} {1000 * value:.2f} ms")
                elif isinstance(value, (str, int)) or value is None:
                    print(f"  {key:<36} {value}")
                else:
                    print(f"  {key:<36} {value:.1f}")
        print()
        if "8B" in fleets:
            peak, idle = one_audit_rss(Path(fleets["8B"][0].path))
            print(f"peak RSS of one process auditing one 8B-shaped adapter: {peak:.0f} MiB "
                  f"(the same process with lorarank imported and nothing read: {idle:.0f} MiB)")
        for label, values in peaks.items():
            print(f"peak RSS of the {label.capitalize()} workers after the runs: {values} MiB")
        print(f"\nload after: {os.getloadavg()}")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
