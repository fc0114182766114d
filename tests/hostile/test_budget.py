"""Work budgets, the server-wide queue and stopping (issue 12 "Seen" 3, issue 10 "Long runs").

URLs inside every per-field limit used to run for minutes unasked (d = 1024, 12 ranks of
~1000, 20000 Adam steps; a 192-cell grid of 5000 steps). Now each page estimates its work
(:mod:`lorarank.cost`) and runs it at once, asks for Run, or refuses past the server's cap.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from lorarank import cost
from lorarank.fit import macs_per_step
from lorarank.stability import run_stability
from ui import guard
from ui import stability as stab
from ui import sweep
from markdown_tables import tables
from ui.common import md_plain
import testkit

TIMEOUT = 300


@pytest.fixture(autouse=True)
def forget_finished_work():
    """Each test starts on a server that has finished nothing (the registry is process-wide)."""
    guard._DONE.clear()
    yield
    guard._DONE.clear()


def open_page(page: str, **query: str) -> AppTest:
    return testkit.open_page(page, query, timeout=TIMEOUT, home_first=False)


# ------------------------------------------------------------------------------ estimates
class TestCost:
    def test_single_run_counts_the_engine_kernels(self):
        """One run: its initial A moved to T's basis (SGD), steps x the cheaper step form +
        elementwise updates, plus its measurement."""
        d_out, d_in, r, steps = 96, 80, 8, 300
        est = cost.fit_cost(d_out, d_in, [r], optimizer="sgd", steps=steps)
        step = min(macs_per_step(d_out, d_in, r, "sgd")) + 4.0 * r * (d_out + d_in)
        final = d_out * d_in * r + 2.0 * r * r * (d_out + d_in) + 10.0 * r**3
        assert est.macs == pytest.approx(r * d_in * d_in + steps * step + final)

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
        """Against the quiet-machine benchmark figures (docs/benchmarks.md): conservative, within 4x."""
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
        assert not [t for t in tables(at) if "final relative error" in t[0]]  # the sweep's table
        assert seconds < 60, seconds  # a refusal, not a run (generous for a loaded machine)

    def test_issue10_sweep_waits_for_run(self):
        """d = 1024, Adam, ranks 4..256: the estimate and a Run button; nothing is fitted."""
        start = time.perf_counter()
        at = open_page("pages/1_Rank_sweep.py", d_out="1024", d_in="1024", optimizer="adam",
                       ranks="4,8,16,32,64,128,256")
        assert time.perf_counter() - start < 60
        assert not at.exception and not at.error
        assert any("press Run to start it" in md_plain(m.value) for m in at.markdown)
        assert len(at.dataframe) == 0 and not tables(at)
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
        assert len(at.dataframe) == 0 and not tables(at)
        assert any("press Run to start it" in md_plain(m.value) for m in at.markdown)
        at.button(key=f"{sweep.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert [row["r"] for row in tables(at)[0]] == ["2", "4"]
        # A rerun with the same settings does not ask again.
        at.run()
        assert [row["r"] for row in tables(at)[0]] == ["2", "4"]

    def test_finished_ranks_are_kept(self, monkeypatch):
        """Ranks fitted one by one are shown when the whole sweep is not (yet) approved."""
        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-6)
        at = open_page("pages/1_Rank_sweep.py", ranks="2,4", steps="300")
        at.button(key=f"{sweep.GATE_KEY}_run").click().run()
        # Same settings with one more rank: asks again, and shows the two finished ranks.
        at2 = open_page("pages/1_Rank_sweep.py", ranks="2,4,16", steps="300")
        assert any("press Run" in md_plain(m.value) for m in at2.markdown)
        assert any("Showing the ranks already fitted: r = 2, 4 of 2, 4, 16" in md_plain(c.value)
                   for c in at2.caption)
        assert [row["r"] for row in tables(at2)[0]] == ["2", "4"]


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


# ------------------------------------------------------------------------- the data mode
class TestDataCost:
    def test_counts_data_macs_plus_elementwise(self):
        """One run: the engine's own MAC count (data_macs) plus the optimiser's elementwise
        updates and, for minibatches, gathering each batch; numpy calls per step."""
        from lorarank.data import DataConfig, data_macs

        d_out, d_in, r, steps = 48, 40, 6, 300
        for batch in (None, 16):
            data = DataConfig(samples=200, batch_size=batch, heldout=100)
            est = cost.data_fit_cost(d_out, d_in, [r], data=data, optimizer="adam", steps=steps)
            engine = data_macs(d_out, d_in, [r], config=data, steps=steps, optimizer="adam")
            gather = 0.0 if batch is None else 16 * (d_in + d_out) + 2.0 * 16 * d_out
            assert est.macs == pytest.approx(engine + steps * (16.0 * r * (d_out + d_in) + gather))
            assert est.calls == pytest.approx(steps * (70.0 + 30.0) + 60.0 + 40.0)  # + 30 per distinct rank
            assert est.bytes >= 8 * (200 + 100) * (d_in + d_out)  # the pairs are held

    def test_progress_counts_the_steps_estimated(self):
        """The estimate assumes every run takes all steps: exactly what the engine ticks."""
        from lorarank.data import DataConfig, fit_data
        from lorarank.synthetic import make_target

        ticks = []
        fit_data(make_target(16, 12, true_rank=2, seed=0), [1, 2, 4],
                 data=DataConfig(samples=50, batch_size=10), steps=40,
                 progress=lambda done, total: ticks.append((done, total)))
        assert ticks[-1] == (3 * 40, 3 * 40)

    @pytest.mark.parametrize("estimate, cpu", [
        (cost.data_sweep_cost(64, 64, [2, 4, 16], samples=[128, 512, 2048], steps=2000), 1.397),
        (cost.data_sweep_cost(64, 64, [2, 4, 16], samples=[512], batch_size=32, optimizer="adam",
                              steps=1000), 0.253),
        (cost.data_sweep_cost(256, 256, [8, 64], samples=[2048], batch_size=256, steps=300), 1.129),
        (cost.data_sweep_cost(256, 256, [4, 32], samples=[4096], batch_size=64, steps=500), 0.598),
        (cost.data_sweep_cost(512, 512, [16, 128], samples=[8192], optimizer="adam", steps=200), 3.956),
    ], ids=["sweep-64-full", "sweep-64-adam-b32", "sweep-256-b256", "sweep-256-b64", "sweep-512-adam-full"])
    def test_estimates_against_measured_cpu(self, estimate, cpu):
        """Against the engine's CPU seconds (one BLAS thread) from ``bench_cost.py``'s data
        cases, as the exact-mode estimates are: within 0.75x..4x (figures of a loaded machine,
        whose CPU seconds run long, so the lower bound has some slack)."""
        assert 0.75 * cpu <= estimate.seconds <= 4 * cpu

    def test_grid_estimate_follows_the_data_mode(self):
        """A stability grid in the data mode is estimated on its pairs, not on T."""
        from lorarank.data import DataConfig

        exact = stab.StabilityConfig(d_out=256, d_in=256)
        data = replace(exact, data=DataConfig(samples=4096, batch_size=1024))
        assert stab.grid_estimate(data) == cost.stability_cost(
            256, 256, exact.ranks, n_lrs=len(exact.lrs), n_rules=len(exact.rules),
            steps=exact.steps, data=data.data)
        assert stab.grid_estimate(data).seconds > 2 * stab.grid_estimate(exact).seconds


class TestDataPages:
    def test_data_sweep_asks_then_runs(self, monkeypatch):
        """Between the exact sweep's estimate and the data sweep's: the exact results show, the
        data mode waits for Run (in its tab), then runs."""
        from ui import datamode

        config = sweep.SweepConfig()
        data_config = datamode.DataSweepConfig(sweep=config)
        exact_s = sweep.sweep_estimate(config).seconds
        data_s = datamode.data_estimate(data_config).seconds
        assert data_s > 1.5 * exact_s
        monkeypatch.setattr(guard, "ASK_SECONDS", (exact_s + data_s) / 2)
        at = open_page("pages/1_Rank_sweep.py", mode="data")
        assert not at.exception and not at.error
        assert any("finite-data sweep is estimated at" in md_plain(m.value) and "press Run" in md_plain(m.value)
                   for m in at.markdown)
        assert not any("held-out loss" in d.value.columns for d in at.dataframe)
        at.button(key=f"{datamode.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert any("held-out loss" in d.value.columns for d in at.dataframe)

    def test_stop_keeps_finished_sample_sizes(self, monkeypatch):
        """A long data sweep runs n by n; Stop pressed while n = 128 trains (its callback, then
        the rerun that interrupts the run) keeps n = 64: the table shows its rows, equal to
        the engine's, with a caption naming what finished. Run again trains only n = 128."""
        from lorarank.data import DataConfig, fit_data
        from lorarank.synthetic import make_target
        from ui import datamode

        query = {"mode": "data", "samples": "64,128", "ranks": "2,4", "steps": "210"}
        config = datamode.DataSweepConfig(sweep=sweep.SweepConfig(ranks=(2, 4), steps=210),
                                          samples=(64, 128))
        exact_s = sweep.sweep_estimate(config.sweep).seconds
        monkeypatch.setattr(guard, "ASK_SECONDS",
                            (exact_s + datamode.data_estimate(config).seconds) / 2)
        calls = []

        def fit_then_stop(*args, data, **kwargs):
            calls.append(data.samples)
            if data.samples == 128 and calls.count(128) == 1:
                guard._stop(datamode.GATE_KEY, ("data-sweep", config))  # Stop's on_click
                st.rerun()  # what Streamlit raises at the run's next progress tick
            return fit_data(*args, data=data, **kwargs)

        monkeypatch.setattr(datamode, "fit_data", fit_then_stop)
        at = open_page("pages/1_Rank_sweep.py", **query)
        assert any("finite-data sweep is estimated at" in md_plain(m.value) for m in at.markdown)
        at.button(key=f"{datamode.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert calls == [64, 128]
        assert any("**Stopped.**" in md_plain(m.value) and "sample sizes that finished are kept" in m.value
                   for m in at.markdown)
        assert any("Showing the sample sizes already trained on: n = 64 of 64, 128." in md_plain(c.value)
                   for c in at.caption)
        (frame,) = [d.value for d in at.dataframe if "held-out loss" in d.value.columns]
        assert frame["n"].tolist() == [64, 64] and frame["r"].tolist() == [2, 4]
        engine = fit_data(make_target(), [2, 4], data=DataConfig(samples=64), steps=210,
                          lr=config.lr_used)
        assert frame["held-out loss"].tolist() == [f"{r.heldout_loss:.4g}" for r in engine]

        at.button(key=f"{datamode.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert calls == [64, 128, 128]  # n = 64 was kept, not trained again
        (frame,) = [d.value for d in at.dataframe if "held-out loss" in d.value.columns]
        assert frame["n"].tolist() == [64, 64, 128, 128]
        assert frame["held-out loss"].tolist()[:2] == [f"{r.heldout_loss:.4g}" for r in engine]

    def test_data_sweep_past_the_cap_is_refused(self, monkeypatch):
        """Past the server's cap: one sentence naming the estimate and the cap; the exact
        sweep (cheaper) still shows."""
        from ui import datamode

        config = sweep.SweepConfig()
        exact_s = sweep.sweep_estimate(config).seconds
        data_s = datamode.data_estimate(datamode.DataSweepConfig(sweep=config)).seconds
        monkeypatch.setattr(guard, "ASK_SECONDS", exact_s * 1.1)
        monkeypatch.setattr(guard, "MAX_SECONDS", (exact_s * 1.1 + data_s) / 2)
        at = open_page("pages/1_Rank_sweep.py", mode="data")
        assert not at.exception
        shown = [md_plain(e.value) for e in at.error]
        assert len(shown) == 1 and "finite-data sweep is estimated at about" in shown[0], shown
        assert "per request" in shown[0]
        assert any("Eckart-Young optimum" in t[0] for t in tables(at))  # the exact sweep ran
        assert not any("held-out loss" in d.value.columns for d in at.dataframe)

    def test_data_grid_is_gated_on_its_own_estimate(self, monkeypatch):
        """A data-mode grid whose exact twin would run unasked waits for Run."""
        from lorarank.data import DataConfig

        query = {"d_out": "256", "d_in": "256", "mode": "data", "samples": "4096", "batch_size": "1024"}
        exact = stab.StabilityConfig(d_out=256, d_in=256)
        data = replace(exact, data=DataConfig(samples=4096, batch_size=1024))
        monkeypatch.setattr(guard, "ASK_SECONDS", (stab.grid_estimate(exact).seconds
                                                   + stab.grid_estimate(data).seconds) / 2)
        at = open_page("pages/2_Alpha_r_stability.py", **query)
        assert not at.exception and not at.error
        assert any("grid is estimated at" in md_plain(m.value) and "press Run" in md_plain(m.value) for m in at.markdown)


class TestAuditGate:
    def test_audit_asks_then_runs(self, monkeypatch):
        """A long audit waits for Run (no "ranks are kept" promise: it is not rank by rank);
        Run audits; a rerun does not ask again."""
        from ui import audit as audit_ui

        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-6)
        at = open_page("pages/3_Adapter_audit.py", demo="true")
        assert not at.exception and not at.error
        asks = [md_plain(m.value) for m in at.markdown if "press Run to start it" in md_plain(m.value)]
        assert len(asks) == 1 and "audit of 14 modules" in asks[0]
        assert "ranks that finished are kept" not in asks[0]
        assert not [d for d in at.dataframe if "module" in d.value.columns]
        at.button(key=f"{audit_ui.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert [d for d in at.dataframe if "module" in d.value.columns]
        at.run()
        assert [d for d in at.dataframe if "module" in d.value.columns]
        assert not any("press Run" in md_plain(m.value) for m in at.markdown)

    def test_stopped_audit_asks_again(self, monkeypatch):
        """Stop (its callback) withdraws the approval: the next run shows "Stopped." and Run,
        even though the audit had finished (a stop must not be undone by the cache)."""
        from ui import audit as audit_ui

        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-6)
        at = open_page("pages/3_Adapter_audit.py", demo="true")
        at.button(key=f"{audit_ui.GATE_KEY}_run").click().run()
        ident = at.session_state[f"{audit_ui.GATE_KEY}_approved"]
        at.session_state[f"{audit_ui.GATE_KEY}_stopped"] = ident  # what Stop's on_click does
        del at.session_state[f"{audit_ui.GATE_KEY}_approved"]
        at.run()
        assert not at.exception
        assert any(md_plain(m.value).startswith("**Stopped.**") for m in at.markdown)
        assert not [d for d in at.dataframe if "module" in d.value.columns]

    def test_compare_is_gated(self, monkeypatch):
        """The comparison has its own estimate and Run."""
        from ui import audit as audit_ui

        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-6)
        at = open_page("pages/3_Adapter_audit.py", demo="true", compare="true", tab="Compare")
        at.button(key=f"{audit_ui.GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert any("comparison of 28 modules is estimated" in md_plain(m.value) for m in at.markdown)
        at.button(key=f"{audit_ui.COMPARE_GATE_KEY}_run").click().run()
        assert not at.exception and not at.error
        assert [d for d in at.dataframe if "phi(k, k)" in d.value.columns]
