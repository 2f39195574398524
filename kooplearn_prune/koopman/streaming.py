"""The Gram matrix ``G = W Wᵀ`` accumulated while the snapshots arrive (docs/theory.md §5.2, §6).

``GramAccumulator`` holds G of the rows seen so far. Rows are taken in blocks of ``block``: when
a block is complete, its inner products with every row up to it are added in one pass over the
stored rows, column chunk by column chunk, each chunk converted to float64 first (every product
of float32 numbers is exact in float64, §6) and summed in the same ``LANES`` fixed lanes as
``koopman.gram_matrix``, so the result does not depend on the thread count. Appending row ``j``
costs about ``j·n`` multiply-adds, the whole window ``(m+1)²n/2`` as one batch pass, spread over
training; each block also reads the stored rows once (``(j+block)·n`` numbers per block).

``KMD().fit(W, gram=acc.gram)`` then fits with no pass over W. The sums run in another order
than ``gram_matrix``'s, so G agrees with it to rounding (relative ``~1e-16`` per entry), not bit
for bit; ``tests/test_streaming_gram.py`` checks that eigenvalues and masks agree.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..backend import is_numpy_namespace, namespace_of, to_numpy
from .inputs import check_positive_int
from .snapshots import LANES, _host_pass, chunk_columns

__all__ = ["GramAccumulator", "DEFAULT_BLOCK"]

#: Rows per block: a block's pass reads the stored rows once, so larger blocks read less in total
#: (``≈ m²n/(2·block)`` numbers over a window) but leave more work for the first ``gram`` read.
DEFAULT_BLOCK = 32


class GramAccumulator:
    """Float64 ``G = W Wᵀ`` of snapshots ``θ_j`` (length ``n_params``), updated block by block.

    Two ways to feed it (pick one per accumulator):

    * ``append(row)``: copies ``row`` (``(n_params,)``, host or device, real, finite) into the
      accumulator's own row store (``capacity`` rows to start with, doubled when full);
    * ``follow(rows)``: the rows live elsewhere (a recorder's buffer): ``rows`` is the ``(k, n)``
      array of every snapshot so far, whose first ``len(acc)`` rows must be unchanged since the
      last call. No copy; rows are not checked for NaN (a non-finite row makes G non-finite,
      which ``KMD.fit(gram=)`` refuses).

    ``gram`` is the ``(m+1, m+1)`` float64 matrix of all rows given so far (completing the last
    block first). ``dtype``: of the row store (None: the first row's; NumPy only). ``block``: rows
    per pass (``DEFAULT_BLOCK``). ``chunk_size`` and ``n_jobs`` as for ``KMD`` (``n_jobs``
    defaults to 1 here: the pass runs next to training; reading ``gram`` runs the rows not yet in
    the sums on every usable core, training being over). ``background=True`` runs the passes in
    one worker thread, each over every row waiting (at least a block) when the worker is free; an
    error in a pass is raised by ``gram``. ``expect(rows)`` aligns the blocks so that only the
    last row is left for ``gram``.
    """

    def __init__(self, n_params: int, capacity: int | None = None, dtype: Any = None, *,
                 block: int = DEFAULT_BLOCK, chunk_size: int | None = None,
                 n_jobs: int | None = 1, background: bool = False) -> None:
        check_positive_int("n_params", n_params, "the length of one snapshot", "is not allowed")
        if n_params is None:
            raise TypeError("n_params must be a positive integer (the length of one snapshot)")
        check_positive_int("capacity", capacity, "rows to allocate", "to allocate at the first row")
        check_positive_int("block", block, "rows per pass", "is not allowed")
        if block is None:
            raise TypeError("block must be a positive integer (rows per pass)")
        check_positive_int("chunk_size", chunk_size, "parameter columns per chunk",
                           "for the automatic choice")
        check_positive_int("n_jobs", n_jobs, "threads per pass", "for every usable core")
        if not isinstance(background, bool):
            raise TypeError(f"background must be True or False, got {background!r}")
        self.n_params = int(n_params)
        self.background = background
        self._worker: ThreadPoolExecutor | None = None
        self._running: list[Future] = []
        self.dtype = dtype
        self.capacity = capacity
        self.block, self.chunk_size, self.n_jobs = int(block), chunk_size, n_jobs
        self._rows: Any = None  # the array whose first ``_count`` rows are the snapshots
        self._store: Any = None  # append(): the accumulator's own rows
        self._mode: str | None = None  # "append" or "follow", fixed by the first call
        self._count = 0  # rows given
        self._done = 0  # rows whose products are in the sums
        self._partial = np.zeros((LANES, 0, 0), dtype=np.float64)  # host lanes
        self._device_sum: Any = None  # other backends: one running sum on the device
        self._expected: int | None = None  # expect(): the rows the window will hold

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (f"GramAccumulator(n_params={self.n_params}, rows={self._count}, "
                f"block={self.block})")

    # ------------------------------------------------------------------ feeding
    def append(self, row: Any) -> None:
        """Add snapshot ``row`` (``(n_params,)``, real, finite); a refused row changes nothing."""
        self._check_mode("append")
        xp = namespace_of(row) if hasattr(row, "shape") else np
        row = row if hasattr(row, "shape") else np.asarray(row)
        self._check_row(row, xp)
        if self._store is None:
            rows = self.capacity or 8
            self._store = xp.zeros((rows, self.n_params), dtype=self._store_dtype(row, xp))
        elif self._count == int(self._store.shape[0]):
            grown = xp.zeros((2 * self._count, self.n_params), dtype=self._store.dtype)
            grown[: self._count, :] = self._store
            self._store = grown
        self._store[self._count, :] = row
        self._mode, self._rows = "append", self._store
        self._count += 1
        self._maybe_advance()

    def follow(self, rows: Any) -> None:
        """The snapshots so far are ``rows`` (``(k, n_params)``, ``k >= len(self)``)."""
        self._check_mode("follow")
        shape = tuple(getattr(rows, "shape", ()))
        if len(shape) != 2 or shape[1] != self.n_params or shape[0] < self._count:
            raise ValueError(f"follow(rows): rows must have shape (k, {self.n_params}) with "
                             f"k >= {self._count} (the rows already given), got shape {shape}")
        self._mode, self._rows, self._count = "follow", rows, shape[0]
        self._maybe_advance()

    def expect(self, rows: int) -> None:
        """The window will hold ``rows`` rows in all (a recorder knows when its fit starts).

        Blocks are then aligned to end at row ``rows − 1``, so that reading ``gram`` after the
        last row has one row's pass left (``(m+1)·n`` multiply-adds and one read of the rows)
        instead of up to ``block − 1`` rows'. Only the alignment changes: G is the same sums.
        """
        check_positive_int("rows", rows, "rows in the whole window", "is not allowed")
        if rows is None:
            raise TypeError("expect(rows): rows must be a positive integer")
        self._expected = int(rows)

    @property
    def gram(self) -> np.ndarray:
        """``G = W Wᵀ`` of the rows so far: float64 ``(m+1, m+1)`` on the host (a new array)."""
        self._wait()
        self._finish()
        count = self._count
        if self._device_sum is not None:
            lower = np.array(to_numpy(self._device_sum), dtype=np.float64)[:count, :count]
        else:
            lower = self._partial[0, :count, :count].copy()
            for lane in range(1, LANES):
                lower += self._partial[lane, :count, :count]
        lower = np.tril(lower)
        return lower + np.tril(lower, -1).T

    # ------------------------------------------------------------------ checks
    def _check_mode(self, mode: str) -> None:
        if self._mode is not None and self._mode != mode:
            raise ValueError(f"this GramAccumulator is fed with {self._mode}(); {mode}() cannot "
                             f"be mixed with it: use a new GramAccumulator")

    def _check_row(self, row: Any, xp: Any) -> None:
        shape = tuple(row.shape)
        if shape != (self.n_params,):
            raise ValueError(f"append(row): row must have shape ({self.n_params},) (one snapshot "
                             f"of n_params={self.n_params} parameters), got shape {shape}; "
                             f"flatten the parameters with the same layout for every row")
        if not (xp.isdtype(row.dtype, "real floating") or xp.isdtype(row.dtype, "integral")):
            raise TypeError(f"append(row): row must hold real numbers, got dtype {row.dtype}")
        if self._store is not None and namespace_of(self._store) is not xp:
            raise TypeError("append(row): every row must be on the same backend as the first; "
                            "move the row there first")
        total = xp.sum(row)
        if not math.isfinite(float(total)):  # rare: check again without float32 overflow
            total = xp.sum(xp.astype(row, xp.float64))
            if not math.isfinite(float(total)):
                raise ValueError("append(row): row contains NaN or Inf; the Gram matrix needs "
                                 "finite snapshots (check training for divergence)")

    def _store_dtype(self, row: Any, xp: Any) -> Any:
        if is_numpy_namespace(xp):
            return np.dtype(self.dtype) if self.dtype is not None else row.dtype
        return row.dtype

    # ------------------------------------------------------------------ the passes
    def _maybe_advance(self) -> None:
        due = self._count - self._done >= self.block or self._at_aligned_end()
        if self.background:
            self._running = [f for f in self._running if not f.done() or f.exception()]
            if due and not self._running:
                self._advance()
        elif due:
            self._advance()

    def _at_aligned_end(self) -> bool:
        """With ``expect(rows)``: a block ends where ``rows − 1 − count`` is a multiple of
        ``block`` (the last one just before the last row)."""
        left = None if self._expected is None else self._expected - 1 - self._count
        return left is not None and left >= 0 and left % self.block == 0 and \
            self._count > self._done

    def _advance(self) -> None:
        """Schedule (background) or run the pass for the rows not yet in the sums."""
        done, count = self._done, self._count
        if count == done:
            return
        rows = self._rows[:count, :]
        self._done = count
        if not self.background:
            self._pass(rows, done, count, self.n_jobs)
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="gram")
        self._running.append(self._worker.submit(self._pass, rows, done, count, self.n_jobs))

    def _finish(self) -> None:
        """The rows not yet in the sums, now, in this thread, on every usable core (``gram`` is
        read when training is over, so the cores are free): one read of the stored rows."""
        done, count = self._done, self._count
        if count > done:
            self._done = count
            self._pass(self._rows[:count, :], done, count, None)

    def _wait(self) -> None:
        """Every scheduled pass finished; the first error of one is raised here."""
        running, self._running = self._running, []
        for future in running:
            future.result()

    def _pass(self, rows: Any, done: int, count: int, n_jobs: int | None) -> None:
        """Add the products of rows ``[done, count)`` with rows ``[0, count)`` to the sums."""
        xp = namespace_of(rows)
        if is_numpy_namespace(xp):
            self._grow_partial(count)
            partial = self._partial

            def accumulate(chunk: np.ndarray, start: int, stop: int, lane: int) -> None:
                partial[lane, done:count, :count] += chunk[done:count] @ chunk.T

            _host_pass(rows, accumulate, self.chunk_size, n_jobs)
        else:
            self._device_pass(rows, xp, done, count)

    def _grow_partial(self, count: int) -> None:
        size = self._partial.shape[1]
        if count <= size:
            return
        grown = np.zeros((LANES, max(count, 2 * size), max(count, 2 * size)), dtype=np.float64)
        grown[:, :size, :size] = self._partial
        self._partial = grown

    def _device_pass(self, rows: Any, xp: Any, done: int, count: int) -> None:
        """Other backends: one chunk at a time on the rows' own device, one running sum."""
        total = self._device_sum
        if total is None or int(total.shape[0]) < count:
            size = max(count, 2 * (0 if total is None else int(total.shape[0])))
            grown = xp.zeros((size, size), dtype=xp.float64)
            if total is not None:
                grown[: total.shape[0], : total.shape[0]] = total
            total = grown
        cols = chunk_columns(self.n_params, self.chunk_size)
        for start in range(0, self.n_params, cols):
            chunk = xp.astype(rows[:, start : min(start + cols, self.n_params)], xp.float64)
            total[done:count, :count] = total[done:count, :count] + chunk[done:count] @ chunk.T
        self._device_sum = total
