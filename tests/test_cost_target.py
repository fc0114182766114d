"""cost.target_cost charges the target work a fit actually does (no dense SVD any more)."""

from __future__ import annotations

import numpy as np
import pytest

from lorarank import cost
from lorarank.fit import fit_lora
from lorarank.synthetic import (BLOCK, HAAR_MAX, LAYERS, make_target, random_orthogonal,
                                rotate_by_orthogonal)


def built(target) -> set[str]:
    """Which of the target's lazily built pieces exist (``cached_property`` stores them)."""
    return {name for name in ("U", "Vt", "matrix") if name in vars(target)}


@pytest.mark.parametrize("d_out, d_in, optimizer, pieces", [
    (48, 40, "sgd", {"Vt"}), (48, 40, "adam", {"U", "Vt", "matrix"}),
    (24, HAAR_MAX + 44, "sgd", set())])
def test_fit_builds_what_the_estimate_charges(d_out, d_in, optimizer, pieces):
    """SGD uses only the right basis (the estimate charges basis_cost(d_in)), and above
    HAAR_MAX columns not even that (its layers are applied to the initial factors: the draws
    are charged); Adam uses T, so both bases and their product are built and charged."""
    target = make_target(d_out, d_in, true_rank=3)
    assert built(target) == set()  # make_target itself decomposes and builds nothing
    fit_lora(target, [2], optimizer=optimizer, steps=2)
    assert built(target) == pieces
    est = cost.target_cost(d_out, d_in, matrix=optimizer != "sgd")
    if optimizer == "adam":
        product = d_out * d_in * min(d_out, d_in)
        assert est.macs == pytest.approx(cost.basis_cost(d_out).macs + cost.basis_cost(d_in).macs
                                         + product)
    elif d_in <= HAAR_MAX:
        assert est == cost.basis_cost(d_in)
    else:
        assert est == cost.basis_draws_cost(d_in)


def test_no_dense_svd_charged():
    """d = 1024: the old estimate charged a dense SVD (6 d^3 + 4 d^3 MACs, about 10^10); what is
    built now (one layered basis) is two orders of magnitude less."""
    assert cost.target_cost(1024, 1024, matrix=False).macs < 0.03 * 10.0 * 1024**3


@pytest.mark.parametrize("d", [16, HAAR_MAX, HAAR_MAX + 1, 1024])
def test_basis_qr_work_counted(d, monkeypatch):
    """The QR work basis_cost charges equals the QRs random_orthogonal runs, counted by
    wrapping numpy's qr (4/3 n^3 MACs per n x n factorisation, Q formed); above HAAR_MAX the
    layer products ((LAYERS - 1) d^2 block) and the per-layer O(d^2) passes make the rest."""
    real_qr = np.linalg.qr
    qr_macs = []

    def counting_qr(a, *args, **kwargs):
        a = np.asarray(a)
        n = a.shape[-1]
        qr_macs.append(4.0 / 3.0 * n**3 * int(np.prod(a.shape[:-2], dtype=np.int64)))
        return real_qr(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "qr", counting_qr)
    Q = random_orthogonal(d, seed=3)
    assert np.allclose(Q @ Q.T, np.eye(d), atol=1e-12)
    est = cost.basis_cost(d)
    if d <= HAAR_MAX:
        assert len(qr_macs) == 1
        assert est.macs == pytest.approx(sum(qr_macs) + 2.0 * d * d)
    else:
        nblocks = -(-d // BLOCK)
        block = -(-d // nblocks)
        rest = LAYERS * 2.0 * d * d + (LAYERS - 1) * d * d * block
        # the estimate rounds every block up to the largest block size
        draws = cost.basis_draws_cost(d).macs
        assert est.macs == pytest.approx(draws + rest)
        assert sum(qr_macs) <= draws <= sum(qr_macs) * (1 + 3.0 / block)


@pytest.mark.parametrize("d", [HAAR_MAX + 1, 1024])
def test_rotation_without_the_matrix(d):
    """rotate_by_orthogonal (the layers applied to rows) equals X @ random_orthogonal, and a
    target's to_right_basis equals X @ Vt.T, to round-off."""
    X = np.random.default_rng(1).standard_normal((5, d))
    assert np.allclose(rotate_by_orthogonal(X, d, seed=[2, 7]), X @ random_orthogonal(d, seed=[2, 7]),
                       atol=1e-13, rtol=0)
    target = make_target(40, d, true_rank=3, seed=4)
    moved = target.to_right_basis(X)
    assert "Vt" not in vars(target)
    assert np.allclose(moved, X @ target.Vt.T, atol=1e-13, rtol=0)


def test_factored_svd_cost_follows_the_full_rank_branch():
    """At r >= min(d_out, d_in) the engine forms B @ A and takes its values (no QR): the
    estimate charges that product and one dense bidiagonalisation, not QRs of the factors
    (a full-rank 4096 adapter was estimated ~6x too slow)."""
    from lorarank.cost import factored_svd_cost

    d, r = 4096, 4096
    full = factored_svd_cost(d, d, r).macs
    assert full == pytest.approx(d * d * r + 2 * d**3 - 2 * d**3 / 3)
    low = factored_svd_cost(d, d, r - 1).macs  # one below: still the QR branch
    assert low > 2 * full
    assert factored_svd_cost(d, d, 16).macs == pytest.approx(2 * 16 * 16 * 2 * d + 11 * 16**3)
