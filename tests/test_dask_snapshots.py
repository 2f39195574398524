"""Out-of-core KMD on Dask arrays (koopman/outofcore.py, koopman/snapshots.py): the same fit and
KMP mask as in memory, from a trajectory split by columns into files (docs/theory.md §5.2)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import decaying_trajectory

from kooplearn_prune.koopman import KMD, gram_matrix, kmp_scores
from kooplearn_prune.koopman.outofcore import snapshots_from_files
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.pruning.masks import global_mask
from kooplearn_prune.trajectory import Trajectory

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")


def snapshots(n=6000, m=30):
    rng = np.random.default_rng(0)
    w, _, _ = decaying_trajectory(n, m, [0.9, 0.7, 0.5], rng, pair=(0.8, 0.4), scale=0.05)
    return (w + 1e-5 * rng.standard_normal(w.shape)).astype(np.float32)


def mask(kmd):
    return np.asarray(global_mask(np.asarray(kmp_scores(kmd)), 0.8))


def split_into_files(w, tmp_path, kind):
    """Columns of w in 3 files, as three ranks would save them."""
    edges = [0, 1000, 3500, w.shape[1]]
    paths = []
    for rank, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if kind == "npy":
            path = tmp_path / f"rank{rank}.npy"
            np.save(path, w[:, a:b])
        else:
            path = tmp_path / f"rank{rank}.npz"
            Trajectory(w[:, a:b], list(range(w.shape[0])),
                       ParamLayout([f"shard{rank}"], [(b - a,)], [True])).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["npy", "npz"])
@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_fit_on_files_is_the_in_memory_fit(tmp_path, kind, scheduler):
    """Same G to 1e-14 of max G (measured 2e-16), so the same rank, eigenvalues within 1e-9
    (measured below 1e-12) and the same KMP mask."""
    w = snapshots()
    lazy = snapshots_from_files(split_into_files(w, tmp_path, kind))
    assert lazy.shape == w.shape and lazy.chunks[1] == (1000, 2500, 2500)
    with dask.config.set(scheduler=scheduler):
        gram = gram_matrix(lazy)
        assert np.max(np.abs(gram - gram_matrix(w))) <= 1e-14 * np.max(gram)
        # rank='optimal': at full rank the modes at the noise floor are ill-conditioned (a G
        # that differs by 1e-16 moves their eigenvalues by up to 1e-5)
        resolved = {"solver": "gram", "rank": "optimal"}
        out_of_core, in_memory = KMD(**resolved).fit(lazy), KMD(**resolved).fit(w)
        assert out_of_core.rank_ == in_memory.rank_
        np.testing.assert_allclose(out_of_core.eigenvalues_, in_memory.eigenvalues_, atol=1e-9)
        fixed = out_of_core.fixed_point()
        assert isinstance(fixed, da.Array)
        np.testing.assert_allclose(fixed.compute(), in_memory.fixed_point(), atol=1e-9)
        np.testing.assert_array_equal(mask(out_of_core), mask(in_memory))


def test_files_that_disagree_are_refused(tmp_path):
    w = snapshots(n=100, m=5)
    np.save(tmp_path / "a.npy", w[:, :50])
    np.save(tmp_path / "b.npy", w[:-1, 50:])
    with pytest.raises(ValueError, match="same snapshots"):
        snapshots_from_files([tmp_path / "a.npy", tmp_path / "b.npy"])
    with pytest.raises(FileNotFoundError):
        snapshots_from_files([tmp_path / "missing.npy"])
    with pytest.raises(ValueError, match="paths is empty"):
        snapshots_from_files([])
