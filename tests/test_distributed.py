"""Koopman pruning across ranks: the distributed selection (one process, simulated ranks) and the
torch.distributed adapter (2 and 4 gloo processes on loopback, one spawn per world size).

The ranks run in fresh processes (a fork server, no fork of the test process) and train the same
tiny model on the same full batch as a one-process run. DDP's average of P equal float32
gradients is not always exact (3g is rounded before 4g/4), so the DDP model uses a comm hook that
keeps the (identical) local gradient: the replicas then follow the one-process run bit for bit,
and so does FSDP2 at P = 2 (g/2 + g/2 is exact). The short window's fixed point is flagged
unreliable (FixedPointWarning, silenced here); the masks must agree all the same.
"""

from __future__ import annotations

import datetime
import math
import os
import threading
import time
import traceback
import warnings

import numpy as np
import pytest

from kooplearn_prune.koopman import KMD, FixedPointWarning
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.pruning.distributed import (
    Sharding,
    distributed_global_mask,
    distributed_layerwise_mask,
    order_keys,
)
from kooplearn_prune.pruning.masks import global_mask, layerwise_mask

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::kooplearn_prune.koopman.FixedPointWarning")
dist = torch.distributed

STEPS, SPARSITY = 12, 0.5
#: Both sides fit KMD(rank="optimal"): at full rank (KMD()'s default) this 13-snapshot window
#: keeps directions at the precision floor, whose modes move with the last bits of G (KGP scores
#: 1e-4 apart between two summation orders of the same Gram matrix, and the one-process SVD fit
#: keeps 9 directions where the Gram fit keeps 8); the truncated fits agree to 1e-8.
RANK = "optimal"
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


