"""Tests of lorarank.compare: subspace similarity phi (Hu et al. 2022) and principal angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorarank.adapters import Adapter, LoraModule, load_adapter
from lorarank.compare import compare_adapters, principal_angles, right_singular_vectors, subspace_similarity
from lorarank.errors import AdapterError, ConfigError
import testkit

SAMPLES = testkit.SAMPLES
needs_samples = testkit.needs(SAMPLES)


def naive_phi(A1, A2):
    """Oracle: the definition, with right singular vectors from a full dense SVD and explicit loops."""
    u1 = np.linalg.svd(A1)[2].T  # (d, d): right singular vectors as columns
    u2 = np.linalg.svd(A2)[2].T
    r1, r2 = min(A1.shape), min(A2.shape)
    phi = np.zeros((r1, r2))
    for i in range(1, r1 + 1):
        for j in range(1, r2 + 1):
            phi[i - 1, j - 1] = np.linalg.norm(u1[:, :i].T @ u2[:, :j], "fro") ** 2 / min(i, j)
    return phi


def adapter_of(As, *, name="m", seed=0):
    rng = np.random.default_rng(seed)
    modules = [LoraModule(f"{name}.{i}", A, rng.standard_normal((7, A.shape[0])), 1.0) for i, A in enumerate(As)]
    return Adapter(format="npz", modules=modules, scaling="test", source=name)


class TestSubspaceSimilarity:
    """phi(i, j) against its definition."""

    @pytest.mark.parametrize("r1, r2, d", [(4, 4, 20), (2, 8, 30), (8, 3, 16), (5, 5, 5)])
    def test_against_definition(self, r1, r2, d):
        """Cumulative-block computation equals the loop over the definition."""
        rng = np.random.default_rng(r1 * 100 + r2 * 10 + d)
        A1, A2 = rng.standard_normal((r1, d)), rng.standard_normal((r2, d))
        np.testing.assert_allclose(subspace_similarity(A1, A2), naive_phi(A1, A2), atol=1e-12)

    def test_same_space_is_one(self):
        """A factor and any invertible mix of its rows span the same space: phi(r, r) = 1."""
        rng = np.random.default_rng(1)
        A = rng.standard_normal((4, 30))
        mix = rng.standard_normal((4, 4)) + 4 * np.eye(4)
        assert subspace_similarity(A, mix @ A)[-1, -1] == pytest.approx(1.0)
        assert np.allclose(np.diag(subspace_similarity(A, 3.0 * A)), 1.0)

    def test_orthogonal_is_zero(self):
        """Factors on disjoint coordinates have phi = 0 everywhere."""
        A1 = np.eye(10)[:3]
        A2 = np.eye(10)[5:9]
        assert np.all(subspace_similarity(A1, A2) == 0)

    def test_random_subspaces_near_chance(self):
        """Random subspaces in d dims give phi(i, j) close to max(i, j) / d on average."""
        rng = np.random.default_rng(2)
        d, r = 400, 8
        phis = np.mean([subspace_similarity(rng.standard_normal((r, d)), rng.standard_normal((r, d)))
                        for _ in range(300)], axis=0)
        i, j = np.meshgrid(np.arange(1, r + 1), np.arange(1, r + 1), indexing="ij")
        np.testing.assert_allclose(phis, np.maximum(i, j) / d, rtol=0.35)

    def test_input_sizes_must_match(self):
        """Different d_in is a ConfigError naming both sizes."""
        with pytest.raises(ConfigError, match="different input sizes: 5 and 6"):
            subspace_similarity(np.ones((2, 5)), np.ones((2, 6)))

    def test_right_singular_vectors_orthonormal(self):
        """Columns are orthonormal and ordered like the dense SVD's (up to sign)."""
        rng = np.random.default_rng(3)
        A = rng.standard_normal((5, 40))
        u = right_singular_vectors(A)
        np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)
        np.testing.assert_allclose(np.abs(u.T @ np.linalg.svd(A)[2][:5].T), np.eye(5), atol=1e-10)


