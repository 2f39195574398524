"""The exact-k mask engine and the host-free baseline scores (kooplearn_prune.pruning)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kooplearn_prune.backend import asarray, namespace_of, to_numpy, use_backend
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.pruning import (
    COMPRESSION_OVER,
    compression,
    global_mask,
    layerwise_mask,
    magnitude_scores,
    masks_by_name,
    n_to_prune,
    random_scores,
    resolve_sparsity,
)

# ``xp`` (one namespace per backend, CuPy only with a GPU) comes from conftest.py.


# A layout with a non-prunable tensor in the middle: 12 + 4 + 8 = 24 entries, 20 prunable.
LAYOUT = ParamLayout(("w1", "b1", "w2"), ((3, 4), (4,), (4, 2)), (True, False, True))


# --------------------------------------------------------------------------- references
def reference_global(scores: np.ndarray, k: int, prunable: np.ndarray) -> np.ndarray:
    """Keep mask from a stable argsort of the prunable scores (ties: lower index removed)."""
    idx = np.flatnonzero(prunable)
    order = idx[np.argsort(scores[idx], kind="stable")]
    keep = np.ones(scores.shape[0], dtype=bool)
    keep[order[:k]] = False
    return keep


def reference_capped(scores, k, layout, cap):
    """Walk the prunable entries from the smallest score up, skipping tensors at their cap."""
    owner = np.concatenate([np.full(s, i) for i, s in enumerate(layout.sizes)]).astype(int)
    caps = [math.floor(round(cap * s, 9)) if p else 0
            for s, p in zip(layout.sizes, layout.prunable, strict=True)]
    idx = np.flatnonzero(layout.prunable_mask())
    keep = np.ones(scores.shape[0], dtype=bool)
    taken = [0] * len(caps)
    for i in idx[np.argsort(scores[idx], kind="stable")]:
        if k == 0:
            break
        if taken[owner[i]] < caps[owner[i]]:
            keep[i] = False
            taken[owner[i]] += 1
            k -= 1
    assert k == 0
    return keep


@st.composite
def layouts_and_scores(draw, max_tensors=4, max_size=25):
    n_tensors = draw(st.integers(1, max_tensors))
    sizes = draw(st.lists(st.integers(0, max_size), min_size=n_tensors, max_size=n_tensors))
    prunable = draw(st.lists(st.booleans(), min_size=n_tensors, max_size=n_tensors))
    layout = ParamLayout(tuple(f"t{i}" for i in range(n_tensors)),
                         tuple((s,) for s in sizes), tuple(prunable))
    # few distinct values -> many ties, which is where ordering bugs hide
    values = st.integers(0, 5) if draw(st.booleans()) else st.floats(-1e6, 1e6, width=32)
    scores = np.asarray(draw(st.lists(values, min_size=layout.size, max_size=layout.size)),
                        dtype=np.float64)
    sparsity = draw(st.floats(0.0, 0.999))
    return layout, scores, sparsity


# --------------------------------------------------------------------------- counts and rounding
def test_n_to_prune_is_pythons_round():
    assert n_to_prune(0.5, 5) == 2  # 2.5 rounds half to even, like torch.nn.utils.prune
    assert n_to_prune(0.5, 7) == 4  # 3.5 -> 4
    assert n_to_prune(0.0, 10) == 0
    assert n_to_prune(0.999, 10) == 10
    assert n_to_prune(0.3, 0) == 0
    for p in np.linspace(0, 0.99, 23):
        for n in (1, 3, 10, 999):
            assert n_to_prune(float(p), n) == round(float(p) * n)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity_named(bad):
    with pytest.raises(ValueError, match="sparsity"):
        n_to_prune(bad, 10)
    with pytest.raises(ValueError, match="sparsity"):
        global_mask(np.arange(10.0), bad)


def test_sparsity_type_and_count_errors():
    with pytest.raises(TypeError, match="sparsity"):
        global_mask(np.arange(10.0), "0.5")
    with pytest.raises(ValueError, match="n_prunable"):
        n_to_prune(0.5, -1)


def test_exact_k_many_sizes():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10, 101, 1000, 4097):
        scores = rng.normal(size=n)
        for p in (0.0, 0.01, 0.1, 1 / 3, 0.5, 0.75, 0.9, 0.99, 0.999):
            keep = global_mask(scores, p)
            assert keep.dtype == np.bool_ and keep.shape == (n,)
            assert int((~keep).sum()) == round(p * n)


@settings(max_examples=150, deadline=None)
@given(layouts_and_scores())
def test_global_mask_matches_stable_sort_reference(case):
    layout, scores, p = case
    keep = global_mask(scores, p, layout=layout)
    k = round(p * layout.n_prunable)
    np.testing.assert_array_equal(keep, reference_global(scores, k, layout.prunable_mask()))
    assert int((~keep).sum()) == k
    assert keep[~layout.prunable_mask()].all()


# --------------------------------------------------------------------------- ties and prunability
def test_constant_scores_remove_first_prunable_indices(xp):
    scores = asarray(np.full(LAYOUT.size, 3.0), xp=xp)
    keep = to_numpy(global_mask(scores, 0.7, layout=LAYOUT))
    prunable_idx = np.flatnonzero(LAYOUT.prunable_mask())
    removed = np.flatnonzero(~keep)
    assert list(removed) == list(prunable_idx[:14])  # round(0.7 * 20) = 14; skips b1 (12..15)


def test_ties_broken_by_lower_index():
    scores = np.array([2.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    keep = global_mask(scores, 0.5)  # remove 3: index 3 (0.0), then indices 1, 2 of the 1.0s
    np.testing.assert_array_equal(keep, [True, False, False, False, True, True])
    # -0.0 and 0.0 are tied values too
    keep = global_mask(np.array([0.0, -0.0, 0.0, 1.0]), 0.5)
    np.testing.assert_array_equal(keep, [False, False, True, True])


def test_non_prunable_never_removed_even_with_smallest_scores(xp):
    scores = np.arange(LAYOUT.size, dtype=np.float64)
    scores[LAYOUT.slice_of("b1")] = -100.0  # the smallest scores sit in the unprunable bias
    keep = to_numpy(global_mask(asarray(scores, xp=xp), 0.9, layout=LAYOUT))
    assert keep[LAYOUT.slice_of("b1")].all()
    assert int((~keep).sum()) == 18


def test_sparsity_zero_keeps_all_and_no_prunable_is_fine():
    np.testing.assert_array_equal(global_mask(np.arange(5.0), 0.0), np.ones(5, bool))
    layout = ParamLayout(("b",), ((4,),), (False,))
    np.testing.assert_array_equal(global_mask(np.arange(4.0), 0.5, layout=layout),
                                  np.ones(4, bool))


# --------------------------------------------------------------------------- backends
def test_backends_and_dtypes_give_identical_masks(xp, dtype):
    rng = np.random.default_rng(3)
    layout = ParamLayout(("a", "bias", "c", "d"), ((10, 7), (7,), (7, 5), (5, 3)),
                         (True, False, True, True))
    host = rng.integers(0, 6, size=layout.size).astype(np.float64)  # many ties
    device = asarray(host, dtype=dtype, xp=xp)
    for p in (0.1, 0.5, 0.83):
        for make in (
            lambda s, q: global_mask(s, q, layout=layout),
            lambda s, q: global_mask(s, q, layout=layout, max_layer_sparsity=0.9),
            lambda s, q: layerwise_mask(s, q, layout=layout),
        ):
            on_host, on_device = make(host, p), make(device, p)
            assert namespace_of(on_device) is namespace_of(device)
            assert on_device.dtype == xp.bool
            np.testing.assert_array_equal(to_numpy(on_device), on_host)


def test_scores_not_modified(xp):
    host = np.random.default_rng(1).normal(size=LAYOUT.size).astype(np.float32)
    for dtype in ("float32", "float64"):
        scores = asarray(host, dtype=dtype, xp=xp)
        before = to_numpy(scores).copy()
        global_mask(scores, 0.6, layout=LAYOUT)
        global_mask(scores, 0.6, layout=LAYOUT, max_layer_sparsity=0.7)
        layerwise_mask(scores, 0.6, layout=LAYOUT)
        np.testing.assert_array_equal(to_numpy(scores), before)


# --------------------------------------------------------------------------- compression
def test_compression_over_prunable_is_the_default():
    # the project-wide default counts the prunable set: compression c keeps 1/c of it
    assert COMPRESSION_OVER == "prunable"
    for c in (1.0, 2.0, 4.0, 5.0):
        assert resolve_sparsity(compression=c, layout=LAYOUT) == pytest.approx(1 - 1 / c)
        keep = global_mask(np.arange(LAYOUT.size, dtype=float), compression=c, layout=LAYOUT)
        assert compression(keep, LAYOUT) == pytest.approx(c)
        assert compression(keep, LAYOUT, over="all") < c or c == 1.0  # biases are always kept
    with pytest.raises(ValueError, match="over='some'"):
        resolve_sparsity(compression=2, layout=LAYOUT, over="some")


def test_compression_to_sparsity_shrinkbench_formula():
    # 24 parameters, 4 of them never pruned. compression 2 keeps 12: 4 bias + 8 of 20 prunable.
    assert resolve_sparsity(compression=2, layout=LAYOUT, over="all") == \
        pytest.approx(0.6, abs=1e-15)
    for c in (1.0, 1.3, 2.0, 3.7, 5.9):
        p = resolve_sparsity(compression=c, layout=LAYOUT, over="all")
        kept_all = 4 + (1 - p) * 20
        assert LAYOUT.size / kept_all == pytest.approx(c, rel=1e-12)
    # without a layout every entry is prunable and compression = 1 / (1 - p)
    assert resolve_sparsity(compression=4, n=100, over="all") == pytest.approx(0.75, abs=1e-15)


def test_mask_from_compression_reaches_it_exactly():
    keep = global_mask(np.arange(LAYOUT.size, dtype=float), compression=2, layout=LAYOUT,
                       over="all")
    assert LAYOUT.size / int(keep.sum()) == 2.0
    # a compression between two reachable counts rounds the prunable count like sparsity does
    p = resolve_sparsity(compression=3.0, layout=LAYOUT, over="all")
    keep = global_mask(np.arange(LAYOUT.size, dtype=float), compression=3.0, layout=LAYOUT,
                       over="all")
    assert int((~keep).sum()) == round(p * 20)
    assert abs(LAYOUT.size / int(keep.sum()) - 3.0) < 3.0 / int(keep.sum())


@pytest.mark.parametrize("bad", [0.5, 0.999, -2.0, float("nan"), float("inf")])
def test_compression_below_one_rejected(bad):
    with pytest.raises(ValueError, match="compression"):
        resolve_sparsity(compression=bad, layout=LAYOUT)
    with pytest.raises(ValueError, match="compression"):
        global_mask(np.arange(24.0), compression=bad, layout=LAYOUT)


def test_unreachable_compression_rejected():
    # 4 entries always kept out of 24: compression 6 would need every prunable entry gone
    with pytest.raises(ValueError, match="compression=6.0 is unreachable"):
        resolve_sparsity(compression=6.0, layout=LAYOUT, over="all")
    with pytest.raises(ValueError, match="unreachable"):
        resolve_sparsity(compression=50, layout=LAYOUT, over="all")
    assert resolve_sparsity(compression=5.9, layout=LAYOUT, over="all") < 1.0
    nothing_prunable = ParamLayout(("b",), ((4,),), (False,))
    assert resolve_sparsity(compression=1, layout=nothing_prunable) == 0.0
    with pytest.raises(ValueError, match="no prunable"):
        resolve_sparsity(compression=1.5, layout=nothing_prunable)


def test_exactly_one_of_sparsity_and_compression():
    with pytest.raises(ValueError, match="exactly one"):
        resolve_sparsity(0.5, 2.0, layout=LAYOUT)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_sparsity()
    with pytest.raises(ValueError, match="exactly one"):
        global_mask(np.arange(24.0), 0.5, compression=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        global_mask(np.arange(24.0))
    with pytest.raises(ValueError, match="layout= or n="):
        resolve_sparsity(compression=2.0, over="all")


# --------------------------------------------------------------------------- layer-wise
def test_layerwise_hand_example():
    # p = 0.3: w1 has 3.6 to lose, w2 2.4; total round(6) = 6 -> w1 4 (larger remainder), w2 2
    keep = layerwise_mask(np.zeros(LAYOUT.size), 0.3, layout=LAYOUT)
    per = masks_by_name(keep, LAYOUT)
    assert int((~per["w1"]).sum()) == 4 and int((~per["w2"]).sum()) == 2
    assert per["b1"].all()
    # equal remainders go to the earlier tensor: 2.5 + 2.5, total round(5.0) = 5 -> 3 + 2
    two = ParamLayout(("a", "b"), ((5,), (5,)), (True, True))
    keep = layerwise_mask(np.zeros(10), 0.5, layout=two)
    np.testing.assert_array_equal(keep, [0, 0, 0, 1, 1, 0, 0, 1, 1, 1])


@settings(max_examples=120, deadline=None)
@given(layouts_and_scores())
def test_layerwise_exact_per_layer_and_total(case):
    layout, scores, p = case
    keep = layerwise_mask(scores, p, layout=layout)
    assert int((~keep).sum()) == round(p * layout.n_prunable)
    for name, size, prunable in zip(layout.names, layout.sizes, layout.prunable, strict=True):
        sl = layout.slice_of(name)
        k_i = int((~keep[sl]).sum())
        if not prunable:
            assert k_i == 0
            continue
        assert k_i in (math.floor(p * size), math.ceil(p * size))
        # inside the tensor it is plain exact-k selection with ties by index
        np.testing.assert_array_equal(
            keep[sl], reference_global(scores[sl], k_i, np.ones(size, bool)))


def test_layerwise_needs_layout():
    with pytest.raises(TypeError, match="layout"):
        layerwise_mask(np.arange(5.0), 0.5, layout=None)


# --------------------------------------------------------------------------- per-layer cap
def test_cap_moves_removals_to_other_layers():
    scores = np.arange(LAYOUT.size, dtype=float)[::-1].copy()  # w2 holds the smallest scores
    plain = global_mask(scores, 0.5, layout=LAYOUT)
    assert not plain[LAYOUT.slice_of("w2")].any()  # global pruning empties w2
    keep = global_mask(scores, 0.5, layout=LAYOUT, max_layer_sparsity=0.5)
    per = masks_by_name(keep, LAYOUT)
    assert int((~per["w2"]).sum()) == 4 and int((~per["w1"]).sum()) == 6
    assert int((~keep).sum()) == 10


@settings(max_examples=120, deadline=None)
@given(layouts_and_scores(), st.floats(0.05, 1.0))
def test_cap_respected_and_total_exact(case, cap):
    layout, scores, p = case
    k = round(p * layout.n_prunable)
    caps = [math.floor(round(cap * s, 9)) if pr else 0
            for s, pr in zip(layout.sizes, layout.prunable, strict=True)]
    if k > sum(caps):
        with pytest.raises(ValueError, match="max_layer_sparsity"):
            global_mask(scores, p, layout=layout, max_layer_sparsity=cap)
        return
    keep = global_mask(scores, p, layout=layout, max_layer_sparsity=cap)
    assert int((~keep).sum()) == k
    for name, size in zip(layout.names, layout.sizes, strict=True):
        assert int((~keep[layout.slice_of(name)]).sum()) <= math.floor(round(cap * size, 9))
    np.testing.assert_array_equal(keep, reference_capped(scores, k, layout, cap))


def test_cap_of_one_changes_nothing():
    scores = np.random.default_rng(2).normal(size=LAYOUT.size)
    np.testing.assert_array_equal(
        global_mask(scores, 0.8, layout=LAYOUT, max_layer_sparsity=1.0),
        global_mask(scores, 0.8, layout=LAYOUT))


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, "0.5", True])
def test_bad_cap_named(bad):
    with pytest.raises(ValueError, match="max_layer_sparsity"):
        global_mask(np.arange(24.0), 0.5, layout=LAYOUT, max_layer_sparsity=bad)


def test_impossible_cap_named():
    with pytest.raises(ValueError, match="max_layer_sparsity"):
        global_mask(np.arange(24.0), 0.8, layout=LAYOUT, max_layer_sparsity=0.5)


# --------------------------------------------------------------------------- bad scores
def test_bad_scores_rejected():
    with pytest.raises(ValueError, match="scores"):
        global_mask(np.zeros((4, 6)), 0.5)
    with pytest.raises(ValueError, match="scores"):
        global_mask(np.zeros(23), 0.5, layout=LAYOUT)  # wrong length for the layout
    with pytest.raises(TypeError, match="scores"):
        global_mask(np.zeros(6, dtype=np.complex128), 0.5)
    with pytest.raises(TypeError, match="scores"):
        global_mask(np.zeros(6, dtype=bool), 0.5)
    with pytest.raises(TypeError, match="scores"):
        global_mask("abc", 0.5)


def test_nan_and_inf_scores_rejected(xp):
    host = np.arange(8.0)
    host[5] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite values \(1 NaN\).*index 5"):
        global_mask(asarray(host, xp=xp), 0.5)
    host[5] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        layerwise_mask(asarray(host, xp=xp), 0.5, layout=ParamLayout(("t",), ((8,),), (True,)))


def test_integer_scores_and_lists_accepted():
    np.testing.assert_array_equal(global_mask([3, 1, 2, 0], 0.5), [True, False, True, False])
    np.testing.assert_array_equal(global_mask(np.array([3, 1, 2, 0], dtype=np.int8), 0.25),
                                  [True, True, True, False])


# --------------------------------------------------------------------------- masks_by_name
def test_masks_by_name_shapes_and_values(xp):
    host = np.random.default_rng(4).normal(size=LAYOUT.size)
    keep = global_mask(asarray(host, xp=xp), 0.5, layout=LAYOUT)
    per = masks_by_name(keep, LAYOUT)
    assert list(per) == list(LAYOUT.names)
    flat = to_numpy(keep)
    for name, shape in zip(LAYOUT.names, LAYOUT.shapes, strict=True):
        assert tuple(per[name].shape) == shape
        np.testing.assert_array_equal(to_numpy(per[name]).reshape(-1), flat[LAYOUT.slice_of(name)])
    with pytest.raises(TypeError, match="mask"):
        masks_by_name(np.ones(LAYOUT.size), LAYOUT)
    with pytest.raises(ValueError, match="mask"):
        masks_by_name(np.ones(5, bool), LAYOUT)


# --------------------------------------------------------------------------- baseline scores
def test_magnitude_scores(xp):
    host = np.array([-2.0, 0.5, 0.0, -0.0, 3.0], dtype=np.float32)
    theta = asarray(host, xp=xp)
    s = magnitude_scores(theta)
    assert s.dtype == xp.float64 and namespace_of(s) is namespace_of(theta)
    np.testing.assert_array_equal(to_numpy(s), [2.0, 0.5, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(to_numpy(theta), host)  # input untouched
    keep = to_numpy(global_mask(s, 0.4))
    np.testing.assert_array_equal(keep, [True, True, False, False, True])
    with pytest.raises(TypeError, match="theta"):
        magnitude_scores(np.zeros(3, dtype=np.complex64))


def test_random_scores_same_seed_same_mask_on_every_backend(xp):
    like = asarray(np.zeros(LAYOUT.size, dtype=np.float32), xp=xp)
    s = random_scores(like, seed=7)
    assert s.dtype == xp.float64 and tuple(s.shape) == (LAYOUT.size,)
    assert namespace_of(s) is namespace_of(like)
    with use_backend("numpy"):
        host = random_scores(LAYOUT.size, seed=7)
        host_keep = global_mask(host, 0.5, layout=LAYOUT)
    np.testing.assert_array_equal(to_numpy(s), host)
    np.testing.assert_array_equal(to_numpy(global_mask(s, 0.5, layout=LAYOUT)), host_keep)
    vals = to_numpy(s)
    assert ((vals >= 0) & (vals < 1)).all()
    assert not np.array_equal(to_numpy(random_scores(like, seed=8)), vals)


def test_random_scores_from_n_and_layout_use_current_backend(xp):
    s = random_scores(10, seed=0)
    assert namespace_of(s) is xp and s.dtype == xp.float64
    np.testing.assert_array_equal(to_numpy(random_scores(LAYOUT, seed=0)),
                                  to_numpy(random_scores(LAYOUT.size, seed=0)))
    with pytest.raises(ValueError, match="n_or_like"):
        random_scores(np.zeros((2, 3)), seed=0)
    with pytest.raises(TypeError, match="n_or_like"):
        random_scores("ten", seed=0)
    with pytest.raises(ValueError, match="seed"):
        random_scores(10, seed=-1)