# --------------------------------------------------------------------------- torch.distributed
def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def train(model, recorder):
    """``STEPS`` full-batch SGD steps, recording every step through the optimizer hook."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    x, y = batch()
    with recorder.attach(opt):
        for _ in range(STEPS):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def one_process_masks():
    """The reference: the plain TorchRecorder and koopman_masks on the same training run."""
    from kooplearn_prune.adapters.torch import TorchRecorder, koopman_masks
    torch.set_num_threads(1)
    model = tiny_model()
    recorder = TorchRecorder(model, stop=STEPS, record_gradients=True)
    train(model, recorder)
    out = {"snapshots": np.array(recorder.trajectory().snapshots),  # copies: the recorder's
           "gradients": np.array(recorder.trajectory().gradients)}  # host memory is pooled
    for method, scope in CASES:
        kmd = None if method == "magnitude" else KMD(rank=RANK).fit(recorder.trajectory())
        masks, report = koopman_masks(recorder.trajectory(), method, SPARSITY, scope=scope,
                                      kmd=kmd)
        out[method, scope] = (np.asarray(report.flat_mask), np.asarray(report.scores))
    return recorder.layout, out


def keep_local_gradient(state, bucket):
    """DDP comm hook: every replica computed the same gradient, keep it (see module docstring)."""
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def run_cases(recorder, comm):
    from kooplearn_prune.adapters.torch.distributed import distributed_masks, fit_distributed
    kmd = fit_distributed(recorder, KMD(rank=RANK))
    out = {}
    for method, scope in CASES:
        before = dict(comm.bytes_sent)
        masks, report = distributed_masks(recorder, method, SPARSITY, scope=scope,
                                          kmd=kmd if method != "magnitude" else None)
        used = {k: comm.bytes_sent[k] - before[k] for k in comm.bytes_sent}
        out[f"{method}-{scope}-mask"] = report.local_mask
        out[f"{method}-{scope}-scores"] = report.local_scores
        out[f"{method}-{scope}-bytes"] = np.array([used["selection"], used["fingerprint"],
                                                  used["gram"], used["mask_gather"]])
        if masks and not recorder.sharded:  # DDP: every replica gets every full mask
            out[f"{method}-{scope}-full"] = np.concatenate([m.reshape(-1).numpy()
                                                           for m in masks.values()])
    out["gram-bytes"] = np.array(comm.bytes_sent["gram"])
    return out


def worker(rank, world, init_file, out_dir):
    """One rank: DDP (and FSDP2 at P = 2) checks, bad input, and a dying rank at P = 4."""
    from kooplearn_prune.adapters.torch.distributed import (
        DistributedRecorder,
        ProcessGroupComm,
        RankFailure,
        check_agreement,
        fit_distributed,
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FixedPointWarning)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        comm = ProcessGroupComm()
        model = tiny_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        ddp.register_comm_hook(None, keep_local_gradient)
        recorder = DistributedRecorder(ddp, comm=comm, stop=STEPS, record_gradients=True)
        train(ddp, recorder)
        results["ddp-snapshots"] = recorder.snapshots()
        results["ddp-gradients"] = recorder._buffer.filled("gradients").numpy()
        results.update({f"ddp-{k}": v for k, v in run_cases(recorder, comm).items()})
        if world == 2:
            from torch.distributed.fsdp import fully_shard
            sharded = tiny_model()
            fully_shard(sharded)
            fsdp_comm = ProcessGroupComm()
            fsdp = DistributedRecorder(sharded, comm=fsdp_comm, stop=STEPS)
            train(sharded, fsdp)
            results["fsdp-snapshots"] = fsdp.snapshots()
            results.update({f"fsdp-{k}": v for k, v in run_cases(fsdp, fsdp_comm).items()})
            results["fsdp-columns"] = fsdp.sharding.local_indices(rank)
            # Bad input: another layout, another number of snapshots -> one error on every rank.
            plain = tiny_model()
            other = DistributedRecorder(plain, comm=comm, stop=3,
                                        prunable=["0.weight"] if rank else None)
            other.attach()
            for _ in range(3 - rank):
                other.step()
            try:
                check_agreement(other)
            except ValueError as err:
                results["disagree"] = np.array(str(err))
        if world == 4:  # too few columns for the ranks; then rank 3 dies in the middle of a fit
            try:
                DistributedRecorder(torch.nn.Linear(1, 1), comm=comm)
            except ValueError as err:
                results["empty"] = np.array(str(err))
            # Collectives of this group time out after 3 s; survivors then wait 6 s for each
            # other (longer, so that one whose collective timed out still reports in time).
            group = dist.new_group(timeout=datetime.timedelta(seconds=3))
            short = ProcessGroupComm(group, timeout=datetime.timedelta(seconds=6))
            dying = DistributedRecorder(tiny_model(), comm=short, stop=3)
            dying.attach()
            for _ in range(3):
                dying.step()
            dist.barrier()  # a slow rank (busy machine) is not a dead one
            if rank == 3:
                check_agreement(dying)
                np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
                os._exit(0)
            try:
                fit_distributed(dying)
            except RankFailure as err:
                results["died"] = np.array(f"{err.ranks}|{err}")
    except BaseException:
        results["error"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    if world != 4:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both worlds (P = 2 and P = 4) started at once, the one-process run computed meanwhile.

    A fork server (fresh processes, like spawn, no fork of this one) imports torch, DDP's
    torch._dynamo and this module once: spawned ranks each spent ~10 s importing on a busy box.
    """
    ctx = torch.multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed.fsdp",
                                "kooplearn_prune.adapters.torch.distributed", __name__])
    started = {}
    for world in (2, 4):
        out = tmp_path_factory.mktemp(f"world{world}")
        procs = [ctx.Process(target=worker, args=(r, world, str(out / "init"), str(out)))
                 for r in range(world)]
        for proc in procs:
            proc.start()
        started[world] = (out, procs)
    layout, reference = one_process_masks()
    results = {}
    deadline = time.monotonic() + 240
    for world, (out, procs) in started.items():
        for proc in procs:
            proc.join(max(1.0, deadline - time.monotonic()))
        hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        assert not hung, f"ranks {hung} of {world} hung"
        ranks = []
        for r in range(world):
            with np.load(out / f"rank{r}.npz") as data:
                ranks.append({k: data[k] for k in data.files})
            assert "error" not in ranks[-1], f"rank {r} of {world}: {ranks[-1]['error']}"
        results[world] = ranks
    return layout, reference, results