class TestPrincipalAngles:
    """Principal angles between row spaces."""

    @pytest.mark.parametrize("theta", [0.0, 0.3, math.pi / 4, 1.2, math.pi / 2])
    def test_known_angle(self, theta):
        """Two planes sharing one axis and tilted by theta have angles (0, theta)."""
        e = np.eye(6)
        A1 = np.stack([e[0], e[1]])
        A2 = np.stack([e[0], math.cos(theta) * e[1] + math.sin(theta) * e[2]])
        np.testing.assert_allclose(principal_angles(A1, A2), sorted([0.0, theta]), atol=1e-7)

    def test_against_dense(self):
        """arccos of the singular values of U1^T U2 computed from dense SVDs."""
        rng = np.random.default_rng(4)
        A1, A2 = rng.standard_normal((3, 12)), rng.standard_normal((5, 12))
        u1, u2 = np.linalg.svd(A1)[2][:3].T, np.linalg.svd(A2)[2][:5].T
        expected = np.arccos(np.clip(np.linalg.svd(u1.T @ u2, compute_uv=False), -1, 1))
        np.testing.assert_allclose(principal_angles(A1, A2), expected, atol=1e-10)


class TestCompareAdapters:
    """Module-by-module comparison of two adapters."""

    def test_shared_modules_and_summary(self):
        """Only shared names are compared; the summary aggregates phi(k, k)."""
        rng = np.random.default_rng(5)
        As = [rng.standard_normal((4, 20)) for _ in range(3)]
        a = adapter_of(As)
        b = adapter_of([As[0], rng.standard_normal((6, 20))], seed=1)
        result = compare_adapters(a, b, top=2)
        assert [m.name for m in result.modules] == ["m.0", "m.1"] and result.only_a == ["m.2"]
        first = result.modules[0]
        assert first.top_overlap == pytest.approx(1.0) and first.top == 2 and first.chance == 2 / 20
        np.testing.assert_allclose(result.modules[1].phi, naive_phi(As[1], b.modules[1].A), atol=1e-12)
        assert result.summary["top_overlap"]["max"] == pytest.approx(1.0)
        assert result.summary["shared_modules"] == 2

    def test_b_factor_does_not_matter(self):
        """phi uses the A factors only: changing B leaves it unchanged."""
        rng = np.random.default_rng(6)
        As = [rng.standard_normal((3, 15))]
        r1 = compare_adapters(adapter_of(As, seed=1), adapter_of(As, seed=2))
        assert np.allclose(np.diag(r1.modules[0].phi), 1.0)

    def test_no_shared_module(self):
        """Disjoint adapters are an AdapterError naming examples."""
        rng = np.random.default_rng(7)
        with pytest.raises(AdapterError, match=r"share no module with the same input size \(e.g. 'x.0' vs 'y.0'\)"):
            compare_adapters(adapter_of([rng.standard_normal((2, 5))], name="x"),
                             adapter_of([rng.standard_normal((2, 5))], name="y"))

    def test_mismatched_sizes_listed(self):
        """Shared names with different input sizes are listed, not compared."""
        rng = np.random.default_rng(8)
        a = adapter_of([rng.standard_normal((2, 5)), rng.standard_normal((2, 9))])
        b = adapter_of([rng.standard_normal((2, 5)), rng.standard_normal((2, 8))])
        result = compare_adapters(a, b)
        assert result.mismatched == ["m.1"] and len(result.modules) == 1

    def test_progress_and_dict(self):
        """progress counts shared modules; to_dict and table are JSON-friendly."""
        import json

        rng = np.random.default_rng(9)
        As = [rng.standard_normal((3, 10)) for _ in range(4)]
        calls = []
        result = compare_adapters(adapter_of(As), adapter_of(As, seed=3), progress=lambda d, t: calls.append((d, t)))
        assert calls == [(i, 4) for i in range(5)]
        json.dumps(result.to_dict(), allow_nan=False)
        assert set(result.table()[0]) >= {"name", "phi_1_1", "top_overlap", "chance", "smallest_angle_deg"}

    @needs_samples
    def test_samples(self):
        """r=8 vs r=32 rsLoRA samples share their q/v modules; self-comparison gives phi = 1."""
        r8 = load_adapter(SAMPLES / "peft_llama_r8")
        r32 = load_adapter(SAMPLES / "peft_llama_r32_rslora")
        result = compare_adapters(r8, r32)
        assert len(result.modules) == 4 and len(result.only_a) == 10 and not result.only_b
        for m in result.modules:
            np.testing.assert_allclose(m.phi, naive_phi(r8.module(m.name).A.astype(float),
                                                        r32.module(m.name).A.astype(float)), atol=1e-9)
        same = compare_adapters(r8, r8)
        assert all(np.allclose(np.diag(m.phi), 1.0) for m in same.modules)
