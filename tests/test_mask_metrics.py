"""Mask metrics (docs/theory.md §13): sparsity, both compressions, overlap, Jaccard, mask table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kooplearn_prune.backend import asarray
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.pruning import (
    compression,
    format_mask_table,
    global_mask,
    jaccard,
    mask_table,
    overlap,
    sparsity,
)

# ``xp`` (one namespace per backend, CuPy only with a GPU) comes from conftest.py.


# w (2x3, prunable) | b (2, never pruned) | v (4, prunable): n = 12, 10 prunable
LAYOUT = ParamLayout(("w", "b", "v"), ((2, 3), (2,), (4,)), (True, False, True))
#                  w: 4 kept, 2 pruned | b: both kept | v: 1 kept, 3 pruned
MASK = np.array([1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0], dtype=bool)
# B keeps 5 prunable entries too; 3 of them are also kept by MASK (indices 0, 4, 10)
OTHER = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)


def on(xp, host):
    return asarray(host, xp=xp)


# --------------------------------------------------------------------------- sparsity, compression
def test_sparsity_and_compression_hand_made(xp):
    mask = on(xp, MASK)
    assert sparsity(mask, LAYOUT) == 0.5  # 5 of 10 prunable removed
    assert compression(mask, LAYOUT) == 2.0  # 1 / (1 - 0.5)
    assert compression(mask, LAYOUT, over="all") == 12 / 7  # ShrinkBench: 12 / (5 + 2)
    for value in (sparsity(mask, LAYOUT), compression(mask, LAYOUT),
                  compression(mask, LAYOUT, over="all")):
        assert type(value) is float


def test_without_layout_everything_is_prunable(xp):
    mask = on(xp, MASK)
    assert sparsity(mask) == 5 / 12
    assert compression(mask) == compression(mask, over="all") == 12 / 7


def test_pruned_non_prunable_entry_counts_only_over_all():
    mask = MASK.copy()
    mask[6] = False  # a bias removed by hand: not a prunable entry
    assert sparsity(mask, LAYOUT) == 0.5
    assert compression(mask, LAYOUT) == 2.0
    assert compression(mask, LAYOUT, over="all") == 12 / 6


def test_edge_values():
    assert sparsity(np.ones(4, bool)) == 0.0 and compression(np.ones(4, bool)) == 1.0
    assert compression(np.zeros(4, bool)) == math.inf
    nothing_prunable = ParamLayout(("b",), ((3,),), (False,))
    assert sparsity(np.ones(3, bool), nothing_prunable) == 0.0
    assert compression(np.ones(3, bool), nothing_prunable) == 1.0


# --------------------------------------------------------------------------- overlap and Jaccard
def test_overlap_and_jaccard_hand_made(xp):
    a, b = on(xp, MASK), on(xp, OTHER)
    assert overlap(a, b, LAYOUT) == 3 / 5
    assert overlap(b, a, LAYOUT) == 3 / 5
    assert jaccard(a, b, LAYOUT) == 3 / 7  # union 5 + 5 - 3
    # counting the two always-kept bias entries would wrongly give 5/7 and 5/9
    assert overlap(a, b) == 5 / 7 and jaccard(a, b) == 5 / 9
    assert type(overlap(a, b, LAYOUT)) is float and type(jaccard(a, b, LAYOUT)) is float


def test_overlap_limits():
    assert overlap(MASK, MASK, LAYOUT) == 1.0 and jaccard(MASK, MASK, LAYOUT) == 1.0
    complement = ~MASK
    complement[6:8] = True  # biases stay kept in both
    assert overlap(MASK, complement, LAYOUT) == 0.0 and jaccard(MASK, complement, LAYOUT) == 0.0
    # unequal sparsity: overlap is asymmetric, |A ∩ B| / |A|
    fewer = MASK & np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    assert overlap(fewer, MASK, LAYOUT) == 1.0 and overlap(MASK, fewer, LAYOUT) == 1 / 5
    nothing = np.zeros(12, bool)
    nothing[6:8] = True
    with pytest.raises(ValueError, match="mask_a keeps no prunable"):
        overlap(nothing, MASK, LAYOUT)
    assert jaccard(nothing, nothing, LAYOUT) == 1.0


def test_metrics_from_engine_masks():
    rng = np.random.default_rng(0)
    s_a, s_b = rng.normal(size=LAYOUT.size), rng.normal(size=LAYOUT.size)
    a, b = global_mask(s_a, 0.3, layout=LAYOUT), global_mask(s_b, 0.3, layout=LAYOUT)
    assert sparsity(a, LAYOUT) == 0.3
    kept_a = a & LAYOUT.prunable_mask()
    kept_b = b & LAYOUT.prunable_mask()
    assert overlap(a, b, LAYOUT) == (kept_a & kept_b).sum() / kept_a.sum()
    assert jaccard(a, b, LAYOUT) == (kept_a & kept_b).sum() / (kept_a | kept_b).sum()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.floats(0.0, 0.999), st.integers(0, 2**32 - 1))
def test_engine_sparsity_and_compression_agree(n, p, seed):
    keep = global_mask(np.random.default_rng(seed).normal(size=n), p)
    k = round(p * n)
    assert sparsity(keep) == k / n
    expected = math.inf if k == n else n / (n - k)
    assert compression(keep) == expected
    if k < n:
        assert compression(keep) == pytest.approx(1 / (1 - sparsity(keep)), rel=1e-12)


# --------------------------------------------------------------------------- table
def test_mask_table_rows(xp):
    rows = mask_table(on(xp, MASK), LAYOUT)
    assert [r["name"] for r in rows] == ["w", "b", "v", "total (prunable)", "total (all)"]
    w, b, v, tot_p, tot_all = rows
    assert w == {"name": "w", "shape": (2, 3), "size": 6, "prunable": True, "kept": 4,
                 "pruned": 2, "sparsity": 2 / 6}
    assert (b["kept"], b["pruned"], b["prunable"], b["sparsity"]) == (2, 0, False, 0.0)
    assert (v["kept"], v["pruned"], v["sparsity"]) == (1, 3, 0.75)
    assert (tot_p["size"], tot_p["kept"], tot_p["pruned"], tot_p["sparsity"]) == (10, 5, 5, 0.5)
    assert (tot_all["size"], tot_all["kept"], tot_all["pruned"]) == (12, 7, 5)
    assert tot_all["sparsity"] == 5 / 12


def test_format_mask_table():
    text = format_mask_table(mask_table(MASK, LAYOUT))
    lines = text.splitlines()
    table_lines = lines[:7]  # header, rule, 3 tensors, 2 totals
    assert len({len(line) for line in table_lines}) == 1  # fixed width
    assert lines[0].split() == ["name", "shape", "size", "prunable", "kept", "pruned", "sparsity"]
    assert lines[2].split() == ["w", "2x3", "6", "yes", "4", "2", "0.3333"]
    assert lines[3].split() == ["b", "2", "2", "no", "2", "0", "0.0000"]
    assert "compression over the prunable set: 2" in text
    assert "ShrinkBench compression (all parameters): 1.714" in text


# --------------------------------------------------------------------------- bad input
def test_bad_masks_named():
    with pytest.raises(TypeError, match="mask"):
        sparsity(MASK.astype(np.int8), LAYOUT)
    with pytest.raises(ValueError, match="mask"):
        sparsity(MASK[:5], LAYOUT)
    with pytest.raises(ValueError, match="mask"):
        compression(MASK.reshape(3, 4))
    with pytest.raises(TypeError, match="mask"):
        mask_table([True, False], None)
    with pytest.raises(ValueError, match="over"):
        compression(MASK, LAYOUT, over="everything")
    with pytest.raises(ValueError, match="mask_b"):
        overlap(MASK, MASK[:5])
    with pytest.raises(TypeError, match="mask_b"):
        jaccard(MASK, MASK.astype(float), LAYOUT)
    with pytest.raises(TypeError, match="layout"):
        sparsity(MASK, layout="w")
