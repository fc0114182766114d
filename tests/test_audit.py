"""Tests of lorarank.audit: spectra vs dense SVD, metrics, budgets, resize round trips."""

from __future__ import annotations

import itertools
import json
import math

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save

from lorarank.adapters import Adapter, LoraModule, adapter_files, load_adapter, load_adapter_bytes
from lorarank.spectrum import single_threaded_blas
from lorarank.audit import (
    allocate_budget,
    audit_adapter,
    budget_curve,
    module_spectrum,
    resize_adapter,
)
from lorarank.errors import ConfigError
import testkit

SAMPLES = testkit.SAMPLES
needs_samples = testkit.needs(SAMPLES)
SAMPLE_FOLDERS = ["peft_llama_r8", "peft_llama_r32_rslora", "peft_llama_rank_pattern", "peft_gpt2_r4"]


def dense(m: LoraModule) -> np.ndarray:
    """Oracle: the dense update the layer adds."""
    dw = m.scale * (m.B.astype(np.float64) @ m.A.astype(np.float64))
    return dw.T if m.transposed else dw


def dense_svals(m: LoraModule) -> np.ndarray:
    return np.linalg.svd(dense(m), compute_uv=False)[: m.rank]


def best_rank_k(m: LoraModule, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(dense(m), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def synthetic_adapter(specs, *, seed=0, dtype=np.float64, fmt="npz") -> Adapter:
    """Modules with planted spectra: specs = [(d_out, d_in, r, scale, decay)]."""
    rng = np.random.default_rng(seed)
    modules = []
    for i, (d_out, d_in, r, scale, decay) in enumerate(specs):
        u, _ = np.linalg.qr(rng.standard_normal((d_out, r)))
        v, _ = np.linalg.qr(rng.standard_normal((d_in, r)))
        s = 10.0 * decay ** np.arange(r)
        B = (u * s).astype(dtype)
        A = (v.T * rng.uniform(0.5, 2.0, r)[:, None]).astype(dtype)
        modules.append(LoraModule(f"model.layers.{i}.mlp.proj", A, B, scale, alpha=scale * r))
    return Adapter(format=fmt, modules=modules, scaling="test", source="synthetic")


def hand_energy_rank(s, t):
    c = np.cumsum(s**2) / np.sum(s**2)
    return int(np.argmax(c >= t - 1e-15) + 1)


class TestModuleSpectrum:
    """The factored spectrum equals the dense SVD of scale * B @ A."""

    @pytest.mark.parametrize("d_out, d_in, r, scale", [(30, 20, 4, 2.0), (20, 30, 8, 0.5), (5, 40, 8, 1.0),
                                                       (40, 3, 6, -1.5), (16, 16, 16, 1.414)])
    def test_against_dense(self, d_out, d_in, r, scale):
        """Including r > d_out or r > d_in and a negative scale."""
        rng = np.random.default_rng(d_out + d_in + r)
        m = LoraModule("m", rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r)), scale)
        s = module_spectrum(m)
        assert s.shape == (min(r, d_out, d_in),)
        np.testing.assert_allclose(s, np.linalg.svd(dense(m), compute_uv=False)[: s.size], rtol=1e-10, atol=1e-12)

    def test_bf16_factors(self):
        """bfloat16 factors are converted exactly before the linear algebra."""
        rng = np.random.default_rng(1)
        m = LoraModule("m", rng.standard_normal((4, 50)).astype(ml_dtypes.bfloat16),
                       rng.standard_normal((60, 4)).astype(ml_dtypes.bfloat16), 2.0)
        np.testing.assert_allclose(module_spectrum(m), dense_svals(m), rtol=1e-10)

    def test_single_threaded_blas_nests_and_restores(self):
        """The BLAS thread guard nests, limits BLAS to one thread, restores it, and changes no result."""
        from threadpoolctl import threadpool_info

        def blas_threads():
            return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

        rng = np.random.default_rng(2)
        m = LoraModule("m", rng.standard_normal((4, 30)), rng.standard_normal((30, 4)), 1.0)
        before = blas_threads()
        with single_threaded_blas():
            with single_threaded_blas():
                inner = module_spectrum(m)
                assert all(n == 1 for n in blas_threads())
        assert blas_threads() == before
        np.testing.assert_allclose(inner, module_spectrum(m), rtol=1e-12)

    def test_single_threaded_blas_holds_while_any_thread_is_inside(self):
        """The thread count is the process's: two sessions' audits overlap on a shared server.
        Thread a opens the guard, b opens it, a leaves while b is still inside: BLAS keeps one
        thread for b (it went back to two there before), and the count is restored once both
        have left."""
        import threading

        from threadpoolctl import threadpool_info, threadpool_limits

        def blas_threads():
            return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        seen = []

        def a():
            with single_threaded_blas():
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def b():
            a_in.wait(10)
            with single_threaded_blas():
                b_in.set()
                a_out.wait(10)
                seen.append(blas_threads())

        with threadpool_limits(limits=2, user_api="blas"):
            threads = [threading.Thread(target=f) for f in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert seen == [{1}]
            assert blas_threads() == {2}


@needs_samples
class TestAuditSamples:
    """Audit of the real PEFT samples against dense oracles and hand-computed metrics."""

    @pytest.mark.parametrize("folder", SAMPLE_FOLDERS)
    def test_metrics(self, folder):
        """Spectrum, energy ranks, stable and entropy rank, recommendation and its error per module."""
        adapter = load_adapter(SAMPLES / folder)
        report = audit_adapter(adapter)
        assert len(report.modules) == len(adapter.modules)
        for m, rep in zip(adapter.modules, report.modules):
            s = dense_svals(m)
            np.testing.assert_allclose(rep.singular_values, s, rtol=1e-9)
            assert rep.energy_rank == {f"{t:g}": hand_energy_rank(s, t) for t in (0.9, 0.95, 0.99)}
            assert rep.stable_rank == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-9)
            p = s / s.sum()
            assert rep.entropy_rank == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-9)
            assert rep.recommended_rank == hand_energy_rank(s, 0.99)
            k = rep.recommended_rank
            err = np.linalg.norm(dense(m) - best_rank_k(m, k)) / np.linalg.norm(dense(m))
            assert rep.truncation_error == pytest.approx(err, rel=1e-6, abs=1e-9)
            assert rep.shape == (m.B.shape[0], m.A.shape[1]) and rep.scale == m.scale

    def test_summary_by_hand(self):
        """Parameters before/after and retained energy of the recommendation, computed by hand."""
        adapter = load_adapter(SAMPLES / "peft_llama_rank_pattern")
        report = audit_adapter(adapter, rule="sv_ratio", value=4.0)
        ks = [int(np.count_nonzero(dense_svals(m) > dense_svals(m)[0] / 4.0)) for m in adapter.modules]
        assert [r.recommended_rank for r in report.modules] == ks
        assert report.summary["params"] == sum(m.A.size + m.B.size for m in adapter.modules)
        assert report.summary["params_after"] == sum(k * sum(m.shape) for k, m in zip(ks, adapter.modules))
        kept = sum(np.sum(dense_svals(m)[:k] ** 2) for k, m in zip(ks, adapter.modules))
        total = sum(np.sum(dense_svals(m) ** 2) for m in adapter.modules)
        assert report.summary["retained_energy"] == pytest.approx(kept / total, rel=1e-9)

    def test_to_dict_is_json_with_contract_keys(self):
        """to_dict has PRODUCT.md's audit --json keys (plus the family fields) and survives strict JSON."""
        doc = audit_adapter(load_adapter(SAMPLES / "peft_gpt2_r4")).to_dict()
        json.dumps(doc, allow_nan=False)
        assert set(doc) == {"format", "modules", "summary"}
        assert set(doc["modules"][0]) == {"name", "shape", "rank", "alpha", "scale", "singular_values",
                                          "energy_rank", "stable_rank", "entropy_rank", "recommended_rank",
                                          "family", "spectrum_of", "stored_rank", "kept_rank", "magnitude",
                                          "norm", "relative_size", "flags", "update_rank"}
        assert doc["modules"][0]["family"] == "lora" and doc["modules"][0]["spectrum_of"] == "update s*B@A"
        assert set(doc["modules"][0]["energy_rank"]) == {"0.9", "0.95", "0.99"}
        assert doc["modules"][0]["name"] == "base_model.model.transformer.h.0.attn.c_attn"

    def test_progress(self):
        """progress is called with (0, n) first and (n, n) last, counting up."""
        adapter = load_adapter(SAMPLES / "peft_llama_r8")
        calls = []
        audit_adapter(adapter, progress=lambda done, total: calls.append((done, total)))
        assert calls == [(i, 14) for i in range(15)]

    def test_rank_map_and_table(self):
        """Rank-map records carry layer and module type; the table has one flat row per module."""
        report = audit_adapter(load_adapter(SAMPLES / "peft_llama_r8"))
        records = report.rank_map("energy_rank_0.9")
        assert {(r["layer"], r["module_type"]) for r in records} == \
            set(itertools.product([0, 1], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        assert all(isinstance(v, (int, float)) for row in report.table() for v in row.values() if v is not None
                   and not isinstance(v, str))
        with pytest.raises(ConfigError, match=r"`metric` should be one of"):
            report.rank_map("colour")

    @pytest.mark.parametrize("rule, value, pattern", [
        ("magic", 0.9, r"`rule` should be one of energy, sv_ratio"),
        ("energy", 1.5, r"`value` should be at most 1, got 1.5"),
        ("sv_ratio", 0.5, r"`value` should be at least 1, got 0.5"),
    ])
    def test_bad_rule(self, rule, value, pattern):
        """Bad rules and values are ConfigErrors naming them."""
        with pytest.raises(ConfigError, match=pattern):
            audit_adapter(load_adapter(SAMPLES / "peft_llama_r8"), rule=rule, value=value)


class TestBudget:
    """Global budgets allocated by largest sigma^2 first."""

    SPECS = [(12, 10, 4, 1.0, 0.5), (8, 14, 3, 2.0, 0.8), (10, 10, 5, 0.5, 0.3)]

    @pytest.mark.parametrize("budget", range(0, 13))
    def test_rank_budget_is_optimal(self, budget):
        """Greedy equals the best of all allocations with that many directions (brute force)."""
        adapter = synthetic_adapter(self.SPECS)
        spectra = [dense_svals(m) for m in adapter.modules]
        total = sum(np.sum(s**2) for s in spectra)
        best = max(sum(np.sum(s[:k] ** 2) for s, k in zip(spectra, ks)) / total
                   for ks in itertools.product(*(range(s.size + 1) for s in spectra)) if sum(ks) <= budget)
        alloc = allocate_budget(adapter, rank_budget=budget)
        assert alloc.retained_energy == pytest.approx(best, rel=1e-9)
        assert alloc.directions == min(budget, 12)

    @pytest.mark.parametrize("budget", [0, 20, 50, 100, 200, 500])
    def test_param_budget(self, budget):
        """A parameter budget is never exceeded and its retained energy is what its ranks keep."""
        adapter = synthetic_adapter(self.SPECS)
        report = audit_adapter(adapter)
        alloc = allocate_budget(report, param_budget=budget)
        assert alloc.params <= budget
        assert alloc.params == sum(k * sum(m.shape) for k, m in zip(alloc.ranks, adapter.modules))
        spectra = [dense_svals(m) for m in adapter.modules]
        kept = sum(np.sum(s[:k] ** 2) for s, k in zip(spectra, alloc.ranks))
        assert alloc.retained_energy == pytest.approx(kept / sum(np.sum(s**2) for s in spectra), rel=1e-9)

    def test_curve(self):
        """The budget curve is the cumulative sorted sigma^2 share, from 0 to 1."""
        adapter = synthetic_adapter(self.SPECS)
        curve = budget_curve(audit_adapter(adapter))
        energies = np.sort(np.concatenate([dense_svals(m) ** 2 for m in adapter.modules]))[::-1]
        np.testing.assert_allclose(curve["retained_energy"], np.concatenate([[0], np.cumsum(energies)]) / energies.sum(),
                                   rtol=1e-9)
        assert curve["directions"][-1] == 12 and curve["retained_energy"][-1] == pytest.approx(1.0)
        assert curve["params"][-1] == sum(m.A.size + m.B.size for m in adapter.modules)

    def test_exactly_one_budget(self):
        """Giving both budgets (or neither) is an error."""
        adapter = synthetic_adapter(self.SPECS)
        with pytest.raises(ConfigError, match="exactly one of `rank_budget` and `param_budget`"):
            allocate_budget(adapter)


class TestResize:
    """Resize gives the best rank-k approximation; resizing to >= r changes nothing."""

    @pytest.mark.parametrize("k", [1, 2, 3])
    def test_best_rank_k(self, k):
        """New factors multiply to the dense truncated SVD; errors are Eckart-Young's."""
        adapter = synthetic_adapter(TestBudget.SPECS)
        result = resize_adapter(adapter, rank=k)
        for old, new in zip(adapter.modules, result.adapter.modules):
            if k >= old.rank:
                assert new is old
                continue
            assert new.rank == k and new.scale == 1.0 and new.alpha == k
            np.testing.assert_allclose(dense(new), best_rank_k(old, k), atol=1e-10 * np.abs(dense(old)).max())
            err = np.linalg.norm(dense(old) - best_rank_k(old, k)) / np.linalg.norm(dense(old))
            assert result.errors[old.name] == pytest.approx(err, rel=1e-9)
        assert result.params_after == sum(min(k, m.rank) * sum(m.shape) for m in adapter.modules)

    @pytest.mark.parametrize("k", [5, 8, 100])
    def test_at_or_above_rank_changes_nothing(self, k):
        """Targets >= r return the very same modules."""
        adapter = synthetic_adapter([(12, 10, 5, 1.5, 0.5)])
        result = resize_adapter(adapter, rank=k)
        assert result.adapter.modules[0] is adapter.modules[0]
        assert result.errors == {adapter.modules[0].name: 0.0} and result.params_after == result.params_before

    def test_per_module_and_rule(self):
        """A mapping resizes only the named modules; a rule picks each module's own rank."""
        adapter = synthetic_adapter(TestBudget.SPECS)
        name = adapter.modules[1].name
        result = resize_adapter(adapter, rank={name: 1})
        assert [m.rank for m in result.adapter.modules] == [4, 1, 5]
        by_rule = resize_adapter(adapter, rule="energy", value=0.9)
        assert [m.rank for m in by_rule.adapter.modules] == \
            [hand_energy_rank(dense_svals(m), 0.9) for m in adapter.modules]
        with pytest.raises(ConfigError, match=r"`rank` names module 'nope', which the adapter does not have"):
            resize_adapter(adapter, rank={"nope": 1})

    def test_budget(self):
        """A global rank budget resizes to the allocation."""
        adapter = synthetic_adapter(TestBudget.SPECS)
        result = resize_adapter(adapter, rank_budget=6)
        assert [m.rank for m in result.adapter.modules] == \
            [max(k, 1) for k in allocate_budget(adapter, rank_budget=6).ranks]

    @pytest.mark.parametrize("kwargs, pattern", [({}, "exactly one of"), ({"rank": 2, "rule": "energy"}, "exactly one of"),
                                                 ({"rank": 0}, r"`rank` should be at least 1, got 0")])
    def test_bad_targets(self, kwargs, pattern):
        """Missing, double or non-positive targets are errors."""
        with pytest.raises(ConfigError, match=pattern):
            resize_adapter(synthetic_adapter(TestBudget.SPECS), **kwargs)

    @needs_samples
    @pytest.mark.parametrize("folder", SAMPLE_FOLDERS)
    def test_peft_file_round_trip(self, folder):
        """Written PEFT files re-audited give the truncated spectrum, module by module."""
        adapter = load_adapter(SAMPLES / folder)
        result = resize_adapter(adapter, rank=2)
        again = audit_adapter(load_adapter_bytes(adapter_files(result.adapter, format="peft")))
        before = {m.name: dense_svals(m) for m in adapter.modules}
        for rep in again.modules:
            assert rep.rank == 2
            np.testing.assert_allclose(rep.singular_values, before[rep.name][:2], rtol=1e-5)
        config = json.loads(adapter_files(result.adapter, format="peft")["adapter_config.json"])
        assert config["fan_in_fan_out"] == (folder == "peft_gpt2_r4")

    @needs_samples
    def test_mixed_resize_keeps_untouched_scales(self):
        """Resizing some rank_pattern modules keeps the others' scales exactly after a file round trip."""
        adapter = load_adapter(SAMPLES / "peft_llama_rank_pattern")
        q = [m.name for m in adapter.modules if m.name.endswith("q_proj")]
        result = resize_adapter(adapter, rank={n: 3 for n in q})
        back = load_adapter_bytes(adapter_files(result.adapter))
        for old, new in zip(adapter.modules, back.modules):
            if old.name in q:
                assert new.rank == 3 and new.scale == 1.0
            else:
                assert new.scale == pytest.approx(old.scale, rel=1e-12)
                np.testing.assert_array_equal(new.A, old.A)

    @pytest.mark.parametrize("fmt", ["kohya", "npz"])
    def test_kohya_and_npz_round_trip(self, fmt):
        """kohya (conv kernel restored) and npz outputs re-read to the truncated spectrum."""
        rng = np.random.default_rng(40)
        down = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
        up = rng.standard_normal((10, 6, 1, 1)).astype(np.float32)
        adapter = load_adapter_bytes({"k.safetensors": save({"c.lora_down.weight": down, "c.lora_up.weight": up,
                                                             "c.alpha": np.array(3.0, np.float32)})})
        result = resize_adapter(adapter, rank=2)
        (name, data), = adapter_files(result.adapter, format=fmt).items()
        back = load_adapter_bytes({name: data})
        np.testing.assert_allclose(module_spectrum(back.modules[0]), dense_svals(adapter.modules[0])[:2], rtol=1e-5)
        if fmt == "kohya":
            assert back.modules[0].kernel == (4, 3, 3)

    def test_bf16_resize_stays_bf16(self):
        """Resized bfloat16 factors are stored in bfloat16, within bf16 round-off of the optimum."""
        adapter = synthetic_adapter([(64, 48, 8, 2.0, 0.6)], dtype=ml_dtypes.bfloat16)
        result = resize_adapter(adapter, rank=3)
        new = result.adapter.modules[0]
        assert new.dtype == "bfloat16"
        np.testing.assert_allclose(module_spectrum(new), dense_svals(adapter.modules[0])[:3], rtol=2e-2)

    def test_progress(self):
        """resize reports progress up to (n, n)."""
        calls = []
        resize_adapter(synthetic_adapter(TestBudget.SPECS), rank=2, progress=lambda d, t: calls.append((d, t)))
        assert calls[0] == (0, 3) and calls[-1] == (3, 3)
