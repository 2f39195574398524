"""Tests for the streaming Gram matrix (koopman/streaming.py), ``KMD.fit(W, gram=, n_params=)``
(koopman/inputs.check_gram) and ``TrajectoryRecorder(gram=True)``: docs/theory.md §5.2 and §6."""

from __future__ import annotations

import numpy as np
import pytest
from builders import decaying_trajectory

from kooplearn_prune.koopman import KMD, gram_matrix, kmp_scores
from kooplearn_prune.pruning.masks import global_mask


def trajectory(dtype, n=3000, m=30, seed=0):
    rng = np.random.default_rng(seed)
    w, _, _ = decaying_trajectory(n, m, [0.9, 0.7, 0.5], rng, pair=(0.8, 0.4), scale=0.05)
    w = w + 1e-5 * rng.standard_normal(w.shape)
    return w.astype(dtype)


def kmp_mask(kmd):
    return np.asarray(global_mask(np.asarray(kmp_scores(kmd)), 0.8))


# --------------------------------------------------------------------------- fit from a given G
@pytest.mark.parametrize("solver", ["gram", "auto", "tls"])
def test_fit_from_gram_is_the_batch_fit(solver):
    w = trajectory(np.float32)
    batch = KMD(solver="gram" if solver == "auto" else solver).fit(w)
    given = KMD(solver=solver).fit(w, gram=gram_matrix(w))
    assert given.solver_ == batch.solver_
    np.testing.assert_array_equal(given.eigenvalues_, batch.eigenvalues_)
    np.testing.assert_array_equal(given.fixed_point(), batch.fixed_point())
    assert given.rank_ == batch.rank_


def test_fit_from_gram_on_a_shard_gives_the_shard_of_every_combination():
    w = trajectory(np.float64, n=4000)
    full = KMD(solver="gram").fit(w)
    gram, n = gram_matrix(w), w.shape[1]
    pieces = [KMD().fit(w[:, a:b], gram=gram, n_params=n) for a, b in ((0, 1500), (1500, n))]
    for piece in pieces:
        np.testing.assert_array_equal(piece.eigenvalues_, full.eigenvalues_)
        assert piece.rank_ == full.rank_ and piece.noise_level_ == full.noise_level_
    np.testing.assert_allclose(np.concatenate([p.fixed_point() for p in pieces]),
                               full.fixed_point(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([np.asarray(kmp_scores(p)) for p in pieces]),
                               np.asarray(kmp_scores(full)), rtol=0, atol=1e-12)


def test_n_params_sets_the_optimal_rank_beta():
    w = trajectory(np.float64, n=4000)
    gram = gram_matrix(w)
    small = KMD(rank="optimal").fit(w[:, :100], gram=gram, n_params=4000)
    wrong = KMD(rank="optimal").fit(w[:, :100], gram=gram)  # β from 100 columns
    assert small.noise_level_ == KMD(rank="optimal", solver="gram").fit(w).noise_level_
    assert wrong.noise_level_ != small.noise_level_


def test_bad_gram_is_refused_before_anything_changes():
    w = trajectory(np.float64)
    gram = gram_matrix(w)
    kmd = KMD().fit(w)
    before = kmd.eigenvalues_.copy()
    bad = {
        "shape": (gram[:-1, :-1], ValueError, r"must be \(31, 31\)"),
        "float32": (gram.astype(np.float32), TypeError, "float64"),
        "nan": (np.where(np.eye(31) > 0, np.nan, gram), ValueError, "NaN"),
        "asymmetric": (gram + np.triu(np.ones_like(gram)), ValueError, "not symmetric"),
        "not an array": ([[1.0]], TypeError, "GramAccumulator"),
    }
    for value, error, text in bad.values():
        with pytest.raises(error, match=text):
            kmd.fit(w * 2, gram=value)
    with pytest.raises(ValueError, match="solver='svd'.*gram="):
        KMD(solver="svd").fit(w, gram=gram)
    with pytest.raises(ValueError, match="n_params=10 is less than"):
        kmd.fit(w, gram=gram, n_params=10)
    with pytest.raises(ValueError, match="needs gram="):
        kmd.fit(w, n_params=10**6)
    np.testing.assert_array_equal(kmd.eigenvalues_, before)
