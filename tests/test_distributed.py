"""Koopman pruning across ranks: the distributed selection (one process, simulated ranks) and the
torch.distributed adapter (2 and 4 gloo processes on loopback, one spawn per world size).

The ranks train the same tiny model on the same full batch as a one-process run. DDP's gradient
average of P equal float32 gradients is not always exact (3g is rounded before 4g/4), so the DDP
model uses a comm hook that keeps the (identical) local gradient: the replicas then follow the
one-process run bit for bit, and so does FSDP2 at P = 2 (g/2 + g/2 is exact).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.pruning.distributed import (
    Sharding,
    distributed_global_mask,
    distributed_layerwise_mask,
    order_keys,
)
from kooplearn_prune.pruning.masks import global_mask, layerwise_mask

torch = pytest.importorskip("torch")
dist = torch.distributed

STEPS, SPARSITY = 12, 0.5
CASES = (("kmp", "global"), ("kmp", "layerwise"), ("kgp", "global"), ("kgp", "layerwise"),
         ("magnitude", "global"), ("magnitude", "layerwise"))


# --------------------------------------------------------------------------- simulated ranks
def simulate(select, scores, sharding, **kwargs):
    """Run ``select`` on every rank of ``sharding`` in threads with a summing fake all-reduce.

    Returns the assembled mask and each rank's list of bytes sent; when a rank raises, raises
    ``RankErrors`` with every rank's exception (a rank left waiting breaks the barrier after 10 s).
    """
    world = sharding.world_size
    box, barrier = [None] * world, threading.Barrier(world, timeout=10)
    out, sent = [None] * world, [[] for _ in range(world)]

    def run(rank):
        def allreduce_sum(array):
            box[rank] = np.array(array)
            sent[rank].append(array.nbytes)
            barrier.wait()
            total = sum(box)
            barrier.wait()
            return total
        try:
            out[rank] = select(sharding.local_view(scores, rank), sharding=sharding, rank=rank,
                               allreduce_sum=allreduce_sum, **kwargs)
        except Exception as err:  # noqa: BLE001 - handed to the test thread below
            out[rank] = err

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(isinstance(o, Exception) for o in out):
        raise RankErrors(out)
    return sharding.assemble(out), sent


class RankErrors(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(f"rank {r}: {e!r}" for r, e in enumerate(errors)))
        self.errors = errors


def random_case(rng):
    shapes = [tuple(int(d) for d in rng.integers(1, 7, size=rng.integers(1, 3)))
              for _ in range(rng.integers(1, 5))]
    prunable = [bool(b) for b in rng.integers(0, 2, len(shapes))]
    prunable[0] = True
    layout = ParamLayout(tuple(f"t{i}" for i in range(len(shapes))), tuple(shapes),
                         tuple(prunable))
    if rng.random() < 0.6:  # few distinct values: many ties, signs and -0.0
        scores = rng.integers(-2, 3, layout.size) * rng.choice([1.0, 0.5, 1e-300])
        scores[rng.random(layout.size) < 0.2] = -0.0
    else:
        scores = rng.standard_normal(layout.size)
    world = int(rng.integers(1, 5))
    if rng.random() < 0.5:
        sharding = Sharding.contiguous(layout, world)
    else:  # interleaved runs, FSDP-like, some ranks empty
        cuts = [0, *sorted(int(c) for c in rng.integers(0, layout.size + 1, 2 * world)),
                layout.size]
        runs = [[] for _ in range(world)]
        for i in range(len(cuts) - 1):
            runs[int(rng.integers(0, world))].append((cuts[i], cuts[i + 1] - cuts[i]))
        sharding = Sharding.from_segments(layout, runs)
    return layout, scores, sharding


@pytest.mark.parametrize("seed", range(4))
def test_distributed_selection_equals_one_process_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        layout, scores, sharding = random_case(rng)
        p = float(rng.choice([0.0, 0.1, 0.5, 0.77, 0.99]))
        bits = int(rng.choice([1, 4, 8, 16]))
        got, _ = simulate(distributed_global_mask, scores, sharding, sparsity=p, bits=bits)
        np.testing.assert_array_equal(got, global_mask(scores, p, layout=layout))
        got, _ = simulate(distributed_layerwise_mask, scores, sharding, sparsity=p, bits=bits)
        np.testing.assert_array_equal(got, layerwise_mask(scores, p, layout=layout))


def test_order_keys_sort_like_floats():
    values = np.array([3.0, -0.0, 0.0, -1e-300, 1e-300, -np.inf, np.inf, -2.5, 7e10])
    keys = order_keys(values)
    assert np.array_equal(np.argsort(keys, kind="stable"), np.argsort(values + 0.0, kind="stable"))
    assert keys[1] == keys[2]  # -0.0 == 0.0, as for the one-process engine


def test_selection_bytes_do_not_grow_with_n():
    """Per round one int64 per bucket: 8 rounds of 2 KiB at most for a global mask, any n."""
    for n in (1_000, 200_000):
        layout = ParamLayout(("w",), ((n,),), (True,))
        scores = np.random.default_rng(0).standard_normal(n)
        got, sent = simulate(distributed_global_mask, scores, Sharding.contiguous(layout, 3),
                             sparsity=0.9)
        np.testing.assert_array_equal(got, global_mask(scores, 0.9, layout=layout))
        per_rank = sum(sent[0])
        assert 24 + 2048 <= per_rank <= 24 + 8 * 2048 + 8 * 3
        assert len(sent[0]) <= 9


def test_disagreeing_or_bad_scores_raise_on_every_rank():
    layout = ParamLayout(("w",), ((10,),), (True,))
    sharding = Sharding.contiguous(layout, 2)
    scores = np.arange(10.0)
    scores[7] = np.nan
    with pytest.raises(RankErrors) as caught:
        simulate(distributed_global_mask, scores, sharding, sparsity=0.5)
    for err in caught.value.errors:  # the same error on every rank, no rank left waiting
        assert isinstance(err, ValueError) and "1 non-finite" in str(err)

    def uneven(local, **kwargs):  # rank 1 asks for another sparsity
        p = 0.5 if kwargs["rank"] == 0 else 0.3
        return distributed_global_mask(local, p, **kwargs)

    with pytest.raises(RankErrors) as caught:
        simulate(uneven, np.arange(10.0), sharding)
    for err in caught.value.errors:
        assert isinstance(err, ValueError) and "different numbers of entries" in str(err)
    with pytest.raises(ValueError, match="do not tile"):
        Sharding.from_segments(layout, [[(0, 4)], [(5, 5)]])
