"""lorarank.synthetic's demo adapter and demo run: known planted ranks, read back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from lorarank import ConfigError
from lorarank.audit import audit_adapter
from lorarank.synthetic import DEMO_PLANTED, DEMO_RUN_STEPS, make_demo_adapter, make_demo_run


class TestDemoAdapter:
    @pytest.mark.parametrize("variant, r", [("a", 16), ("b", 8)])
    def test_planted_ranks_are_what_the_audit_finds(self, variant, r):
        """Every module stores rank r and keeps its planted k directions at energy 0.99; its
        spectrum equals a dense SVD of B @ A."""
        adapter = make_demo_adapter(variant)
        report = audit_adapter(adapter)
        assert len(report.modules) == 14
        for module, m in zip(adapter.modules, report.modules):
            assert m.rank == r
            assert m.recommended_rank == DEMO_PLANTED[m.name.rsplit(".", 1)[-1]]
            dense = np.linalg.svd(np.asarray(module.B, np.float64) @ np.asarray(module.A, np.float64),
                                  compute_uv=False)
            np.testing.assert_allclose(m.singular_values, dense[:m.singular_values.size],
                                       rtol=1e-6, atol=1e-9)

    def test_bad_variant(self):
        """A variant other than a or b is one sentence."""
        with pytest.raises(ConfigError, match="variant"):
            make_demo_adapter("c")


def test_demo_run_grows_its_ranks():
    """Six checkpoints in step order; down_proj's recommended rank grows to its 6 directions."""
    run = make_demo_run()
    assert [step for step, _ in run] == list(DEMO_RUN_STEPS)
    ranks = [max(m.recommended_rank for m in audit_adapter(a).modules if m.name.endswith("down_proj"))
             for _, a in run]
    assert ranks == sorted(ranks) and ranks[-1] == 6
