"""Intruder dimensions, amplification and mitigation: the fast path against the definition.

Oracles: dense float64 SVDs of ``W0 + dW`` (:func:`intruders_dense`, itself checked against a
hand-written copy of PEFT's three lines), and the float64 truth files of the real PEFT adapters
in ``../shared/samples/base_relative`` (PEFT's own intruder counts and its mitigated adapter).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lorarank.base_svd import base_svd
from lorarank.errors import ConfigError
from lorarank.intruders import (
    DEFAULT_EPSILON,
    DEFAULT_TOP_K,
    intruder_cosines,
    intruders_dense,
    intruders_lowrank,
    mitigation_factors,
)
from lorarank.spectrum import factored_svd, single_threaded_blas

@pytest.fixture(autouse=True)
def one_blas_thread():
    """The tests' own dense SVDs with one BLAS thread (spinning threads on busy cores)."""
    with single_threaded_blas():
        yield


SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "base_relative"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"base_relative samples not found at {SAMPLES}")


def peft_definition(W0: np.ndarray, W: np.ndarray, top_k: int, eps: float):
    """PEFT's lines, in numpy: U_base, U_merged, (U_merged.T @ U_base).abs().max(dim=1)."""
    U_base = np.linalg.svd(W0, full_matrices=False)[0]
    U_merged = np.linalg.svd(W, full_matrices=False)[0]
    cos_sim = np.abs(U_merged.T @ U_base).max(axis=1)
    return cos_sim[:top_k], [int(i) for i in np.flatnonzero(cos_sim[:top_k] < eps)]


def problem(m: int, n: int, r: int, seed: int = 0, size: float = 0.6):
    """A base with a decaying spectrum (3 down to 0.05) and a random rank-r update."""
    rng = np.random.default_rng(seed)
    U, _, Vt = np.linalg.svd(rng.standard_normal((m, n)), full_matrices=False)
    W0 = (U * np.geomspace(3.0, 0.05, min(m, n))) @ Vt
    return W0, size * rng.standard_normal((m, r)), size * rng.standard_normal((r, n))


SHAPES = [(120, 80, 6), (80, 120, 6), (300, 200, 8), (200, 300, 8)]


class TestDefinition:
    @pytest.mark.parametrize("m,n,r", SHAPES)
    def test_dense_is_peft_definition(self, m, n, r):
        """intruders_dense gives exactly PEFT's cosines and indices."""
        W0, L, R = problem(m, n, r)
        got = intruders_dense(W0, W0 + L @ R)
        cos, idx = peft_definition(W0, W0 + L @ R, DEFAULT_TOP_K, DEFAULT_EPSILON)
        assert list(got.indices) == idx
        np.testing.assert_allclose(got.max_cos, cos, atol=1e-12)
        assert got.count == len(idx) > 0

    def test_no_update_no_intruders(self):
        """W = W0: every top direction is a base direction (|cos| = 1)."""
        W0, _, _ = problem(60, 40, 2)
        got = intruders_dense(W0, W0.copy())
        assert got.count == 0 and got.share == 0.0
        np.testing.assert_allclose(got.max_cos, 1.0, atol=1e-10)

    def test_svd_input_and_share(self):
        """Given the SVD of W instead of W; share = intruders' sigma^2 / ||W||_F^2."""
        W0, L, R = problem(90, 70, 5, seed=3)
        W = W0 + L @ R
        U, S, _ = np.linalg.svd(W, full_matrices=False)
        a = intruders_dense(W0, svd=(U, S))
        b = intruders_dense(base_svd(W0, precision="float64"), W)
        assert a.indices == b.indices
        idx = list(a.indices)
        assert a.share == pytest.approx(np.sum(S[idx] ** 2) / np.sum(W * W), rel=1e-12)

    def test_top_k_and_epsilon(self):
        """top_k is clipped to min(m, n); epsilon 0 finds none, epsilon 1 finds every one below 1."""
        W0, L, R = problem(12, 8, 3, seed=5)
        W = W0 + 3 * L @ R
        assert intruders_dense(W0, W, top_k=50).top_k == 8
        assert intruders_dense(W0, W, epsilon=0.0).count == 0
        every = intruders_dense(W0, W, top_k=8, epsilon=1.0)
        assert every.count == int(np.sum(every.max_cos < 1.0))

    @pytest.mark.parametrize("kwargs, message", [
        ({"top_k": 0}, "`top_k` should be at least 1, got 0"),
        ({"epsilon": 1.5}, "`epsilon` should be at most 1, got 1.5"),
        ({"epsilon": float("nan")}, "`epsilon` should be finite, got nan"),
    ])
    def test_bad_options(self, kwargs, message):
        """Bad knobs are one sentence naming the value."""
        W0, L, R = problem(20, 10, 2)
        with pytest.raises(ConfigError) as err:
            intruders_dense(W0, W0 + L @ R, **kwargs)
        assert str(err.value) == message

    def test_cosines_need_same_rows(self):
        """intruder_cosines refuses mismatched matrices."""
        with pytest.raises(ConfigError, match="should both have m rows"):
            intruder_cosines(np.eye(4), np.eye(3))


