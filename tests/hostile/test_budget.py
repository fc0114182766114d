"""Work budgets, the server-wide queue and stopping (issue 12 "Seen" 3, issue 10 "Long runs").

URLs inside every per-field limit used to run for minutes unasked (d = 1024, 12 ranks of
~1000, 20000 Adam steps; a 192-cell grid of 5000 steps). Now each page estimates its work
(:mod:`lorarank.cost`) and runs it at once, asks for Run, or refuses past the server's cap.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lorarank import cost
from lorarank.fit import _macs_per_step
from lorarank.stability import run_stability
from ui import guard
from ui import stability as stab
from ui import sweep
from ui.common import md_plain

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
TIMEOUT = 300


@pytest.fixture(autouse=True)
def forget_finished_work():
    """Each test starts on a server that has finished nothing (the registry is process-wide)."""
    guard._DONE.clear()
    yield
    guard._DONE.clear()


def open_page(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at.switch_page(page).run()


# ------------------------------------------------------------------------------ estimates
class TestCost:
    def test_single_run_counts_the_engine_kernels(self):
        """One run: steps x the cheaper step form + elementwise updates, plus its measurement."""
        d_out, d_in, r, steps = 96, 80, 8, 300
        est = cost.fit_cost(d_out, d_in, [r], optimizer="sgd", steps=steps)
        step = min(_macs_per_step(d_out, d_in, r, "sgd")) + 4.0 * r * (d_out + d_in)
        final = d_out * d_in * r + 2.0 * r * r * (d_out + d_in) + 10.0 * r**3
        assert est.macs == pytest.approx(steps * step + final)

    def test_monotone(self):
        """More steps, ranks, width, cells or modules never cost less."""
        base = cost.sweep_cost(256, 256, [4, 16], steps=500).seconds
        assert cost.sweep_cost(256, 256, [4, 16], steps=1000).seconds > base
        assert cost.sweep_cost(256, 256, [4, 16, 64], steps=500).seconds > base
        assert cost.sweep_cost(512, 256, [4, 16], steps=500).seconds > base
        assert cost.sweep_cost(256, 256, [4, 16], optimizer="adam", steps=500).seconds > base
        g = cost.stability_cost(64, 64, [4, 8], n_lrs=3, n_rules=2, steps=200).seconds
        assert cost.stability_cost(64, 64, [4, 8], n_lrs=4, n_rules=2, steps=200).seconds > g
        a = cost.audit_cost([(128, 128, 8)] * 10).seconds
        assert cost.audit_cost([(128, 128, 8)] * 20).seconds > a

    def test_defaults_run_unasked(self):
        """The pages' default sweep and grid are under the ask threshold."""
        assert sweep.sweep_estimate(sweep.SweepConfig()).seconds < guard.ASK_SECONDS
        assert stab.grid_estimate(stab.StabilityConfig()).seconds < guard.ASK_SECONDS

    @pytest.mark.parametrize("estimate", [
        cost.sweep_cost(1024, 1024, list(range(1000, 1012)), optimizer="adam", steps=20000),
        cost.stability_cost(256, 256, [4, 8, 16, 32, 64, 128, 200, 256], n_lrs=8, n_rules=3,
                            steps=5000),
        cost.audit_cost([(8, 8, 1)] * 1_000_000),
    ], ids=["sweep-12x1000-adam-20000", "grid-192x5000", "audit-1e6-modules"])
    def test_issue_cases_are_past_the_cap(self, estimate):
        """Each case of issue 12 is estimated past the server's cap: refused, not run."""
        assert estimate.seconds > guard.MAX_SECONDS

    def test_issue10_sweep_asks(self):
        """Issue 10's d = 1024 Adam sweep of ranks 4..256 (129 s on a quiet machine) asks first."""
        est = cost.sweep_cost(1024, 1024, [4, 8, 16, 32, 64, 128, 256], optimizer="adam")
        assert guard.ASK_SECONDS < est.seconds
        assert est.seconds >= 129  # not an under-estimate of the measured 129 s

    @pytest.mark.parametrize("estimate, measured", [
        (cost.sweep_cost(64, 64, [2, 4, 16]), 0.16),
        (cost.sweep_cost(1024, 1024, [1, 2, 4, 8, 16, 32, 64], steps=200), 0.58),
        (cost.stability_cost(64, 64, [4, 8, 16, 32, 64], n_lrs=5, n_rules=4), 0.37),
        (cost.stability_cost(64, 64, [4, 8, 16, 32, 64], n_lrs=5, n_rules=4, optimizer="adam"), 1.05),
        (cost.stability_cost(256, 256, [4, 8, 32, 128], n_lrs=3, n_rules=4), 2.43),
        (cost.stability_cost(256, 256, [4, 8, 32, 128], n_lrs=3, n_rules=4, optimizer="adam"), 5.09),
    ], ids=["article-sweep", "sweep-1024-sgd-200", "grid-default", "grid-default-adam",
            "grid-cli", "grid-cli-adam"])
    def test_estimates_against_quiet_machine_figures(self, estimate, measured):
        """Against the README's quiet-machine benchmark figures: conservative, within 4x."""
        assert measured <= estimate.seconds <= 4 * measured

    def test_bad_inputs_are_config_errors(self):
        with pytest.raises(ValueError, match="rank"):
            cost.fit_cost(8, 8, [0])
        with pytest.raises(ValueError, match="module shape"):
            cost.audit_cost([(8, 8)])


