"""Running :func:`~lorarank.fleet.rows.audit_member` over a fleet, on an existing engine.

Executors (one per call, all giving the same rows in the same order):

``serial``
    In this process, one adapter after another (``workers=1``; the app's choice: one server
    slot is one core).
``processes`` (default)
    Local worker processes, one per core: :class:`concurrent.futures.ProcessPoolExecutor`,
    started by ``fork`` from a single-threaded parent (the CLI: no start-up cost) and by
    ``forkserver`` from a threaded one (a web server, a process holding a Ray or Dask client).
``ray``
    A Ray cluster: ``ray.init(address=ADDRESS)`` unless Ray is already initialised in this
    process; each adapter is one ``@ray.remote(num_cpus=1)`` task.
``dask``
    Dask distributed: ``distributed.Client(ADDRESS)`` (or a given ``Client``); each adapter
    is one task.

Ray and Dask are optional (``pip install lorarank[ray]`` / ``lorarank[dask]``) and imported
only here, only when asked. Workers on other machines must see the same files (a shared
folder) or read from the Hub; each worker holds one adapter at a time, and at most
``2 x workers`` tasks are in flight, so memory per worker stays that of one audit.

With a :class:`~lorarank.fleet.cache.ResultCache`, the keys are computed first (content
hashes; Hub listings in a few threads) and only the misses are sent to workers.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..documents import format_seconds
from .rows import FleetOptions, audit_member, error_row, one_line
from .sources import Member

__all__ = ["FleetProgress", "FleetResult", "run_fleet", "EXECUTORS", "default_workers"]

EXECUTORS = ("serial", "processes", "ray", "dask")
#: Hub listings resolved at once (for cache keys): network-bound, not CPU-bound.
_LISTING_THREADS = 8


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class FleetProgress:
    """Where a run is: ``done`` of ``total`` adapters (``cached`` of them from the cache),
    ``failed`` so far, ``elapsed`` seconds, and the rate and time left of the audited ones."""

    done: int
    total: int
    cached: int
    failed: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Adapters audited per second (cache hits excluded)."""
        audited = self.done - self.cached
        return audited / self.elapsed if self.elapsed > 0 and audited > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None before the first adapter finished)."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        return left / self.rate if self.rate > 0 else None

    def text(self) -> str:
        """``"120 of 550 adapters (30 cached), 35.2/s, about 12 s left"``."""
        parts = [f"{self.done:,} of {self.total:,} adapters"]
        if self.cached:
            parts[0] += f" ({self.cached:,} from the cache)"
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        if self.rate:
            parts.append(f"{self.rate:.3g}/s")
        eta = self.eta
        if eta is not None and self.done < self.total:
            parts.append(f"{format_seconds(eta)} left")
        return ", ".join(parts)


@dataclass(frozen=True)
class FleetResult:
    """Rows in the order of the members, and how they were obtained."""

    rows: list[dict]
    executor: str
    workers: int
    audited: int
    cached: int
    seconds: float
    notes: tuple[str, ...] = ()
    keys: tuple[str | None, ...] = field(default=(), repr=False)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.rows if not r["ok"])


Progress = Callable[[FleetProgress], None]


def run_fleet(members: Sequence[Member], options: FleetOptions, *, workers: int | None = None,
              ray: str | None = None, dask: Any = None, cache=None,
              progress: Progress | None = None, notes: Sequence[str] = ()) -> FleetResult:
    """Audit (or screen) every member; return the rows in member order.

    Parameters
    ----------
    members : sequence of Member
        From :func:`lorarank.fleet.expand_sources` or :func:`members_from_uploads`.
    options : FleetOptions
    workers : int, optional
        Local processes (default: one per core); 1 runs in this process.
    ray : str, optional
        A Ray address (``auto``, ``ray://head:10001``, ``local``); ignored as such when Ray is
        already initialised in this process (its cluster is used).
    dask : str or distributed.Client, optional
        A scheduler address (``tcp://head:8786``) or a client.
    cache : ResultCache, optional
        Rows already computed for the same bytes are taken from it; new ok rows go into it.
    progress : callable(FleetProgress), optional
        Called after each adapter (and once at the start).

    Returns
    -------
    FleetResult
    """
    if ray is not None and dask is not None:
        raise ConfigError("give --ray or --dask, not both")
    if workers is not None and (ray is not None or dask is not None):
        raise ConfigError("--workers sets local processes; with --ray or --dask the cluster's "
                          "workers run the adapters")
    if workers is not None and not (isinstance(workers, int) and 1 <= workers <= 1024):
        raise ConfigError(f"--workers should be a whole number from 1 to 1024, got {workers!r}")
    members = list(members)
    total = len(members)
    start = time.perf_counter()
    rows: list[dict | None] = [None] * total
    keys: list[str | None] = [None] * total
    revisions: dict[int, str] = {}
    cached = 0
    failed = [0]
    # 1. Content keys and cache hits (only the misses are sent to workers).
    if cache is not None:
        keys, revisions, early = _keys(members, options, cache)
        for i, row in early.items():
            rows[i] = row
            failed[0] += 1
        for i, key in enumerate(keys):
            if rows[i] is None:
                hit = cache.get(key)
                if hit is not None:
                    rows[i] = {"source": members[i].source, **hit}
                    if i in revisions:
                        rows[i]["revision"] = revisions[i]
                    cached += 1
    todo = [i for i in range(total) if rows[i] is None]
    done = [total - len(todo)]

    def tick() -> None:
        if progress is not None:
            progress(FleetProgress(done[0], total, cached, failed[0], time.perf_counter() - start))

    def finish(i: int, row: dict) -> None:
        rows[i] = row
        done[0] += 1
        if not row["ok"]:
            failed[0] += 1
        elif cache is not None:
            cache.put(keys[i], row)
        tick()

    tick()
    if ray is not None:
        executor, n = "ray", _run_ray(members, todo, options, ray, finish)
    elif dask is not None:
        executor, n = "dask", _run_dask(members, todo, options, dask, finish)
    else:
        n = default_workers() if workers is None else workers
        n = max(1, min(n, len(todo))) if todo else n
        if n == 1:
            executor = "serial"
            for i in todo:
                finish(i, audit_member(members[i], options))
        else:
            executor = "processes"
            _run_processes(members, todo, options, n, finish)
    if cache is not None:
        cache.flush()
    return FleetResult(rows=[r for r in rows], executor=executor, workers=n, audited=len(todo),
                       cached=cached, seconds=time.perf_counter() - start, notes=tuple(notes),
                       keys=tuple(keys))


