"""Sub-window refits (koopman.uncertainty) and the paper's KMP (koopman.paper), docs/theory.md §7,
§9."""

from __future__ import annotations

import numpy as np
import pytest

from kooplearn_prune.koopman import (
    KMD,
    kmp_scores,
    kmp_stability,
    paper_kmp_mask,
    paper_kmp_scores,
)
from kooplearn_prune.koopman.uncertainty import subwindow_starts
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.pruning.masks import global_mask
from kooplearn_prune.pruning.metrics import overlap


def converging(n=400, m=40, seed=0, noise=0.0):
    """θ_j = c + 0.8^j a + 0.5^j b (+ white noise): λ* = 1 exactly, fixed point c."""
    rng = np.random.default_rng(seed)
    c, a, b = rng.normal(size=(3, n))
    j = np.arange(m + 1)[:, None]
    w = c + 0.8 ** j * a + 0.5 ** j * b
    return w + noise * rng.normal(size=w.shape), c


def test_noiseless_window_is_stable_with_a_tight_interval_around_one():
    w, _ = converging()
    report = kmp_stability(w, sparsity=0.9)
    assert report.n_resamples == 5 and report.subwindow == 21
    assert report.starts == (0, 5, 10, 15, 20)
    assert report.mask_overlaps == (1.0,) * 5 and report.stable and report.mask_stability == 1.0
    assert report.eigenvalue_width < 1e-9
    assert report.eigenvalue_contains(1.0, slack=1e-9)
    assert report.fixed_point_spread < 1e-9 and report.reliable and report.trusted


def test_noise_widens_the_interval_and_the_spread():
    clean = kmp_stability(converging()[0])
    noisy = kmp_stability(converging(noise=0.05)[0])
    assert noisy.eigenvalue_width > 1e3 * max(clean.eigenvalue_width, 1e-12)
    assert noisy.fixed_point_spread > 1e3 * max(clean.fixed_point_spread, 1e-15)
    assert noisy.min_overlap <= noisy.mask_stability <= 1.0
    assert "sub-windows" in noisy.describe()


def test_random_subwindows_are_distinct_and_reproducible():
    length, starts = subwindow_starts(41, 5, 0.5, seed=3)
    assert length == 21 and len(set(starts)) == 5 and max(starts) <= 20
    assert subwindow_starts(41, 5, 0.5, seed=3) == (length, starts)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_resamples": 1}, "n_resamples"),
    ({"fraction": 1.0}, "fraction"),
    ({"sparsity": 1.0}, "sparsity"),
    ({"threshold": 0.0}, "threshold"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmp_stability(converging()[0], **kwargs)


def test_too_few_snapshots_says_how_many_are_needed():
    w, _ = converging(m=5)
    with pytest.raises(ValueError, match=r"6 snapshots.*n_resamples=5.*at least 8 snapshots"):
        kmp_stability(w)
    assert kmp_stability(w, n_resamples=3).n_resamples == 3


# --------------------------------------------------------------------------- the paper's KMP
def test_paper_variant_equals_the_library_on_a_clean_float64_window():
    w, c = converging(n=1000)
    library = global_mask(np.asarray(kmp_scores(KMD().fit(w))), 0.9)
    paper = paper_kmp_mask(paper_kmp_scores(w), 0.9)
    assert paper.sum() == library.sum() == 100  # n = 1000: ⌈0.9·999⌉ = round(0.9·1000)
    assert np.array_equal(paper, library)
    assert np.array_equal(library, global_mask(np.abs(c), 0.9))


def complex_pair_window(n=400, m=40, seed=1):
    """θ_j = 2 Re(μ^j ξ) + 0.5^j a with μ = 0.999 e^{0.02i}: λ* is a complex pair."""
    rng = np.random.default_rng(seed)
    xi = rng.normal(size=n) + 1j * rng.normal(size=n)
    a = rng.normal(size=n)
    mu = 0.999 * np.exp(0.02j)
    j = np.arange(m + 1)[:, None]
    return 2 * np.real(mu ** j * xi) + 0.5 ** j * a, xi


def test_paper_variant_differs_on_a_complex_pair_and_the_library_keeps_the_slow_part():
    w, xi = complex_pair_window()
    kmd = KMD().fit(w)
    assert kmd.fixed_point_info_.stationary_is_complex
    with pytest.warns(UserWarning, match="complex pair"):
        library = global_mask(np.asarray(kmp_scores(kmd)), 0.9)
    # The library's mask is that of the slow part at the first snapshot, 2 Re ξ ...
    assert np.array_equal(library, global_mask(np.abs(2 * np.real(xi)), 0.9))
    # ... the paper's is the rotation seen at the phase the eigensolver picked: another mask.
    paper = paper_kmp_mask(paper_kmp_scores(w), 0.9)
    assert overlap(paper, library) < 0.95
    # each sub-window sees the slow part at another angle of the rotation: its masks move too
    stability = kmp_stability(w)
    assert not stability.reliable and not stability.stable and not stability.trusted
    assert stability.eigenvalue_contains(0.999 * np.exp(0.02j), slack=1e-9)


def test_paper_variant_works_in_float32():
    w, c = converging(n=1000)
    scores = paper_kmp_scores(w.astype(np.float32))
    assert scores.dtype == np.float32
    assert overlap(paper_kmp_mask(scores, 0.9), global_mask(np.abs(c), 0.9)) > 0.98


def test_quantile_threshold_keeps_ties_and_is_not_exact_k():
    tied = np.ones(10)
    assert paper_kmp_mask(tied, 0.5).all()  # every score is at the threshold: nothing pruned
    assert global_mask(tied, 0.5).sum() == 5  # exact k, ties by index: the first five go
    assert not global_mask(tied, 0.5)[:5].any()
    scores = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 3.0])
    assert paper_kmp_mask(scores, 0.5).tolist() == [False, True, True, True, True, True]
    assert global_mask(scores, 0.5).tolist() == [False, False, False, True, True, True]
    # distinct scores: ⌈p(n−1)⌉ pruned, one fewer than round(p·n) here (n = 11)
    assert (~paper_kmp_mask(np.arange(11.0), 0.9)).sum() == 9
    assert (~global_mask(np.arange(11.0), 0.9)).sum() == 10


def test_quantile_mask_with_a_layout_keeps_non_prunable_entries():
    layout = ParamLayout(("w", "b"), ((2, 3), (2,)), (True, False))
    scores = np.array([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 0.0, 0.0])
    mask = paper_kmp_mask(scores, 0.5, layout=layout)
    assert mask[6:].all() and mask[:6].tolist() == [True, False, False, False, True, True]
    with pytest.raises(ValueError, match="sparsity"):
        paper_kmp_mask(scores, 1.0)
