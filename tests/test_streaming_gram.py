"""Tests for the streaming Gram matrix (koopman/streaming.py), ``KMD.fit(W, gram=, n_params=)``
(koopman/inputs.check_gram) and ``TrajectoryRecorder(gram=True)``: docs/theory.md §5.2 and §6."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from builders import decaying_trajectory

from kooplearn_prune.koopman import KMD, gram_matrix, kmp_scores
from kooplearn_prune.koopman.streaming import GramAccumulator
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD
from kooplearn_prune.pruning.masks import global_mask
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Trainer


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


# --------------------------------------------------------------------------- the accumulator
def streamed(w, how="append", **kwargs):
    acc = GramAccumulator(w.shape[1], **kwargs)
    for j in range(w.shape[0]):
        acc.append(w[j]) if how == "append" else acc.follow(w[: j + 1])
    return acc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_gram_gives_the_batch_eigenvalues_and_masks(dtype):
    """G agrees with gram_matrix to 1e-14 of max G (measured 2e-16..4e-16); the fits from it
    have eigenvalues within 1e-9 (measured up to 1.4e-10) and the same rank and KMP mask."""
    w = trajectory(dtype, n=10000, m=40)
    batch_gram = gram_matrix(w)
    # rank='optimal': at full rank the modes at the noise floor are ill-conditioned (a G that
    # differs by 1e-16 moves their eigenvalues by up to 1e-5); compare the modes the data resolve
    batch = KMD(solver="gram", rank="optimal").fit(w)
    for kwargs in ({"block": 1}, {"block": 7}, {"background": True}, {"capacity": 3}):
        acc = streamed(w, **kwargs)
        gram = acc.gram
        assert gram.dtype == np.float64 and gram.shape == batch_gram.shape
        np.testing.assert_array_equal(gram, gram.T)
        assert np.max(np.abs(gram - batch_gram)) <= 1e-14 * np.max(batch_gram)
        fit = KMD(rank="optimal").fit(w, gram=gram)
        assert fit.rank_ == batch.rank_
        np.testing.assert_allclose(fit.eigenvalues_, batch.eigenvalues_, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(kmp_mask(fit), kmp_mask(batch))


def test_follow_and_append_give_the_same_bits_and_partial_reads_are_exact():
    w = trajectory(np.float32, n=5000, m=20)
    by_append, by_follow = streamed(w, block=4), streamed(w, "follow", block=4)
    np.testing.assert_array_equal(by_append.gram, by_follow.gram)
    acc = GramAccumulator(w.shape[1], block=4)
    for j in range(10):
        acc.append(w[j])
    early = acc.gram  # reading completes the pending block; later rows still add up
    for j in range(10, w.shape[0]):
        acc.append(w[j])
    np.testing.assert_array_equal(acc.gram[:10, :10], early)
    assert len(acc) == w.shape[0]
    np.testing.assert_allclose(acc.gram, by_append.gram, rtol=1e-14)


def test_bad_rows_are_refused_and_change_nothing():
    w = trajectory(np.float64, n=50, m=5)
    acc = streamed(w[:3], block=2)
    before = acc.gram
    bad_rows = [(w[0, :49], ValueError, r"shape \(50,\)"), (w[:2], ValueError, "n_params=50"),
                (np.where(np.arange(50) == 7, np.nan, w[3]), ValueError, "NaN or Inf"),
                (np.full(50, np.inf), ValueError, "NaN or Inf"),
                (w[3].astype(complex), TypeError, "real numbers")]
    for row, error, text in bad_rows:
        with pytest.raises(error, match=text):
            acc.append(row)
    assert len(acc) == 3
    np.testing.assert_array_equal(acc.gram, before)
    with pytest.raises(ValueError, match="cannot be mixed"):
        acc.follow(w[:4])
    with pytest.raises(ValueError, match=r"shape \(k, 50\)"):
        GramAccumulator(50).follow(w[:, :10])
    for kwargs, text in [({"n_params": 0}, "n_params=0"), ({"n_params": 5, "block": 0}, "block"),
                         ({"n_params": 5, "background": 1}, "background")]:
        with pytest.raises((ValueError, TypeError), match=text):
            GramAccumulator(**kwargs)


# --------------------------------------------------------------------------- while recording
def test_recorder_streams_the_gram_matrix_of_its_trajectory():
    model = MLP([6, 16, 3], seed=0)
    recorder = TrajectoryRecorder(model, gram=True)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96))
    Trainer(model, SGD(model, lr=0.05), callbacks=[recorder], progress=False).fit(
        data, epochs=4, batch_size=8)
    trajectory_ = recorder.trajectory()
    snapshots = np.asarray(trajectory_.snapshots)
    assert len(recorder) == 49 and recorder.gram.shape == (49, 49)
    np.testing.assert_allclose(recorder.gram, gram_matrix(snapshots), rtol=1e-13)
    streamed_fit = KMD(solver="gram", rank="optimal").fit(trajectory_, gram=recorder.gram)
    batch = KMD(solver="gram", rank="optimal").fit(trajectory_)
    np.testing.assert_allclose(streamed_fit.eigenvalues_, batch.eigenvalues_, atol=1e-10)
    with pytest.raises(RuntimeError, match="gram=True"):
        _ = TrajectoryRecorder(model).gram
    with pytest.raises(ValueError, match="storage='memory'"):
        TrajectoryRecorder(model, gram=True, storage="disk")


@pytest.mark.parametrize("gram", [True, "background"])
def test_torch_recorder_streams_the_gram_matrix_of_its_trajectory(gram):
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import TorchRecorder

    torch.manual_seed(0)
    # a deep linear network on least squares: it converges, so the fixed point is well posed
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 12), torch.randn(64, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    recorder = TorchRecorder(model, stop=40, gram=gram)
    with recorder.attach(optimizer):
        for _ in range(40):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    trajectory_ = recorder.trajectory()
    batch_gram = gram_matrix(np.asarray(trajectory_.snapshots))
    streamed_gram = recorder.gram
    assert len(recorder) == 41 and streamed_gram.shape == (41, 41)
    assert np.max(np.abs(streamed_gram - batch_gram)) <= 1e-14 * np.max(np.abs(batch_gram))
    # rank='optimal': see test_streamed_gram_gives_the_batch_eigenvalues_and_masks
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trustworthy fixed point (docs/theory.md §7)
        streamed_fit = KMD(rank="optimal").fit(trajectory_, gram=streamed_gram)
        batch = KMD(rank="optimal", solver="gram").fit(trajectory_)
        kmp_mask(batch)
    assert streamed_fit.rank_ == batch.rank_
    np.testing.assert_array_equal(kmp_mask(streamed_fit), kmp_mask(batch))
    with pytest.raises(RuntimeError, match="gram=True"):
        _ = TorchRecorder(model).gram
    with pytest.raises(TypeError, match="'background'"):
        TorchRecorder(model, gram="yes")


def test_expected_rows_leave_one_row_for_the_last_read():
    """expect(rows): blocks end just before the last row; G is unchanged (to rounding)."""
    w = trajectory(np.float32, n=2000, m=20)
    plain = streamed(w, block=8)
    acc = GramAccumulator(w.shape[1], block=8)
    acc.expect(w.shape[0])
    for j in range(w.shape[0] - 1):
        acc.append(w[j])
    assert acc._done == w.shape[0] - 1  # every row but the last is in the sums already
    acc.append(w[-1])
    np.testing.assert_allclose(acc.gram, plain.gram, rtol=1e-14)
    with pytest.raises(ValueError, match="rows"):
        acc.expect(0)