def _keys(members: list[Member], options: FleetOptions, cache):
    """Content keys of every member; Hub members are listed (one call each, in threads)."""
    keys: list[str | None] = [None] * len(members)
    revisions: dict[int, str] = {}
    early: dict[int, dict] = {}
    hub = [i for i, m in enumerate(members) if m.hub]
    listings: dict[int, Any] = {}
    if hub:
        from ..hub import list_adapter

        def listing(i: int):
            try:
                return i, list_adapter(members[i].hub), None
            except Exception as exc:  # noqa: BLE001 - the worker will say it again, or the row
                return i, None, exc

        with ThreadPoolExecutor(_LISTING_THREADS) as pool:
            for i, got, exc in pool.map(listing, hub):
                if exc is not None:
                    early[i] = error_row(members[i], one_line(exc))
                else:
                    listings[i] = got
                    revisions[i] = got.commit
    for i, m in enumerate(members):
        if i in early:
            continue
        try:
            keys[i] = cache.key(m, options, hub_key=listings[i].content_key if i in listings else None)
        except Exception:  # noqa: BLE001 - unreadable: the worker's row says why
            keys[i] = None
    return keys, revisions, early


# ------------------------------------------------------------------------------ executors
def _run_processes(members, todo, options, n: int, finish) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import threading

    methods = multiprocessing.get_all_start_methods()
    # fork starts workers at once with everything imported, but is only safe in a process with
    # one thread (the CLI); a threaded parent (a web server, Ray or Dask clients) uses forkserver.
    method = ("fork" if "fork" in methods and threading.active_count() == 1 else
              "forkserver" if "forkserver" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["lorarank.fleet.rows", "lorarank.audit"])
    queue = list(todo)
    window = 2 * n
    while queue:
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            pending: dict = {}
            broken = False
            try:
                while queue or pending:
                    while queue and len(pending) < window and not broken:
                        i = queue.pop(0)
                        pending[pool.submit(audit_member, members[i], options)] = i
                    got, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in got:
                        i = pending.pop(fut)
                        try:
                            finish(i, fut.result())
                        except BrokenProcessPool:
                            # A worker died (killed for memory, a crash in a library): this
                            # adapter and those in flight with it get the error; the rest go on
                            # in a new pool.
                            broken = True
                            finish(i, error_row(members[i], "the worker process auditing this "
                                                "adapter died (out of memory or a crash)"))
                    if broken:
                        for fut, i in pending.items():
                            finish(i, error_row(members[i], "the worker process auditing this "
                                                "adapter died (out of memory or a crash)"))
                        pending.clear()
                        break
            except BaseException:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _run_ray(members, todo, options, address: str, finish) -> int:
    try:
        import ray as _ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'lorarank[ray]'") from None
    if not _ray.is_initialized():
        try:
            _ray.init(address=None if address in ("", "local") else address, log_to_driver=False,
                      include_dashboard=False)
        except Exception as exc:  # noqa: BLE001 - one sentence for an unreachable cluster
            raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster ({one_line(exc)})") from None
    task = _ray.remote(num_cpus=1, max_retries=0)(audit_member)
    n = max(1, int(_ray.cluster_resources().get("CPU", 1)) or 1)
    queue = list(todo)
    pending: dict = {}
    try:
        while queue or pending:
            while queue and len(pending) < 2 * n:
                i = queue.pop(0)
                pending[task.remote(members[i], options)] = i
            ready, _ = _ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    row = _ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker crash is this member's row
                    row = error_row(members[i], f"the Ray task failed: {one_line(exc)}")
                finish(i, row)
    except BaseException:
        for ref in pending:
            _ray.cancel(ref, force=True)
        raise
    return n


def _run_dask(members, todo, options, dask: Any, finish) -> int:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("--dask needs Dask distributed: pip install 'lorarank[dask]'") from None
    own = not isinstance(dask, Client)
    if own:
        try:
            client = Client(dask, timeout=30)
        except Exception as exc:  # noqa: BLE001 - one sentence for an unreachable scheduler
            raise ConfigError(f"--dask {dask}: cannot connect to a Dask scheduler ({one_line(exc)})") from None
    else:
        client = dask
    try:
        n = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()))
        queue = list(todo)
        pending: dict = {}
        stream = as_completed()
        while queue and len(pending) < 2 * n:
            i = queue.pop(0)
            fut = client.submit(audit_member, members[i], options, pure=False)
            pending[fut.key] = i
            stream.add(fut)
        for fut in stream:
            i = pending.pop(fut.key)
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker crash is this member's row
                row = error_row(members[i], f"the Dask task failed: {one_line(exc)}")
            fut.release()
            finish(i, row)
            if queue:
                j = queue.pop(0)
                nxt = client.submit(audit_member, members[j], options, pure=False)
                pending[nxt.key] = j
                stream.add(nxt)
        return n
    finally:
        if own:
            client.close()