# --------------------------------------------------------------------------------- queue
class TestQueue:
    def test_fifo_with_positions(self):
        """One slot: holders run one at a time, in arrival order; the line reports positions."""
        queue = guard.WorkQueue(1)
        order, positions, lock = [], {}, threading.Lock()
        gate_open = threading.Event()

        def worker(i: int) -> None:
            def on_wait(pos: int) -> None:
                with lock:
                    positions.setdefault(i, pos)
            with queue.slot(on_wait=on_wait, poll=0.01):
                with lock:
                    order.append(i)
                if i == 0:
                    gate_open.wait(5)

        threads = [threading.Thread(target=worker, args=(0,))]
        threads[0].start()
        while queue.running == 0:
            time.sleep(0.005)
        for i in (1, 2, 3):
            t = threading.Thread(target=worker, args=(i,))
            t.start()
            threads.append(t)
            while queue.waiting < i:
                time.sleep(0.005)
        gate_open.set()
        for t in threads:
            t.join(10)
        assert order == [0, 1, 2, 3]
        assert positions == {1: 1, 2: 2, 3: 3}
        assert queue.running == 0 and queue.waiting == 0

    def test_leaving_the_line_frees_it(self):
        """An exception while waiting (a rerun, a closed tab) removes the caller from the line."""
        queue = guard.WorkQueue(1)
        with queue.slot():
            def leave(pos: int) -> None:
                raise KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                with queue.slot(on_wait=leave):
                    pass
            assert queue.waiting == 0
        assert queue.running == 0
        with queue.slot():
            assert queue.running == 1

    def test_slots_bound_concurrency(self):
        """Never more than ``slots`` holders at once."""
        queue = guard.WorkQueue(2)
        peak, now, lock = [0], [0], threading.Lock()

        def worker() -> None:
            with queue.slot(poll=0.005):
                with lock:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                time.sleep(0.02)
                with lock:
                    now[0] -= 1

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert peak[0] == 2


