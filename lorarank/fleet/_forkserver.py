"""Imported once by the forkserver that starts the local fleet workers of a threaded process
(a web server, a process holding a Ray or Dask client): what the workers run is imported here,
not in each of them, and BLAS keeps to one thread in every process it forks.

The workers are one per core, so BLAS threads in them would only take cores from each other;
and a forked process that sets the thread count itself starts OpenBLAS's thread pool again,
whose new thread spins ~0.1 s (see ``runner._run_processes``). With one thread inherited,
:func:`lorarank.spectrum.single_threaded_blas` leaves the count alone.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from .. import audit  # noqa: F401 - what an audit imports
from .rows import audit_members  # noqa: F401

threadpool_limits(limits=1, user_api="blas")
