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
    process; each task is one ``@ray.remote(num_cpus=1)`` call.
``dask``
    Dask distributed: ``distributed.Client(ADDRESS)`` (or a given ``Client``).

The parallel executors run tasks of several adapters (:func:`plan_tasks`): small adapters are
grouped, in member order, into tasks of roughly equal estimated cost (from the files' sizes),
so an engine's own cost per task (~10 ms of CPU on Dask or Ray, against ~3 ms to audit a small
adapter) is paid once per group; an adapter over :data:`LARGE_BYTES` (or of unknown size: the
Hub) is a task alone. A task is :func:`~lorarank.fleet.rows.audit_members`: one adapter after
another, each its own row (a bad member is its own error row, never its batch's); when a task
itself fails (its worker died), each of its adapters runs again as a task alone, and an
adapter that was alone in a failed task gets the error (with local processes, so do the
others alone in flight when the pool broke). Progress counts adapters as their tasks finish.

Ray and Dask are optional (``pip install lorarank[ray]`` / ``lorarank[dask]``) and imported
only here, only when asked. Workers on other machines must see the same files (a shared
folder) or read from the Hub; each worker holds one adapter at a time, and at most
``2 x workers`` tasks are in flight, so memory per worker stays that of one audit.

With a :class:`~lorarank.fleet.cache.ResultCache`, the keys are computed first (content
hashes; Hub listings in a few threads) and only the misses are sent to workers.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..documents import format_seconds
from .rows import FleetOptions, audit_member, audit_members, error_row, one_line
from .sources import Member

__all__ = ["FleetProgress", "FleetResult", "run_fleet", "EXECUTORS", "default_workers", "plan_tasks",
           "member_bytes", "estimated_seconds", "LARGE_BYTES", "TASK_SECONDS"]

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
    """Rows in the order of the members, and how they were obtained (``tasks``: how many tasks
    the executor ran them in, as planned by :func:`plan_tasks`; the serial executor's one per
    adapter)."""

    rows: list[dict]
    executor: str
    workers: int
    audited: int
    cached: int
    seconds: float
    notes: tuple[str, ...] = ()
    keys: tuple[str | None, ...] = field(default=(), repr=False)
    tasks: int = 0

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
        executor = "ray"
        n, tasks = _run_ray(members, todo, options, ray, finish)
    elif dask is not None:
        executor = "dask"
        n, tasks = _run_dask(members, todo, options, dask, finish)
    else:
        n = default_workers() if workers is None else workers
        n = max(1, min(n, len(todo))) if todo else n
        if n == 1:
            executor, tasks = "serial", len(todo)
            for i in todo:
                finish(i, audit_member(members[i], options))
        else:
            executor = "processes"
            tasks = _run_processes(members, todo, options, n, finish)
    if cache is not None:
        cache.flush()
    return FleetResult(rows=[r for r in rows], executor=executor, workers=n, audited=len(todo),
                       cached=cached, seconds=time.perf_counter() - start, notes=tuple(notes),
                       keys=tuple(keys), tasks=tasks)


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


# -------------------------------------------------------------------------------- tasks
#: An adapter whose files are larger than this (or whose size is not known before it is read: a
#: Hub adapter, a folder too long to list) is a task of its own, so a task never holds more than
#: one large adapter and a worker's memory stays that of one audit.
LARGE_BYTES = 8 * 2**20
#: Smallest and largest task, in estimated seconds of one core. Small adapters (a few ms each)
#: are grouped up to this so that an engine's own cost per task (~10 ms of CPU on Dask and Ray)
#: stays a few per cent; within it, tasks shrink towards the end of the fleet (guided
#: scheduling: ``remaining / (2 x workers)``) so that no worker is left with a long last task.
TASK_SECONDS = (0.05, 0.5)
#: The estimate of one adapter's cost on one core: fixed + per byte of its files (measured in
#: ``benchmarks/bench_fleet.py``: ~3 ms for a 180 kB PEFT adapter, ~0.5 s for 84 MB; headers
#: alone ~1 ms and ~25 ms).
_FIXED_SECONDS = {False: 2e-3, True: 1e-3}
_SECONDS_PER_BYTE = {False: 6e-9, True: 3e-10}
#: Entries of an adapter folder listed for its size; a longer folder is a task of its own.
_LIST_LIMIT = 256


def member_bytes(member: Member) -> int | None:
    """The size of a member's files as the driver sees them without reading them (``os.stat``),
    or None when it is not known before the adapter is read (a Hub adapter, a folder of more
    than a few hundred entries). A path that cannot be listed counts 0 bytes: its worker
    says why in one quick error row."""
    if member.hub:
        return None
    if member.files is not None:
        return sum(len(b) for _, b in member.files)
    from .sources import WEIGHT_SUFFIXES

    try:
        total = 0
        with os.scandir(member.path) as entries:   # a folder (most members); a file raises
            for k, entry in enumerate(entries):
                if k >= _LIST_LIMIT:
                    return None
                name = entry.name.lower()
                if (name.endswith(WEIGHT_SUFFIXES) or name.endswith(".json")) and entry.is_file():
                    total += entry.stat().st_size
        return total
    except NotADirectoryError:
        try:
            return os.stat(member.path).st_size
        except (OSError, TypeError, ValueError):
            return 0
    except (OSError, TypeError, ValueError):
        return 0


def estimated_seconds(member: Member, options: FleetOptions) -> float:
    """What one core is expected to spend on ``member`` (the planner's cost model: a fixed part
    and one per byte of its files); ``inf`` when its size is not known before it is read."""
    return _seconds(member_bytes(member), options)


def _seconds(size: int | None, options: FleetOptions) -> float:
    """:func:`estimated_seconds` of a member of ``size`` bytes (None: not known)."""
    if size is None:
        return float("inf")
    return _FIXED_SECONDS[options.screen] + _SECONDS_PER_BYTE[options.screen] * size


def plan_tasks(members: Sequence[Member], todo: Sequence[int], options: FleetOptions, *,
               workers: int) -> list[tuple[int, ...]]:
    """Group the members to audit into tasks of roughly equal estimated cost.

    Parameters
    ----------
    members : sequence of Member
    todo : sequence of int
        Indices into ``members`` still to audit (cache misses), in member order.
    options : FleetOptions
        ``options.screen`` picks the cost model (headers cost less than audits).
    workers : int
        Workers that will run the tasks (local processes, cluster CPUs).

    Returns
    -------
    list of tuple of int
        Every index of ``todo`` exactly once. A large adapter (over :data:`LARGE_BYTES`, or of
        unknown size) is a task alone; small ones are grouped in member order, consecutive
        indices, each group estimated at most ``TASK_SECONDS[1]``, smaller towards the end, and
        at least ``workers`` tasks when there are that many members. Tasks come largest first
        (longest-processing-time order: the long ones start first, the short ones fill in).
    """
    workers = max(1, int(workers))
    lo, hi = TASK_SECONDS
    alone: list[tuple[float, tuple[int, ...]]] = []
    small: list[tuple[int, float]] = []
    for i in todo:
        size = member_bytes(members[i])
        cost = _seconds(size, options)   # one listing per member
        if size is None or size > LARGE_BYTES:
            alone.append((cost, (i,)))
        else:
            small.append((i, cost))
    total = sum(c for _, c in small)
    spread = total / workers   # one task per worker at most: every worker gets work
    groups: list[tuple[float, list[int], float]] = []   # (cost, indices, target)
    remaining = total
    for i, c in small:
        if not groups or groups[-1][0] + c > groups[-1][2]:
            groups.append((0.0, [], min(hi, max(lo, remaining / (2 * workers)), spread)))
        cost, group, target = groups[-1]
        group.append(i)
        groups[-1] = (cost + c, group, target)
        remaining -= c
    if len(groups) > 1 and groups[-1][0] < groups[-1][2] / 2 and \
            groups[-2][0] + groups[-1][0] <= min(hi, 1.5 * groups[-2][2]):
        last = groups.pop()   # a short remainder joins the group before it
        groups[-1] = (groups[-1][0] + last[0], groups[-1][1] + last[1], groups[-1][2])
    tasks = alone + [(cost, tuple(group)) for cost, group, _ in groups]
    tasks.sort(key=lambda t: -t[0])   # stable: equal costs keep member order
    return [t for _, t in tasks]


def _outcome(task: tuple[int, ...], rows, failure: str | None, members, queue, finish) -> None:
    """A finished task: its rows, or, when the task itself failed (its worker died), each of its
    members again as a task of its own (so one crashing adapter takes no other row with it), and
    a member that failed alone is an error row."""
    if failure is None:
        for i, row in zip(task, rows):
            finish(i, row)
    elif len(task) > 1:
        queue.extendleft((i,) for i in reversed(task))
    else:
        finish(task[0], error_row(members[task[0]], failure))


_DIED = "the worker process auditing this adapter died (out of memory or a crash)"


# ------------------------------------------------------------------------------ executors
def _run_processes(members, todo, options, n: int, finish) -> int:
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import threading

    methods = multiprocessing.get_all_start_methods()
    # fork starts workers at once with everything imported, but is only safe in a process with
    # one thread (the CLI); a threaded parent (a web server, Ray or Dask clients) uses forkserver.
    method = ("fork" if "fork" in methods and threading.active_count() == 1 else
              "forkserver" if "forkserver" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":   # its workers inherit what the forkserver imported and set
        ctx.set_forkserver_preload(["lorarank.fleet._forkserver"])
    queue = deque(plan_tasks(members, todo, options, workers=n))
    planned = len(queue)
    window = 2 * n
    if method == "fork":
        # What forked workers use is imported once, here, not in each of them; and the
        # parent's objects are frozen out of the collector's reach while they run: a
        # collection in a worker would otherwise write to every inherited object and copy
        # every page of the parent (Python's gc.freeze documentation).
        import gc

        from .. import against_base, audit, hub, inits, resize  # noqa: F401 - what an audit imports
        from ..adapters import load_adapter  # noqa: F401
        import safetensors  # noqa: F401

        gc.freeze()
    # Workers are one per core: BLAS threads in them would only take cores from each other.
    # Forked workers inherit the parent's thread count as it is while they start, so BLAS is
    # set to one thread here and the workers never set it themselves: setting it in a forked
    # process starts OpenBLAS's thread pool again, whose new thread spins ~0.1 s on a core the
    # other worker needs (55-90 ms of CPU per worker, measured; Dask's and Ray's workers
    # start with OMP_NUM_THREADS=1 for the same reason). Forkserver's workers inherit it from
    # the forkserver (lorarank.fleet._forkserver).
    from ..spectrum import single_threaded_blas

    try:
        with single_threaded_blas():
            _pool_loop(members, queue, options, n, finish, ctx, window)
        return planned
    finally:
        if method == "fork":
            gc.unfreeze()


#: Seconds the workers get to exit once their pool is shut down, before they are terminated.
_EXIT_GRACE = 5.0


@contextlib.contextmanager
def _stopping(pool):
    """``pool``, shut down on leaving, its workers and threads gone when this returns.

    A worker killed (the OOM killer) while it waited for a task held the task queue's lock;
    when another worker's last result arrives together with that death, the pool reads the
    result, finds no work left and waits for each worker to take its stop signal from the
    queue, which the survivor can never do: the shutdown never returned. A watchdog thread
    terminates (then kills) the workers still running :data:`_EXIT_GRACE` seconds after the
    results are in (at once when the run was interrupted), so the shutdown returns.

    Only the pool's own thread waits for (reaps) its workers; the watchdog watches their
    sentinels. A second ``join`` from this thread raced with it: the loser's ``waitpid``
    failed, the worker looked alive, was sent a signal after it was gone, and the pool's
    thread outlived the run (a later run then saw a threaded process and used forkserver).
    """
    import multiprocessing
    import threading

    before = {c.pid for c in multiprocessing.active_children()}   # the pool starts its workers later
    grace = _EXIT_GRACE
    try:
        yield pool
    except BaseException:
        grace = 0.0   # interrupted: the rows still being computed are not wanted
        raise
    finally:
        ours = [c for c in multiprocessing.active_children() if c.pid not in before]
        watchdog = threading.Timer(grace, _end_workers, args=(ours,))
        watchdog.start()
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            watchdog.cancel()
            watchdog.join()


def _end_workers(procs) -> None:
    """Terminate, then kill, the processes of ``procs`` that have not exited (their sentinel
    is not ready: not exited, so not reaped, so their pid is still theirs)."""
    from multiprocessing.connection import wait as ready

    for stop in ("terminate", "kill"):
        gone = set(ready([p.sentinel for p in procs], timeout=0))
        running = [p for p in procs if p.sentinel not in gone]
        if not running:
            return
        for proc in running:
            getattr(proc, stop)()
        ready([p.sentinel for p in running], timeout=1.0)


def _pool_loop(members, queue, options, n: int, finish, ctx, window: int) -> None:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    while queue:
        with _stopping(ProcessPoolExecutor(max_workers=n, mp_context=ctx)) as pool:
            pending: dict = {}   # what is still queued is cancelled by _stopping's shutdown
            while queue or pending:
                broken = False
                while queue and len(pending) < window:
                    task = queue.popleft()
                    try:
                        pending[pool.submit(audit_members, [members[i] for i in task], options)] = task
                    except BrokenProcessPool:
                        _outcome(task, None, _DIED, members, queue, finish)
                        broken = True
                        break
                if not pending:
                    break
                got, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in got:
                    task = pending.pop(fut)
                    try:
                        rows = fut.result()
                    except BrokenProcessPool:
                        # A worker died (killed for memory, a crash in a library): the tasks
                        # in flight with it end too; batches are split and run again in a new
                        # pool, an adapter that was alone gets the error.
                        broken = True
                        _outcome(task, None, _DIED, members, queue, finish)
                    else:
                        _outcome(task, rows, None, members, queue, finish)
                if broken:
                    wait(list(pending))
                    for fut, task in pending.items():
                        failed = fut.exception() is not None
                        _outcome(task, None if failed else fut.result(), _DIED if failed else None,
                                 members, queue, finish)
                    pending.clear()
                    break


def _run_ray(members, todo, options, address: str, finish) -> tuple[int, int]:
    from collections import deque

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
    task_fn = _ray.remote(num_cpus=1, max_retries=0)(audit_members)
    n = max(1, int(_ray.cluster_resources().get("CPU", 1)) or 1)
    queue = deque(plan_tasks(members, todo, options, workers=n))
    planned = len(queue)
    pending: dict = {}
    try:
        while queue or pending:
            while queue and len(pending) < 2 * n:
                task = queue.popleft()
                pending[task_fn.remote([members[i] for i in task], options)] = task
            ready, _ = _ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    rows, failure = _ray.get(ref), None
                except Exception as exc:  # noqa: BLE001 - a worker crash: each member again, alone
                    rows, failure = None, f"the Ray task failed: {one_line(exc)}"
                _outcome(task, rows, failure, members, queue, finish)
    except BaseException:
        for ref in pending:
            _ray.cancel(ref, force=True)
        raise
    return n, planned


def _run_dask(members, todo, options, dask: Any, finish) -> tuple[int, int]:
    from collections import deque

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
        queue = deque(plan_tasks(members, todo, options, workers=n))
        planned = len(queue)
        pending: dict = {}
        stream = as_completed()

        def submit() -> None:
            task = queue.popleft()
            fut = client.submit(audit_members, [members[i] for i in task], options, pure=False)
            pending[fut.key] = task
            stream.add(fut)

        while queue and len(pending) < 2 * n:
            submit()
        for fut in stream:
            task = pending.pop(fut.key)
            try:
                rows, failure = fut.result(), None
            except Exception as exc:  # noqa: BLE001 - a worker crash: each member again, alone
                rows, failure = None, f"the Dask task failed: {one_line(exc)}"
            fut.release()
            _outcome(task, rows, failure, members, queue, finish)
            while queue and len(pending) < 2 * n:
                submit()
        return n, planned
    finally:
        if own:
            client.close()
