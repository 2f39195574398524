"""Koopman pruning of a model trained with ``torch.distributed`` (DDP, FSDP2); docs/theory.md §5.2.

The method of snapshots needs only ``G = W Wᵀ``, a sum over the parameter columns: with the
columns split over ranks, ``G = Σ_s W_s W_sᵀ`` is one all-reduce of an ``(m+1)²`` float64 matrix.
Every rank then fits the same small KMD, and modes, fixed point and scores stay local to its
columns; the global exact-k mask comes from ``pruning.distributed`` (counts only, no scores move).

* ``DistributedRecorder``: a ``TorchRecorder`` that records only this rank's columns. With DDP
  (replicated parameters) rank ``r`` takes slice ``r`` of ``P`` near-equal contiguous slices of θ in
  layout order; with FSDP2 (``torch.distributed.fsdp.fully_shard``, DTensors sharded on dim 0)
  each rank records its local shards.
* ``fit_distributed``: the checked, all-reduced Gram fit of the recorded window.
* ``distributed_masks``: KMP, KGP and magnitude masks, global or layer-wise.
* ``ProcessGroupComm``: the collectives, with a byte counter per stage, and the diagnosis of a
  rank that died or hangs (``RankFailure`` names it on every surviving rank).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from ...backend import to_numpy
from ...koopman import KMD, kgp_scores, kmp_scores
from ...koopman.snapshots import gram_matrix
from ...layout import ParamLayout
from ...methods import get_method
from ...pruning.distributed import (
    DEFAULT_BITS,
    Sharding,
    distributed_global_mask,
    distributed_layerwise_mask,
)
from ...pruning.masks import COMPRESSION_OVER, resolve_sparsity
from .params import check_layout, select_parameters, to_backend, torch
from .record import TorchRecorder

__all__ = ["ProcessGroupComm", "RankFailure", "DistributedRecorder", "fit_distributed",
           "distributed_masks", "DistributedMaskReport", "DISTRIBUTED_METHODS"]

dist = torch.distributed

#: The methods whose scores are local to a rank's columns (and their scopes).
DISTRIBUTED_METHODS = ("kmp", "kgp", "magnitude", "magnitude_layerwise")
STAGES = ("fingerprint", "gram", "selection", "mask_gather")


class RankFailure(RuntimeError):
    """A collective failed because a rank died or stopped answering (``ranks`` names them)."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


