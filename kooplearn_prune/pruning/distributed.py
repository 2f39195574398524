"""Exact-k masks over scores split across ranks, without gathering the scores (docs/theory.md §8).

θ (length ``n``, a ``ParamLayout``) is split over ``P`` ranks by a ``Sharding``: a list of
*pieces*, each a contiguous run of global indices inside one tensor, owned by one rank. A rank
holds the scores of its pieces, concatenated in global order. ``distributed_global_mask`` and
``distributed_layerwise_mask`` return that rank's part of exactly the mask
``pruning.masks.global_mask`` / ``layerwise_mask`` would give on the full score vector: the same
``k``, the same ties broken by the lower global index.

The selection is a radix select on the float bit patterns. Scores become unsigned 64-bit keys in
the same order (``-0.0`` counts as ``0.0``, as ``<`` and ``==`` do); each round, every rank counts
its candidate keys in ``2**bits`` buckets of the next ``bits`` bits, one all-reduce of the counts
tells every rank which bucket holds the ``k``-th smallest key, and the candidates narrow to that
bucket. At most ``64 / bits`` rounds find the threshold τ exactly; a round ends the selection early
when the chosen bucket holds exactly the entries still wanted. Ties at τ take one more all-reduce:
the number of ties in each piece, from which every rank knows how many tied entries of lower index
other ranks hold. Communication never depends on ``n``: per round ``groups · 2**bits`` int64 counts
(``groups`` = 1 for a global mask, the prunable tensors for a layer-wise one), plus three check
counts in the first round and one int64 per piece for the ties.

Nothing here imports torch: the caller injects ``allreduce_sum(np.ndarray) -> np.ndarray`` (the
element-wise sum over ranks of an int64 array, the same result on every rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layout import ParamLayout
from .masks import COMPRESSION_OVER, _layer_counts, n_to_prune, resolve_sparsity

__all__ = ["Piece", "Sharding", "distributed_global_mask", "distributed_layerwise_mask",
           "order_keys", "DEFAULT_BITS"]

#: Bits of the key decided per round: 8 rounds at most, 256 counts (2 KiB) per group and round.
DEFAULT_BITS = 8

AllReduce = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Piece:
    """Global indices ``[start, start + size)`` of tensor ``tensor``, held by rank ``rank``."""

    rank: int
    tensor: int
    start: int
    size: int


class Sharding:
    """How the entries of θ are split over ``world_size`` ranks (the same object on every rank).

    ``pieces`` tile ``[0, layout.size)`` in global order; a piece never crosses a tensor border.
    Build it with ``Sharding.contiguous`` (DDP: ``P`` near-equal contiguous slices in layout
    order) or ``Sharding.from_segments`` (any split, e.g. FSDP's per-tensor shards).
    """

    def __init__(self, layout: ParamLayout, world_size: int, pieces: Sequence[Piece]) -> None:
        if not isinstance(layout, ParamLayout):
            raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
        pieces = sorted((p for p in pieces if p.size > 0), key=lambda p: p.start)
        at = 0
        for p in pieces:
            end = layout.offsets[p.tensor] + layout.sizes[p.tensor]
            if p.start != at or not 0 <= p.rank < world_size or p.start + p.size > end \
                    or p.start < layout.offsets[p.tensor]:
                raise ValueError(f"the pieces do not tile θ: {p} (expected to start at {at}, "
                                 f"inside tensor {p.tensor}, on a rank below {world_size})")
            at += p.size
        if at != layout.size:
            raise ValueError(f"the pieces cover {at} of the layout's {layout.size} entries")
        self.layout = layout
        self.world_size = world_size
        self.pieces = tuple(pieces)

    @classmethod
    def from_segments(cls, layout: ParamLayout, segments: Sequence[Sequence[tuple[int, int]]]
                      ) -> Sharding:
        """``segments[r]``: the ``(global start, length)`` runs rank ``r`` holds (any order)."""
        pieces = []
        for rank, runs in enumerate(segments):
            for start, length in runs:
                pieces.extend(_split_at_tensors(layout, rank, int(start), int(length)))
        return cls(layout, len(segments), pieces)

    @classmethod
    def contiguous(cls, layout: ParamLayout, world_size: int) -> Sharding:
        """``P`` contiguous slices of near-equal length (the first ``n mod P`` one longer)."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
        base, extra = divmod(layout.size, world_size)
        starts = np.cumsum([0] + [base + (r < extra) for r in range(world_size)])
        return cls.from_segments(layout, [[(int(starts[r]), int(starts[r + 1] - starts[r]))]
                                          for r in range(world_size)])

    def local_pieces(self, rank: int) -> list[Piece]:
        """Rank ``rank``'s pieces in global order (its local vector is their concatenation)."""
        return [p for p in self.pieces if p.rank == rank]

    def local_size(self, rank: int) -> int:
        return sum(p.size for p in self.local_pieces(rank))

    def local_indices(self, rank: int) -> np.ndarray:
        """Global index of each entry of rank ``rank``'s local vector, int64."""
        runs = [np.arange(p.start, p.start + p.size) for p in self.local_pieces(rank)]
        return np.concatenate(runs) if runs else np.zeros(0, dtype=np.int64)

    def local_view(self, vector: Any, rank: int) -> np.ndarray:
        """Rank ``rank``'s entries of a full vector ``(..., n)`` (for tests and simulations)."""
        return np.asarray(vector)[..., self.local_indices(rank)]

    def assemble(self, local_vectors: Sequence[Any]) -> np.ndarray:
        """The full vector from every rank's local vector (the inverse of ``local_view``)."""
        first = np.asarray(local_vectors[0])
        out = np.empty(self.layout.size, dtype=first.dtype)
        for rank, local in enumerate(local_vectors):
            out[self.local_indices(rank)] = np.asarray(local)
        return out


def _split_at_tensors(layout: ParamLayout, rank: int, start: int, length: int) -> list[Piece]:
    """A run of global indices cut at tensor borders into pieces."""
    pieces, stop = [], start + length
    for i, (off, size) in enumerate(zip(layout.offsets, layout.sizes)):
        lo, hi = max(start, off), min(stop, off + size)
        if lo < hi:
            pieces.append(Piece(rank, i, lo, hi - lo))
    return pieces


# --------------------------------------------------------------------------- keys
def order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys with the order of the float64 ``values`` (``-0.0`` mapped to ``0.0``)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


# --------------------------------------------------------------------------- the masks
def distributed_global_mask(local_scores: Any, sparsity: float | None = None, *,
                            sharding: Sharding, rank: int, allreduce_sum: AllReduce,
                            compression: float | None = None, over: str = COMPRESSION_OVER,
                            bits: int = DEFAULT_BITS) -> np.ndarray:
    """This rank's part of ``global_mask(scores, sparsity, layout=sharding.layout)`` (True = kept).

    ``local_scores``: real ``(n_local,)``, the scores of ``sharding.local_pieces(rank)`` in
    global order. Every rank must call it with the same arguments but its own scores.
    """
    layout = sharding.layout
    p = resolve_sparsity(sparsity, compression, layout=layout, over=over)
    k = n_to_prune(p, layout.n_prunable)
    tensors = [i for i, prunable in enumerate(layout.prunable) if prunable]
    return _select(local_scores, sharding, rank, [(tensors, k)], allreduce_sum, bits)


def distributed_layerwise_mask(local_scores: Any, sparsity: float | None = None, *,
                               sharding: Sharding, rank: int, allreduce_sum: AllReduce,
                               compression: float | None = None, over: str = COMPRESSION_OVER,
                               bits: int = DEFAULT_BITS) -> np.ndarray:
    """This rank's part of ``layerwise_mask(scores, sparsity, layout=sharding.layout)``.

    The per-tensor counts come from the layout alone (``_layer_counts``), so a tensor split over
    ranks is selected like a global mask restricted to that tensor; all tensors share rounds.
    """
    layout = sharding.layout
    p = resolve_sparsity(sparsity, compression, layout=layout, over=over)
    k = n_to_prune(p, layout.n_prunable)
    counts = _layer_counts(k, p, layout)
    groups = [([i], k_i) for i, k_i in enumerate(counts) if layout.prunable[i]]
    return _select(local_scores, sharding, rank, groups, allreduce_sum, bits)


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (1, 2, 4, 8, 16):
        raise ValueError(f"bits must be 1, 2, 4, 8 or 16 (key bits decided per round), got "
                         f"{bits!r}")
    return bits


def _local_values(local_scores: Any, expected: int) -> tuple[np.ndarray | None, int, int]:
    """float64 scores (or None when unusable), non-finite count, wrong-length flag."""
    values = np.asarray(local_scores)
    if values.ndim != 1 or values.shape[0] != expected or values.dtype.kind not in "fiu":
        return None, 0, 1
    values = values.astype(np.float64)
    return values, int(np.count_nonzero(~np.isfinite(values))), 0


def _select(local_scores: Any, sharding: Sharding, rank: int,
            groups: list[tuple[list[int], int]], allreduce_sum: AllReduce,
            bits: int) -> np.ndarray:
    """Keep-mask of the local entries: in each group, the ``k`` smallest (ties by index) go."""
    bits = _check_bits(bits)
    if not callable(allreduce_sum):
        raise TypeError("allreduce_sum must be a callable np.ndarray -> np.ndarray (the sum of "
                        "the array over all ranks)")
    pieces = sharding.local_pieces(rank)
    n_local = sum(p.size for p in pieces)
    values, n_bad, wrong = _local_values(local_scores, n_local)
    if values is None:
        values = np.zeros(n_local)
    removed = np.zeros(n_local, dtype=bool)
    # Local positions of each group's entries (global order), their keys, and what is left to find.
    starts = np.cumsum([0] + [p.size for p in pieces])
    state = []
    for tensors, k in groups:
        pos = [np.arange(starts[j], starts[j + 1]) for j, p in enumerate(pieces)
               if p.tensor in tensors]
        positions = np.concatenate(pos) if pos else np.zeros(0, dtype=np.int64)
        state.append({"pos": positions, "keys": order_keys(values[positions]), "left": k,
                      "tensors": set(tensors), "done": k == 0, "tied": 0})
    width = 1 << bits
    checks = np.array([n_bad, wrong, sum(k for _, k in groups)], dtype=np.int64)
    for level in range(64 // bits):
        open_ = [g for g in state if not g["done"]]
        if not open_ and level:
            break
        shift = np.uint64(64 - bits * (level + 1))
        hist = np.zeros((len(open_), width), dtype=np.int64)
        buckets = []
        for row, g in enumerate(open_):
            b = ((g["keys"] >> shift) & np.uint64(width - 1)).astype(np.int64)
            buckets.append(b)
            hist[row] = np.bincount(b, minlength=width)
        message = hist.ravel() if level else np.concatenate([checks, hist.ravel()])
        total = np.asarray(allreduce_sum(message), dtype=np.int64)
        if not level:
            _raise_on_checks(total[:3], checks, sharding.world_size)
            total = total[3:]
        total = total.reshape(len(open_), width)
        for row, (g, b) in enumerate(zip(open_, buckets)):
            cum = np.cumsum(total[row])
            j = int(np.searchsorted(cum, g["left"], side="left"))
            below = int(cum[j - 1]) if j else 0
            removed[g["pos"][b < j]] = True
            inside = b == j
            g["pos"], g["keys"] = g["pos"][inside], g["keys"][inside]
            g["left"] -= below
            g["tied"] = int(total[row, j])
            if g["tied"] == g["left"]:  # the whole bucket goes: no need to look closer
                removed[g["pos"]] = True
                g["done"] = True
    _break_ties([g for g in state if not g["done"]], pieces, starts, sharding, removed,
                allreduce_sum)
    return ~removed


def _raise_on_checks(total: np.ndarray, mine: np.ndarray, world_size: int) -> None:
    """The same error on every rank when any rank's scores are unusable or its k differs."""
    if total[1]:
        raise ValueError(f"{int(total[1])} rank(s) passed local scores that are not a real flat "
                         f"vector of their sharding.local_size(rank) entries; every rank must "
                         f"score exactly its own pieces")
    if total[0]:
        raise ValueError(f"the local scores hold {int(total[0])} non-finite values (NaN or inf) "
                         f"over all ranks; a mask cannot rank them - check the method that made "
                         f"them")
    if total[2] != world_size * mine[2]:
        raise ValueError(f"the ranks asked for different numbers of entries to prune (this rank "
                         f"{int(mine[2])}, {int(total[2])} over {world_size} ranks): every rank "
                         f"must pass the same sparsity, compression and layout")


def _break_ties(open_: list[dict], pieces: list[Piece], starts: np.ndarray, sharding: Sharding,
                removed: np.ndarray, allreduce_sum: AllReduce) -> None:
    """Remove the ``left`` lowest-indexed entries tied at τ: one all-reduce of per-piece counts."""
    if not open_:
        return
    index = {p: i for i, p in enumerate(sharding.pieces)}
    counts = np.zeros(len(sharding.pieces), dtype=np.int64)
    owner = []  # for each group: the local piece of each tied entry
    for g in open_:
        which = np.searchsorted(starts, g["pos"], side="right") - 1
        owner.append(which)
        for j in np.unique(which):
            counts[index[pieces[j]]] += int(np.count_nonzero(which == j))
    totals = np.asarray(allreduce_sum(counts), dtype=np.int64)
    for g, which in zip(open_, owner):
        for j in np.unique(which):
            piece = pieces[j]
            before = sum(int(totals[index[q]]) for q in sharding.pieces
                         if q.start < piece.start and q.tensor in g["tensors"])
            mine = g["pos"][which == j]
            removed[mine[:max(0, min(mine.size, g["left"] - before))]] = True
