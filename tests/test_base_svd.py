"""The base-SVD cache: computed once per weight content, bounded in memory and on disk."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lorarank.base_svd import BaseSVDCache, base_svd, shared_cache, weight_digest
from lorarank.errors import ConfigError


def weight(seed: int, m: int = 60, n: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, n)).astype(np.float32)


class TestBaseSVD:
    @pytest.mark.parametrize("m,n", [(50, 30), (30, 50)])
    @pytest.mark.parametrize("precision, rtol", [("float64", 1e-12), ("float32", 1e-5)])
    def test_equals_numpy(self, m, n, precision, rtol):
        """Left vectors (up to sign) and values of the thin SVD, in the precision asked."""
        W = weight(1, m, n).astype(np.float64)
        got = base_svd(W, precision=precision)
        U, S, _ = np.linalg.svd(W, full_matrices=False)
        assert got.U.shape == (m, min(m, n)) and got.U.dtype == np.dtype(precision)
        np.testing.assert_allclose(got.S, S, rtol=rtol)
        np.testing.assert_allclose(np.abs(np.sum(got.U * U, axis=0)), 1.0, atol=10 * rtol)
        assert got.norm_sq == pytest.approx(np.sum(W * W), rel=rtol)

    def test_bad_input(self):
        """NaN, wrong rank or precision: one sentence."""
        with pytest.raises(ConfigError, match="NaN or infinite"):
            base_svd(np.full((3, 3), np.nan))
        with pytest.raises(ConfigError, match="non-empty 2-D matrix"):
            base_svd(np.ones(3))
        with pytest.raises(ConfigError, match="`precision` should be one of float32, float64; got 'half'"):
            base_svd(np.ones((3, 3)), precision="half")

    def test_digest_is_content(self):
        """The key follows the values, dtype, shape and precision, not the object."""
        W = weight(2)
        assert weight_digest(W) == weight_digest(W.copy())
        assert weight_digest(W) != weight_digest(W.astype(np.float64))
        assert weight_digest(W) != weight_digest(W.reshape(40, 60))
        assert weight_digest(W) != weight_digest(W, precision="float64")
        V = W.copy()
        V[0, 0] += 1e-3
        assert weight_digest(W) != weight_digest(V)


class TestCache:
    def test_memory_hit(self):
        """The second ask of the same content is a memory hit (same arrays)."""
        cache = BaseSVDCache()
        W = weight(3)
        first = cache.get(W)
        second = cache.get(W.copy())
        assert second is first
        assert cache.stats == {"memory": 1, "disk": 0, "computed": 1}

    def test_memory_bound_lru(self):
        """Memory holds at most memory_bytes; the least recently used SVD goes first."""
        size = base_svd(weight(0)).nbytes
        cache = BaseSVDCache(memory_bytes=2 * size)
        a, b, c = weight(10), weight(11), weight(12)
        cache.get(a)
        cache.get(b)
        cache.get(a)  # a used last: b is the oldest
        cache.get(c)
        assert cache.memory_held <= 2 * size
        assert cache.contains(a) and cache.contains(c) and not cache.contains(b)
        tiny = BaseSVDCache(memory_bytes=size - 1)
        tiny.get(a)
        assert tiny.memory_held == 0

    def test_disk_shared_across_caches(self, tmp_path):
        """A second cache (another process) on the same folder reads the SVD from disk."""
        W = weight(4)
        one = BaseSVDCache(directory=tmp_path)
        svd = one.get(W)
        two = BaseSVDCache(directory=tmp_path)
        again = two.get(W)
        assert two.stats == {"memory": 0, "disk": 1, "computed": 0}
        np.testing.assert_array_equal(np.asarray(again.U), svd.U)
        np.testing.assert_array_equal(again.S, svd.S)
        assert not list(tmp_path.glob(".tmp-*"))

    def test_disk_bound(self, tmp_path):
        """The folder holds at most disk_bytes; the least recently used entries are removed."""
        size = base_svd(weight(0)).nbytes + 2 * 128  # two .npy headers
        cache = BaseSVDCache(directory=tmp_path, disk_bytes=2 * size + 10, memory_bytes=0)
        for seed in (20, 21, 22):
            cache.get(weight(seed))
        total = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert total <= 2 * size + 10
        assert len(list(tmp_path.glob("*.U.npy"))) == 2
        assert not cache.contains(weight(20))

    @pytest.mark.parametrize("damage", ["truncate", "shape", "nan", "huge S"])
    def test_damaged_entry_recomputed(self, tmp_path, damage):
        """A damaged or foreign disk entry is recomputed (and replaced), never trusted."""
        W = weight(5)
        BaseSVDCache(directory=tmp_path).get(W)
        (path_u,) = tmp_path.glob("*.U.npy")
        path_s = path_u.with_name(path_u.name.replace(".U.npy", ".S.npy"))
        if damage == "truncate":
            path_u.write_bytes(path_u.read_bytes()[:100])
        elif damage == "shape":
            np.save(path_u, np.zeros((3, 3), dtype=np.float32))
        elif damage == "huge S":   # a .npy of 2^28 float64 (2 GiB, sparse on disk): a miss, not read
            with open(path_s, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                          "shape": (2**28,)})
                fh.truncate(2**31 + 128)
        else:
            np.save(path_s, np.full(40, np.nan))
        import tracemalloc

        cache = BaseSVDCache(directory=tmp_path)
        tracemalloc.start()
        try:
            svd = cache.get(W)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20, peak
        assert cache.stats["computed"] == 1
        np.testing.assert_allclose(svd.S, base_svd(W).S)
        assert BaseSVDCache(directory=tmp_path).get(W).S.shape == (40,)

    def test_unwritable_folder_costs_only_the_cache(self, tmp_path):
        """A folder that cannot be written: the SVD is computed and returned all the same."""
        blocker = tmp_path / "file"
        blocker.write_text("x")
        cache = BaseSVDCache(directory=blocker / "sub")
        assert cache.get(weight(6)).S.shape == (40,)

    def test_concurrent_asks_compute_once(self):
        """Sessions asking for one base at once share a single computation."""
        cache = BaseSVDCache()
        W = weight(7, 300, 200)
        out = []
        threads = [threading.Thread(target=lambda: out.append(cache.get(W))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cache.stats["computed"] == 1 and len(out) == 4
        assert all(o is out[0] for o in out)

    def test_shared_cache_is_one_per_folder(self, tmp_path, monkeypatch):
        """shared_cache() is one object per folder; memory only unless a folder is set."""
        monkeypatch.delenv("LORARANK_CACHE_DIR", raising=False)
        assert shared_cache() is shared_cache()
        assert shared_cache().directory is None
        assert shared_cache(directory=tmp_path) is shared_cache(directory=tmp_path)
        monkeypatch.setenv("LORARANK_CACHE_DIR", str(tmp_path / "env"))
        assert shared_cache().directory == tmp_path / "env" / "base-svd"

    def test_env_sizes(self, tmp_path, monkeypatch):
        """LORARANK_CACHE_MEMORY_MB must be a number of megabytes."""
        monkeypatch.setenv("LORARANK_CACHE_MEMORY_MB", "lots")
        with pytest.raises(ConfigError, match="LORARANK_CACHE_MEMORY_MB should be a number of megabytes"):
            shared_cache(directory=tmp_path / "new")