class ProcessGroupComm:
    """The collectives of one process group, counted: ``bytes_sent[stage]`` and ``calls[stage]``.

    ``bytes_sent`` is the payload a rank contributes (the array's ``nbytes``); a ring all-reduce
    moves about ``2(P−1)/P`` times that over the wire per rank. ``timeout``: how long a rank waits,
    after a failed collective, for the others to report alive; the collective itself fails after
    the process group's own timeout (``init_process_group(timeout=...)``), so make ``timeout``
    longer than that, or a survivor whose collective timed out later is named as missing.
    ``store``: a ``torch.distributed.Store`` shared by the group (default: the default group's).
    """

    def __init__(self, group: Any = None, *, timeout: timedelta = timedelta(seconds=60),
                 store: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call "
                               "torch.distributed.init_process_group(...) first")
        if not isinstance(timeout, timedelta) or timeout.total_seconds() <= 0:
            raise ValueError(f"timeout must be a positive datetime.timedelta, got {timeout!r}")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.global_ranks = dist.get_process_group_ranks(group) if group is not None \
            else list(range(self.world_size))
        self.timeout = timeout
        self.store = store if store is not None else _default_store()
        self.bytes_sent = dict.fromkeys(STAGES, 0)
        self.calls = dict.fromkeys(STAGES, 0)
        self._sequence = 0

    def allreduce_sum(self, array: np.ndarray, stage: str = "selection") -> np.ndarray:
        """The element-wise sum of ``array`` over the group (a new host array)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array).copy())
        self._run(stage, tensor.numel() * tensor.element_size(),
                  lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group))
        return tensor.numpy()

    def all_gather(self, array: np.ndarray, stage: str) -> np.ndarray:
        """``(P, *array.shape)``: every rank's ``array`` (same shape and dtype on every rank)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array).copy())
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._run(stage, tensor.numel() * tensor.element_size(),
                  lambda: dist.all_gather(out, tensor, group=self.group))
        return torch.stack(out).numpy()

    def _run(self, stage: str, nbytes: int, collective: Any) -> None:
        self._sequence += 1
        self.calls[stage] += 1
        self.bytes_sent[stage] += int(nbytes)
        try:
            collective()
        except RuntimeError as err:  # DistBackendError, gloo's "Connection closed", timeouts
            missing = self._missing_ranks(stage)
            if missing:
                raise RankFailure(
                    f"rank {', '.join(map(str, missing))} of the process group stopped during "
                    f"the {stage} collective #{self._sequence} (it died or hangs; not seen "
                    f"within {self.timeout.total_seconds():g} s): {err}", missing) from err
            raise

    def _missing_ranks(self, stage: str) -> list[int]:
        """Group ranks that do not report alive within ``timeout`` after a failed collective."""
        if self.store is None:
            return []
        prefix = f"kooplearn_prune/{'-'.join(map(str, self.global_ranks))}/{self._sequence}"
        keys = [f"{prefix}/{r}" for r in range(self.world_size)]
        try:
            self.store.set(keys[self.rank], stage)
            self.store.wait(keys, self.timeout)
            return []
        except RuntimeError:  # timed out, or the store's host (rank 0 on TCP) is gone
            try:
                return [r for r, key in enumerate(keys) if not self.store.check([key])]
            except RuntimeError:
                return [0]  # the TCPStore lives in global rank 0's process


def _default_store() -> Any:
    getter = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return None if getter is None else getter()
    except (RuntimeError, ValueError):
        return None


# --------------------------------------------------------------------------- recording
def _unwrap(model: Any) -> Any:
    ddp = getattr(torch.nn.parallel, "DistributedDataParallel", None)
    return model.module if ddp is not None and isinstance(model, ddp) else model


def _is_dtensor(tensor: Any) -> bool:
    dtensor = getattr(getattr(dist, "tensor", None), "DTensor", None)
    return dtensor is not None and isinstance(tensor, dtensor)