class TestLowRank:
    @pytest.mark.parametrize("m,n,r", SHAPES)
    @pytest.mark.parametrize("method", ["dense", "iterative"])
    def test_float64_equals_dense(self, m, n, r, method):
        """From a float64 base SVD: indices, cosines, sigma, shares equal the dense definition."""
        W0, L, R = problem(m, n, r, seed=m + n)
        ref = intruders_dense(W0, W0 + L @ R, W0=W0)
        got = intruders_lowrank(base_svd(W0, precision="float64"), W0, L, R, method=method)
        i = got.intruders
        assert i.indices == ref.indices
        np.testing.assert_allclose(i.max_cos, ref.max_cos, atol=1e-10)
        np.testing.assert_array_equal(i.nearest, ref.nearest)
        np.testing.assert_allclose(i.singular_values, ref.singular_values, rtol=1e-11)
        assert i.share == pytest.approx(ref.share, abs=1e-12)
        assert i.share_of_update == pytest.approx(ref.share_of_update, abs=1e-12)
        assert got.update_norm == pytest.approx(np.linalg.norm(L @ R), rel=1e-12)
        assert got.merged_norm == pytest.approx(np.linalg.norm(W0 + L @ R), rel=1e-12)

    @pytest.mark.parametrize("m,n,r", SHAPES[:2])
    def test_float32_base_is_peft_precision(self, m, n, r):
        """A float32 base SVD (PEFT's precision) gives the same intruders, cosines to ~1e-5."""
        W0, L, R = problem(m, n, r, seed=7)
        ref = intruders_dense(W0, W0 + L @ R)
        i = intruders_lowrank(base_svd(W0), W0.astype(np.float32), L, R).intruders
        assert i.indices == ref.indices
        np.testing.assert_allclose(i.max_cos, ref.max_cos, atol=1e-4)
        np.testing.assert_allclose(i.singular_values, ref.singular_values, rtol=1e-5)

    @pytest.mark.parametrize("m,n,r", SHAPES)
    def test_amplification(self, m, n, r):
        """||dW||_F / ||U_r^T W0 V_r||_F as Hu et al. define it, from the dense SVD of dW."""
        W0, L, R = problem(m, n, r, seed=11)
        dW = L @ R
        U, _, Vt = np.linalg.svd(dW)
        want = np.linalg.norm(dW) / np.linalg.norm(U[:, :r].T @ W0 @ Vt[:r].T)
        got = intruders_lowrank(base_svd(W0, precision="float64"), W0, L, R).amplification
        assert got == pytest.approx(want, rel=1e-10)

    def test_zero_update(self):
        """A zero update: no intruders, no amplification, share_of_update undefined."""
        W0, L, R = problem(50, 30, 4)
        got = intruders_lowrank(base_svd(W0, precision="float64"), W0, 0 * L, R)
        assert got.intruders.count == 0 and got.amplification is None
        assert got.intruders.share_of_update is None and got.update_norm == 0.0

    def test_vectors_are_the_intruders_triplets(self):
        """vectors=True gives the singular triplets of W0 + dW at the intruders (up to sign)."""
        W0, L, R = problem(200, 150, 8, seed=2)
        got = intruders_lowrank(base_svd(W0, precision="float64"), W0, L, R, vectors=True)
        u, s, v = got.vectors
        U, S, Vt = np.linalg.svd(W0 + L @ R)
        idx = list(got.intruders.indices)
        np.testing.assert_allclose(s, S[idx], rtol=1e-11)
        np.testing.assert_allclose(np.abs(np.sum(u * U[:, idx], axis=0)), 1.0, atol=1e-9)
        np.testing.assert_allclose(np.abs(np.sum(v * Vt[idx].T, axis=0)), 1.0, atol=1e-9)

    def test_mitigation_is_peft_formula(self):
        """W0 + mitigated update = W + (lambda - 1) B_I A_I with B_I A_I the intruders' part of W."""
        W0, L, R = problem(120, 90, 6, seed=4)
        W = W0 + L @ R
        got = intruders_lowrank(base_svd(W0, precision="float64"), W0, L, R, vectors=True)
        L2, R2 = mitigation_factors(L, R, got.vectors, mitigation_lambda=0.75)
        U, S, Vt = np.linalg.svd(W)
        idx = list(got.intruders.indices)
        want = W + (0.75 - 1) * (U[:, idx] * S[idx]) @ Vt[idx]
        np.testing.assert_allclose(W0 + L2 @ R2, want, atol=1e-10)

    def test_bad_shapes(self):
        """Factors or SVD that do not fit the weight: one sentence."""
        W0, L, R = problem(20, 10, 2)
        b = base_svd(W0, precision="float64")
        with pytest.raises(ConfigError, match="do not make a 20 x 10 update"):
            intruders_lowrank(b, W0, L[:5], R)
        with pytest.raises(ConfigError, match="the base SVD has U"):
            intruders_lowrank(b, W0.T, R.T, L.T)
        with pytest.raises(ConfigError, match="`method` should be one of"):
            intruders_lowrank(b, W0, L, R, method="lapack")


