"""The fleet on real clusters: a local Ray (``ray.init(num_cpus=2)``) and a Dask ``LocalCluster``
(two worker processes) give exactly the rows of local processes, failures included, in member
order, with the adapters grouped into tasks (bad members inside batches of good ones).

One cluster of each per test session (their start-up is the cost, ~10 s for Ray on two busy
cores); skipped with the reason when Ray or Dask distributed is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorarank.fleet import FleetOptions, expand_sources, plan_tasks, run_fleet
from test_fleet import SAMPLES, bad_fleet, write_peft

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lorarank[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A busy 2-core machine can take longer than Ray's default 10 s to register its raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    except Exception as exc:  # noqa: BLE001 - the machine, not lorarank: say so and skip
        ray.shutdown()
        pytest.skip(f"a local Ray could not start on this machine: {' '.join(str(exc).split())[:200]}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dask_client():
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed "
                                                            "(pip install 'lorarank[dask]')")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    folder = bad_fleet(root)
    for i in range(3):
        write_peft(folder / f"g{i}", r=3 + 3 * i, seed=20 + i)
    sources = [str(folder)]
    if SAMPLES.is_dir():
        sources += [str(SAMPLES / "families" / "lycoris_lokr.safetensors"), str(SAMPLES / "peft_llama_r8")]
    members = expand_sources(sources).members
    return members, run_fleet(members, FleetOptions(), workers=2)


def check_batches(members, result, screen) -> None:
    """The run was made of the planned tasks: fewer than adapters, each failing member in a
    task with good ones, and every row where its member is."""
    tasks = plan_tasks(members, range(len(members)), FleetOptions(screen=screen), workers=2)
    assert result.tasks == len(tasks) < len(members)
    ok = [r["ok"] for r in result.rows]
    assert any(any(ok[i] for i in t) and not all(ok[i] for i in t) for t in tasks)
    assert [r["source"] for r in result.rows] == [m.source for m in members]


@pytest.mark.parametrize("screen", [False, True])
def test_ray_gives_the_local_rows(ray_cluster, fleet, screen):
    members, local = fleet
    if screen:
        local = run_fleet(members, FleetOptions(screen=True), workers=2)
    on_ray = run_fleet(members, FleetOptions(screen=screen), ray="auto")
    assert on_ray.executor == "ray" and on_ray.workers == 2
    assert on_ray.rows == local.rows
    assert sum(not r["ok"] for r in on_ray.rows) == 5
    check_batches(members, on_ray, screen)


@pytest.mark.parametrize("screen", [False, True])
def test_dask_gives_the_local_rows(dask_client, fleet, screen):
    members, local = fleet
    if screen:
        local = run_fleet(members, FleetOptions(screen=True), workers=2)
    on_dask = run_fleet(members, FleetOptions(screen=screen), dask=dask_client)
    assert on_dask.executor == "dask" and on_dask.workers == 2
    assert on_dask.rows == local.rows
    check_batches(members, on_dask, screen)


def test_dask_by_address(dask_client, fleet):
    members, local = fleet
    address = dask_client.scheduler.address
    assert run_fleet(members[:3], FleetOptions(), dask=address).rows == local.rows[:3]