# ------------------------------------------------------------------------------ the pages
class TestPages:
    @pytest.mark.parametrize("page, query", [
        ("pages/1_Rank_sweep.py", {"d_out": "1024", "d_in": "1024", "optimizer": "adam",
                                   "steps": "20000", "ranks": ",".join(map(str, range(1000, 1012)))}),
        ("pages/2_Alpha_r_stability.py", {"d_out": "256", "d_in": "256", "steps": "5000",
                                          "ranks": "4,8,16,32,64,128,200,256",
                                          "lrs": "0.001,0.002,0.003,0.005,0.01,0.02,0.03,0.05",
                                          "rules": "fixed-alpha"}),
    ], ids=["sweep-12x1000-adam-20000", "grid-64-cells-5000"])
    def test_long_links_are_refused_at_once(self, page, query):
        """One sentence naming the estimate and the cap; nothing runs (the page returns fast)."""
        start = time.perf_counter()
        at = open_page(page, **query)
        seconds = time.perf_counter() - start
        assert not at.exception
        shown = [md_plain(e.value) for e in at.error]
        assert len(shown) == 1, shown
        assert "estimated at about" in shown[0]
        assert f"at most {guard.MAX_SECONDS:.0f} s per request" in shown[0]
        assert not [d for d in at.dataframe if "r" in d.value.columns and "rel" in str(d.value.columns)]
        assert seconds < 60, seconds  # a refusal, not a run (generous for a loaded machine)

    def test_issue10_sweep_waits_for_run(self):
        """d = 1024, Adam, ranks 4..256: the estimate and a Run button; nothing is fitted."""
        start = time.perf_counter()
        at = open_page("pages/1_Rank_sweep.py", d_out="1024", d_in="1024", optimizer="adam",
                       ranks="4,8,16,32,64,128,256")
        assert time.perf_counter() - start < 60
        assert not at.exception and not at.error
        assert any("press Run to start it" in m.value for m in at.markdown)
        assert len(at.dataframe) == 0
        assert at.button(key=f"{sweep.GATE_KEY}_run").label == "Run"

    def test_stability_grid_192_cells_refused(self):
        """The issue's 192-cell grid (8 ranks x 8 lrs x 3 rules, 5000 steps) is refused."""
        at = open_page("pages/2_Alpha_r_stability.py", d_out="256", d_in="256", steps="5000",
                       ranks="4,8,16,32,64,128,200,256",
                       lrs="0.001,0.002,0.003,0.005,0.01,0.02,0.03,0.05")
        at.multiselect(key=stab.RULES_KEY).set_value(["fixed-alpha", "alpha-eq-r", "rslora"]).run()
        shown = [md_plain(e.value) for e in at.error]
        assert len(shown) == 1 and "per request" in shown[0], shown
        assert "What the grid shows" not in [s.value for s in at.subheader]

    def test_ask_then_run(self, monkeypatch):
        """Above the ask threshold: the estimate and a Run button, no results; Run runs it."""
        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-6)
        at = open_page("pages/1_Rank_sweep.py", ranks="2,4", steps="300")
        assert not at.exception and not at.error
        assert len(at.dataframe) == 0
        assert any("press Run to start it" in m.value for m in at.markdown)
        at.button(key=f"{sweep.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert list(at.dataframe[0].value["r"]) == [2, 4]
        # A rerun with the same settings does not ask again.
        at.run()
        assert list(at.dataframe[0].value["r"]) == [2, 4]

    def test_finished_ranks_are_kept(self, monkeypatch):
        """Ranks fitted one by one are shown when the whole sweep is not (yet) approved."""
        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-6)
        at = open_page("pages/1_Rank_sweep.py", ranks="2,4", steps="300")
        at.button(key=f"{sweep.GATE_KEY}_run").click().run()
        # Same settings with one more rank: asks again, and shows the two finished ranks.
        at2 = open_page("pages/1_Rank_sweep.py", ranks="2,4,16", steps="300")
        assert any("press Run" in m.value for m in at2.markdown)
        assert any("Showing the ranks already fitted: r = 2, 4 of 2, 4, 16" in c.value
                   for c in at2.caption)
        assert list(at2.dataframe[0].value["r"]) == [2, 4]


def test_rank_by_rank_grid_equals_batched():
    """Oracle: a grid merged from one-rank grids has the records of the one-call grid."""
    config = stab.StabilityConfig(d_out=32, d_in=24, ranks=(2, 4, 8), lrs=(0.003, 0.03),
                                  rules=("fixed-alpha", "rslora"), steps=120)
    parts = [stab._fit_grid(replace(config, ranks=(r,)), "test") for r in config.ranks]
    merged = stab._merge(config, parts)
    whole = run_stability(config.make_target(), ranks=config.ranks, rules=config.rules,
                          lrs=config.lrs, steps=config.steps, alpha=config.alpha,
                          seed=config.seed)
    assert [(r.rule, r.lr, r.rank) for r in merged.grid.records] == \
        [(r.rule, r.lr, r.rank) for r in whole.records]
    for a, b in zip(merged.grid.records, whole.records):
        assert a.diverged == b.diverged
        if a.rel_err is not None:
            assert a.rel_err == pytest.approx(b.rel_err, rel=1e-6)
    assert merged.grid.config == whole.config
    assert merged.grid.optimal_rel_err == pytest.approx(whole.optimal_rel_err)