# ------------------------------------------------------------------------- real PEFT adapters
def _truth(case: str) -> dict:
    return json.loads((SAMPLES / f"{case}.truth.json").read_text())


def _modules(case: str):
    from lorarank.adapters import load_adapter
    from lorarank.base import open_base

    base = open_base(SAMPLES / "base")
    adapter = load_adapter(SAMPLES / case)
    for m in adapter.modules:
        B, A = m.factors()
        yield m, base.weight(m.name, m.shape), m.scale * B, A


@needs_samples
class TestRealAdapters:
    @pytest.mark.parametrize("case", ["lora_r8", "lora_r8_intruders_reduced", "pissa_converted", "olora_converted"])
    @pytest.mark.parametrize("precision, atol", [("float32", 1e-4), ("float64", 1e-9)])
    def test_counts_equal_truth(self, case, precision, atol):
        """Every module's intruders equal the float64 truth (and PEFT's printed counts)."""
        truth = _truth(case)["modules"]
        total = 0
        for m, W0, L, R in _modules(case):
            got = intruders_lowrank(base_svd(W0, precision=precision), W0, L, R).intruders
            t = truth[m.name]["intruders"]
            assert list(got.indices) == t["indices"], m.name
            assert got.count == t["peft_float32_count"] == t["peft_float64_count"], m.name
            np.testing.assert_allclose(got.max_cos, t["top10_max_abs_cos"], atol=atol)
            total += got.count
        assert total == _truth(case)["summary"]["intruders_total"]

    def test_mitigation_equals_peft_sample(self):
        """The mitigated lora_r8 equals PEFT's lora_r8_intruders_reduced to float32 tolerance."""
        from lorarank.adapters import load_adapter

        reduced = load_adapter(SAMPLES / "lora_r8_intruders_reduced")
        changed = 0
        for m, W0, L, R in _modules("lora_r8"):
            got = intruders_lowrank(base_svd(W0), W0, L, R, vectors=True)
            Bp, Ap = reduced.module(m.name).factors()
            if got.vectors is None:
                B, A = m.factors()
                np.testing.assert_array_equal(B, Bp)
                continue
            changed += 1
            L2, R2 = mitigation_factors(L, R, got.vectors, mitigation_lambda=0.75)
            U, S, Vt = factored_svd(L2 / m.scale, R2)
            r = m.rank
            B = U[:, :r] * np.sqrt(S[:r])
            A = np.sqrt(S[:r])[:, None] * Vt[:r]
            rel = np.linalg.norm(B @ A - Bp @ Ap) / np.linalg.norm(Bp @ Ap)
            assert rel < 2e-5, m.name
            signs = np.sign(np.sum(B * Bp, axis=0))
            np.testing.assert_allclose(B * signs, Bp, atol=5e-5 * np.abs(Bp).max())
            np.testing.assert_allclose(A * signs[:, None], Ap, atol=5e-5 * np.abs(Ap).max())
        assert changed == 20


def test_cosine_picture_is_the_dense_one():
    """cos_columns=c gives |U_top^T U0[:, :c]| of the dense SVDs (up to sign, so |.|)."""
    W0, L, R = problem(90, 60, 5, seed=9)
    got = intruders_lowrank(base_svd(W0, precision="float64"), W0, L, R, cos_columns=20).cosines
    U = np.linalg.svd(W0 + L @ R)[0][:, :10]
    U0 = np.linalg.svd(W0)[0][:, :20]
    np.testing.assert_allclose(got, np.abs(U.T @ U0), atol=1e-10)
    assert intruders_lowrank(base_svd(W0, precision="float64"), W0, L, R).cosines is None