def assemble(layout, ranks, key, columns=None):
    """The full flat vector (mask or scores) from every rank's local part."""
    if columns is None:
        sharding = Sharding.contiguous(layout, len(ranks))
        return sharding.assemble([r[key] for r in ranks])
    out = np.empty(layout.size, dtype=bool)
    for r in ranks:
        out[r[columns]] = r[key]
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_masks_equal_one_process_bit_for_bit(runs, world):
    layout, reference, results = runs
    ranks = results[world]
    m1 = STEPS + 1
    for method, scope in CASES:
        want, want_scores = reference[method, scope]
        got = assemble(layout, ranks, f"ddp-{method}-{scope}-mask")
        assert np.array_equal(got, want), (method, scope)
        scores = assemble(layout, ranks, f"ddp-{method}-{scope}-scores")
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6 * want_scores.max())
        if method == "magnitude":  # the same numbers, not only the same mask
            assert np.array_equal(scores, want_scores)
        prunable = np.concatenate([np.asarray(want).reshape(-1)[layout.slice_of(n)]
                                   for n, p in zip(layout.names, layout.prunable) if p])
        for r in ranks:  # every replica holds every full mask (packed bits all-gathered)
            assert np.array_equal(r[f"ddp-{method}-{scope}-full"], prunable)
            selection, fingerprint, gram, gathered = r[f"ddp-{method}-{scope}-bytes"]
            groups = 1 if scope == "global" else layout.prunable.count(True)
            # 3 check counts, then per round one int64 per bucket and group; ties: one per piece
            assert 24 + 2048 * groups <= selection <= 24 + 8 * 2048 * groups + 8 * 2 * world
            # the shared fit checked the fingerprints once; magnitude checks them itself
            assert fingerprint == (48 if method == "magnitude" else 0) and gram == 0
            assert gathered == math.ceil(math.ceil(layout.size / world) / 8)
    for r in ranks:
        assert r["ddp-gram-bytes"] == 8 * m1 * m1  # one (m+1)² float64 all-reduce per fit


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_ranks_record_their_slice_of_the_one_process_run(runs, world):
    layout, reference, results = runs
    sharding = Sharding.contiguous(layout, world)
    for rank, r in enumerate(results[world]):
        for what in ("snapshots", "gradients"):
            want = sharding.local_view(reference[what], rank)
            assert np.array_equal(r[f"ddp-{what}"], want), (what, rank)


def test_fsdp_masks_equal_one_process_bit_for_bit(runs):
    layout, reference, results = runs
    ranks = results[2]
    columns = [r["fsdp-columns"] for r in ranks]
    assert not np.array_equal(columns[0], np.arange(columns[0].size))  # per-tensor shards
    for rank, r in enumerate(ranks):  # each rank recorded its own shards of the same run
        assert np.array_equal(r["fsdp-snapshots"], reference["snapshots"][:, columns[rank]])
    for method, scope in CASES:
        got = assemble(layout, ranks, f"fsdp-{method}-{scope}-mask", "fsdp-columns")
        assert np.array_equal(got, reference[method, scope][0]), (method, scope)


def test_disagreeing_ranks_fail_on_every_rank(runs):
    _, _, results = runs
    for r in results[2]:
        message = str(r["disagree"])
        assert "disagree" in message and "the layouts (tensor names" in message
        assert "numbers of snapshots m+1 differ (rank 0: 4, rank 1: 3)" in message


def test_dying_rank_is_named_by_the_others(runs):
    _, _, results = runs
    for r in results[4]:  # 2 parameters over 4 ranks: every rank refuses, none waits
        assert "rank(s) [2, 3] would hold no column" in str(r["empty"])
    for r in results[4][:3]:
        ranks, message = str(r["died"]).split("|", 1)
        assert ranks == "[3]"
        assert "rank 3" in message and "gram" in message