def _fsdp_segments(layout: ParamLayout, refs: list, world: int) -> list[list[tuple[int, int]]]:
    """Each rank's runs of θ under FSDP2's dim-0 sharding (``torch.chunk`` of the rows)."""
    segments: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    for ref, off, shape in zip(refs, layout.offsets, layout.shapes):
        param = ref.param
        if not _is_dtensor(param):
            raise ValueError(f"{ref.name!r} is not sharded (not a DTensor) while other "
                             f"parameters are: shard the whole model with fully_shard, or "
                             f"record a DDP model")
        placements = tuple(param.placements)
        if param.device_mesh.ndim != 1 or len(placements) != 1 \
                or not placements[0].is_shard(0) or param.device_mesh.size() != world:
            raise ValueError(f"{ref.name!r} is placed as {placements} on a mesh of shape "
                             f"{tuple(param.device_mesh.shape)}; DistributedRecorder supports "
                             f"FSDP2's Shard(0) on a 1-D mesh of the group's {world} ranks")
        rows = shape[0] if shape else 1
        row = math.prod(shape[1:]) if shape else 1
        chunk = -(-rows // world)
        for r in range(world):
            lo, hi = min(r * chunk, rows), min((r + 1) * chunk, rows)
            segments[r].append((off + lo * row, (hi - lo) * row))
    return segments


class DistributedRecorder(TorchRecorder):
    """A ``TorchRecorder`` of this rank's columns of θ (docs/theory.md §2, §5.2).

    ``model``: the DDP-wrapped model (or its ``.module``), or an FSDP2 model
    (``fully_shard``); ``group``: the process group (default: the world); ``comm``: a
    ``ProcessGroupComm`` to reuse. Other arguments are ``TorchRecorder``'s. ``snapshots()`` is
    the ``(m+1, n_local)`` window, ``sharding`` says which columns every rank holds.
    """

    def __init__(self, model: Any, group: Any = None, *, comm: ProcessGroupComm | None = None,
                 layout: ParamLayout | None = None, prunable: Any = None,
                 non_prunable: str = "record", **kwargs: Any) -> None:
        model = _unwrap(model)
        self.comm = comm if comm is not None else ProcessGroupComm(group)
        if layout is None:
            layout, refs = select_parameters(model, prunable, non_prunable)
        elif prunable is not None:
            raise ValueError("give either layout= or prunable=, not both (the layout already "
                             "says which tensors are prunable)")
        else:
            refs = check_layout(model, layout)
        world, rank = self.comm.world_size, self.comm.rank
        self.sharded = any(_is_dtensor(r.param) for r in refs)
        if self.sharded:
            self.sharding = Sharding.from_segments(layout, _fsdp_segments(layout, refs, world))
        else:
            self.sharding = Sharding.contiguous(layout, world)
        empty = [r for r in range(world) if self.sharding.local_size(r) == 0]
        if empty:  # known to every rank alike: all raise, none waits
            raise ValueError(f"rank(s) {empty} would hold no column of θ ({layout.size} "
                             f"parameters over {world} ranks); use fewer ranks for the recording")
        self.rank = rank
        self._parts = [(p.tensor, p.start - layout.offsets[p.tensor], p.size)
                       for p in self.sharding.local_pieces(rank)]
        self.n_local = sum(size for _, _, size in self._parts)
        if self.sharded:
            expected = {tensor: size for tensor, _, size in self._parts}
            for i, ref in enumerate(refs):
                shard = tuple(ref.param.to_local().shape)
                if shard[1:] != tuple(ref.param.shape)[1:] \
                        or ref.param.to_local().numel() != expected.get(i, 0):
                    raise ValueError(f"{ref.name!r}: local shard {shard} is not a dim-0 shard "
                                     f"of {tuple(ref.param.shape)}")
        super().__init__(model, layout=layout, **kwargs)

    def _new_rows(self, name: str, rows: int) -> torch.Tensor:
        return torch.zeros((rows, self.n_local), dtype=self.dtype, device=self.device)

    def _source(self, ref: Any, gradient: bool) -> torch.Tensor:
        if gradient:
            grad = ref.param.grad
            if grad is None:
                return ref.param.new_zeros(ref.param.numel()) if not self.sharded \
                    else ref.param.to_local().new_zeros(ref.param.to_local().numel())
            return (grad.to_local() if _is_dtensor(grad) else grad).reshape(-1)
        if self.sharded:
            return ref.param.to_local().reshape(-1)
        return self._flat_source(ref)

    def _record(self, t: int, gradient: bool) -> None:
        buffer = self._buffer
        row = buffer.next_row()
        arrays = buffer.arrays
        with torch.no_grad():
            def local(grad: bool) -> list[torch.Tensor]:
                out = []
                for tensor, lo, size in self._parts:
                    flat = self._source(self._refs[tensor], grad)
                    out.append(flat if self.sharded else flat[lo:lo + size])
                return out
            torch.cat(local(False), out=arrays["snapshots"][row])
            if self.record_gradients:
                if gradient:
                    torch.cat(local(True), out=arrays["gradients"][row])
                else:
                    arrays["gradients"][row].zero_()
        buffer.commit(t)

    def snapshots(self, xp: Any = None) -> Any:
        """This rank's recorded columns, ``(m+1, n_local)`` on backend ``xp`` (zero-copy on CPU)."""
        rows = self._buffer.filled("snapshots")
        if rows is None:
            raise RuntimeError("the recorder has recorded nothing: call attach() and train")
        return to_backend(rows, xp)

    def trajectory(self, xp: Any = None) -> Any:
        raise TypeError("a DistributedRecorder holds only this rank's columns of θ, which are no "
                        "Trajectory: use fit_distributed(recorder) / distributed_masks(recorder, "
                        "...), or recorder.snapshots() for the local window")

    def fingerprint(self) -> np.ndarray:
        """int64 ``[layout hash, m+1, steps hash, n_local, expected n_local, world size]``."""
        layout = json.dumps(self.layout.to_dict(), sort_keys=True).encode()
        steps = json.dumps([int(s) for s in self.steps]).encode()
        return np.array([_hash64(layout), len(self), _hash64(steps), self.n_local,
                         self.sharding.local_size(self.rank), self.comm.world_size],
                        dtype=np.int64)


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little", signed=True)


_FIELDS = ("the layouts (tensor names, shapes, prunable)", "the numbers of snapshots m+1",
           "the recorded steps", "the local columns", "the expected local columns",
           "the world size")


def check_agreement(recorder: DistributedRecorder) -> None:
    """One all-gather of every rank's fingerprint; the same ``ValueError`` on every rank if any
    rank disagrees on the layout, the snapshots or its share of the columns."""
    prints = recorder.comm.all_gather(recorder.fingerprint(), "fingerprint")
    problems = []
    for i, what in enumerate(_FIELDS[:3]):
        if len(set(prints[:, i].tolist())) > 1:
            values = ", ".join(f"rank {r}: {v if i == 1 else hex(v & (2**64 - 1))}"
                               for r, v in enumerate(prints[:, i].tolist()))
            problems.append(f"{what} differ ({values})")
    wrong = [r for r in range(len(prints)) if prints[r, 3] != prints[r, 4]]
    if wrong:
        problems.append(f"rank(s) {wrong} hold other columns than the sharding gives them")
    if problems:
        raise ValueError("the ranks of the process group disagree: " + "; ".join(problems)
                         + ". Every rank must record the same model layout over the same steps "
                           "(same every=/start=/stop=, same prunable=)")


# --------------------------------------------------------------------------- fit and masks
def fit_distributed(recorder: DistributedRecorder, kmd: KMD | None = None,
                    check: bool = True) -> KMD:
    """``kmd`` (default ``KMD()``) fitted on this rank's columns from the all-reduced Gram matrix.

    docs/theory.md §5.2: ``G = Σ_s W_s W_sᵀ`` (one all-reduce of ``(m+1)²`` float64); the fit is
    the same on every rank, its modes, fixed point and scores cover the local columns. ``check``
    first runs ``check_agreement`` (one all-gather).
    """
    if not isinstance(recorder, DistributedRecorder):
        raise TypeError(f"recorder must be a DistributedRecorder, got {type(recorder).__name__}")
    if check:
        check_agreement(recorder)
    local = recorder.snapshots()
    gram = recorder.comm.allreduce_sum(gram_matrix(local), "gram")
    return (kmd if kmd is not None else KMD()).fit(local, gram=gram,
                                                   n_params=recorder.layout.size)


@dataclass
class DistributedMaskReport:
    """What ``distributed_masks`` did on this rank: counts, bytes, the local mask and scores."""

    method: str
    scope: str
    sparsity: float
    n_pruned_local: int
    local_mask: np.ndarray = field(repr=False)
    local_scores: np.ndarray = field(repr=False)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def distributed_masks(recorder: DistributedRecorder, method: str = "kmp",
                      sparsity: float | None = None, compression: float | None = None,
                      scope: str | None = None, *, kmd: KMD | None = None, at: int | None = None,
                      kind: str = "weight_times_gradient", over: str = COMPRESSION_OVER,
                      gather: bool | None = None, bits: int = DEFAULT_BITS,
                      ) -> tuple[dict[str, torch.Tensor], DistributedMaskReport]:
    """``({name: bool tensor}, report)``: the masks ``koopman_masks`` gives in one process.

    ``method``: one of ``DISTRIBUTED_METHODS``; ``scope`` defaults to the method's. ``kmd``: a KMD
    already fitted by ``fit_distributed`` (else fitted here). ``gather``: all-gather the packed
    mask bits (``n/8`` bytes) so every rank gets every tensor's full mask (the default for DDP,
    whose replicas all need them); ``False`` (the FSDP default) returns each tensor's local shard
    of the mask (shape of ``param.to_local()``; a DDP rank gets its flat slice per tensor).
    """
    spec = get_method(method)
    if method not in DISTRIBUTED_METHODS:
        raise ValueError(f"method={method!r} is not available across ranks; choose from "
                         f"{', '.join(DISTRIBUTED_METHODS)} (their scores are local to a rank's "
                         f"columns)")
    scope = spec.scope if scope is None else scope
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    layout, comm = recorder.layout, recorder.comm
    p = resolve_sparsity(sparsity, compression, layout=layout, over=over)
    local = recorder.snapshots()
    j = len(recorder) - 1 if at is None else int(at)
    info: dict[str, Any] = {"at": j}
    if spec.needs_kmd:
        if kmd is None:
            kmd = fit_distributed(recorder)
        info.update(rank=int(kmd.rank_), kmd_solver=str(kmd.solver_))
        scores = kmp_scores(kmd) if method == "kmp" else kgp_scores(kmd, at=j, kind=kind)
    else:
        check_agreement(recorder)
        if not 0 <= j < len(recorder):
            raise ValueError(f"at={at} must be a snapshot index in [0, {len(recorder) - 1}]")
        scores = np.abs(np.asarray(to_numpy(local[j]), dtype=np.float64))
    select = distributed_global_mask if scope == "global" else distributed_layerwise_mask
    scores = to_numpy(scores)
    keep = select(scores, p, sharding=recorder.sharding,
                  rank=recorder.rank, allreduce_sum=comm.allreduce_sum, bits=bits)
    gather = (not recorder.sharded) if gather is None else bool(gather)
    masks = _gathered(recorder, keep) if gather else _local_masks(recorder, keep)
    report = DistributedMaskReport(method, scope, p, int(np.count_nonzero(~keep)), keep, scores,
                                   dict(comm.bytes_sent), dict(comm.calls), info)
    return masks, report


def _gathered(recorder: DistributedRecorder, keep: np.ndarray) -> dict[str, torch.Tensor]:
    """Every prunable tensor's full mask: one all-gather of each rank's packed bits."""
    sharding, comm = recorder.sharding, recorder.comm
    width = max(sharding.local_size(r) for r in range(sharding.world_size))
    padded = np.zeros(width, dtype=bool)
    padded[:keep.size] = keep
    packed = comm.all_gather(np.packbits(padded), "mask_gather")
    parts = [np.unpackbits(packed[r], count=width).astype(bool)[:sharding.local_size(r)]
             for r in range(sharding.world_size)]
    flat = sharding.assemble(parts)
    layout = recorder.layout
    return {name: torch.from_numpy(flat[off:off + size].reshape(shape).copy()).to(
                ref.param.device)
            for name, shape, off, size, prunable, ref in zip(
                layout.names, layout.shapes, layout.offsets, layout.sizes, layout.prunable,
                recorder.refs) if prunable}


def _local_masks(recorder: DistributedRecorder, keep: np.ndarray) -> dict[str, torch.Tensor]:
    """Each prunable tensor's local part of the mask (its shard's shape under FSDP)."""
    out, at = {}, 0
    for tensor, _, size in recorder._parts:
        name = recorder.layout.names[tensor]
        part = torch.from_numpy(keep[at:at + size].copy())
        at += size
        if not recorder.layout.prunable[tensor]:
            continue
        ref = recorder.refs[tensor]
        if recorder.sharded:
            part = part.reshape(ref.param.to_local().shape)
        out[name] = part.to(ref.param.device)
    return out
