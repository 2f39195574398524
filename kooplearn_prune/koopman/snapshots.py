"""Passes over the big snapshot array ``W`` (``(m+1, n)``): the only code that touches all of it.

docs/theory.md §5.2 and §6. Every quantity of the KMD is either a small host matrix or one of two
products with ``W``, both computed here in float64, chunk by chunk over the parameter axis:

* ``gram_matrix(W)``: ``G = W Wᵀ``, ``(m+1, m+1)``;
* ``combine_rows(W, Z)``: ``Z W`` for small host coefficients ``Z`` of shape ``(k, m+1)``, that is
  ``k`` combinations ``Wᵀ z`` of the snapshots (modes, predictions, the fixed point).

On NumPy, chunks are converted to float64 in reused buffers and spread over threads; sums are kept
in ``LANES`` fixed lanes so that results do not depend on the thread count. Other backends (CuPy,
array_api_strict) run the same products one chunk at a time on their own device. Dask arrays
(``koopman.outofcore``) are summed chunk by chunk by Dask, and combinations stay lazy.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..backend import asarray, is_numpy_namespace, namespace_of, to_numpy
from .outofcore import is_dask_array

__all__ = [
    "gram_matrix",
    "combine_rows",
    "combine_rows_complex",
    "resolve_jobs",
    "chunk_columns",
    "MAX_CHUNK_COLUMNS",
    "LANES",
    "PARALLEL_MIN_ENTRIES",
]

#: Most parameter columns converted to float64 at a time (a 13 MiB buffer for m = 100).
MAX_CHUNK_COLUMNS = 2**14

#: Chunk i of a pass is summed in lane i % LANES, so sums do not depend on the thread count; this
#: is also the most threads a pass uses.
LANES = 8

#: Passes over fewer entries ((m+1)·n) than this run in the calling thread.
PARALLEL_MIN_ENTRIES = 2**20


# --------------------------------------------------------------------------- threads and chunks
def resolve_jobs(n_jobs: int | None) -> int:
    """Worker threads for the passes over W: ``n_jobs``, or the usable cores (at most LANES)."""
    if n_jobs is not None:
        return int(n_jobs)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, LANES))


def chunk_columns(n: int, chunk_size: int | None) -> int:
    """Columns per float64 chunk: n/256 within [1024, 2**14], so one float64 chunk is at most
    1/128 of the float32 trajectory (for n >= 2**18). It does not depend on the thread count, so
    neither do the sums."""
    if chunk_size is not None:
        return int(min(chunk_size, n))
    return int(min(n, max(1024, min(MAX_CHUNK_COLUMNS, n // 256))))


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread during a large pass. With m ~ 100 rows, BLAS threads gain nothing on these
    shapes, and next to our own threads, or on a busy machine, they were measured 2-15 times
    slower (threads spinning on shared cores); the chunk threads are the parallelism."""
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (a scan costs ~1 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


def _host_pass(snapshots: np.ndarray, work: Callable[[np.ndarray, int, int, int], None],
               chunk_size: int | None, n_jobs: int | None) -> None:
    """One pass over host snapshots: ``work(chunk, start, stop, lane)`` for every chunk of columns.

    ``chunk`` is ``W[:, start:stop]`` converted to float64 in a reused buffer. Chunk ``i`` belongs
    to lane ``i % LANES``; a lane runs its chunks in order, and lanes run in parallel threads
    (NumPy releases the GIL while converting and in BLAS). Sums kept per lane and added in lane
    order are therefore the same whatever the number of threads.
    """
    n_rows, n = (int(d) for d in snapshots.shape)
    large = n_rows * n >= PARALLEL_MIN_ENTRIES
    workers = resolve_jobs(n_jobs) if large else 1
    cols = chunk_columns(n, chunk_size)
    starts = list(range(0, n, cols))
    lanes = [starts[i::LANES] for i in range(min(LANES, len(starts)))]
    workers = max(1, min(workers, len(lanes)))
    buffers: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):
        buffers.put(np.empty((n_rows, cols), dtype=np.float64))

    def run_lane(lane: int) -> None:
        buffer = buffers.get()
        try:
            for start in lanes[lane]:
                stop = min(start + cols, n)
                chunk = buffer if stop - start == cols else buffer[:, : stop - start]
                np.copyto(chunk, snapshots[:, start:stop], casting="unsafe")
                work(chunk, start, stop, lane)
        finally:
            buffers.put(buffer)

    with _one_blas_thread() if large else contextlib.nullcontext():
        if workers == 1:
            for lane in range(len(lanes)):
                run_lane(lane)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run_lane, range(len(lanes))))


# --------------------------------------------------------------------------- the two products
def gram_matrix(snapshots: Any, chunk_size: int | None = None,
                n_jobs: int | None = None) -> np.ndarray:
    """The float64 Gram matrix ``G = W Wᵀ`` of the snapshots, ``(m+1, m+1)``, on the host.

    docs/theory.md §6: every product of two float32 numbers is exact in float64, so each chunk of
    parameter columns is converted to float64 before it is multiplied. On the host,
    ``chunk @ chunk.T`` on the C-ordered chunk is one BLAS ``dsyrk`` call with no copy (the same
    routine and layout as ``scipy.linalg.blas.dsyrk(1, chunk.T, trans=1)``, but NumPy releases the
    GIL, so chunks run in ``n_jobs`` threads). Other backends: ``chunk @ chunk.T`` in float64, one
    chunk at a time. Peak extra memory: one chunk per thread.
    """
    if is_dask_array(snapshots):  # out of core: Dask sums the chunks' float64 products
        wide = snapshots.astype(np.float64)
        return np.array((wide @ wide.T).compute(), dtype=np.float64)
    xp = namespace_of(snapshots)
    n_rows, n = (int(d) for d in snapshots.shape)
    if is_numpy_namespace(xp):
        partial = np.zeros((LANES, n_rows, n_rows), dtype=np.float64)

        def accumulate(chunk: np.ndarray, start: int, stop: int, lane: int) -> None:
            partial[lane] += chunk @ chunk.T

        _host_pass(snapshots, accumulate, chunk_size, n_jobs)
        gram = partial[0].copy()
        for lane in range(1, LANES):
            gram += partial[lane]
        return gram
    cols = chunk_columns(n, chunk_size)
    gram = xp.zeros((n_rows, n_rows), dtype=xp.float64)
    for start in range(0, n, cols):
        chunk = xp.astype(snapshots[:, start : min(start + cols, n)], xp.float64)
        gram = gram + chunk @ chunk.T
    return np.array(to_numpy(gram), dtype=np.float64)


def combine_rows(snapshots: Any, coefficients: np.ndarray, chunk_size: int | None = None,
                 n_jobs: int | None = None) -> Any:
    """``coefficients @ W`` in float64, chunk by chunk, on the snapshots' backend.

    ``coefficients``: real host array ``(k, m+1)`` or ``(m+1,)``; returns ``(k, n)`` or ``(n,)``:
    row ``i`` is ``Wᵀ coefficients[i]``, a combination of the snapshots.
    """
    xp = namespace_of(snapshots)
    vector = coefficients.ndim == 1
    z = np.ascontiguousarray(np.atleast_2d(coefficients), dtype=np.float64)
    n_rows, n = (int(d) for d in snapshots.shape)
    if is_dask_array(snapshots):  # a lazy Dask array, chunked as the snapshots' columns
        product = z @ snapshots.astype(np.float64)
        return product[0] if vector else product
    if is_numpy_namespace(xp):
        out = np.empty((z.shape[0], n), dtype=np.float64)

        def product(chunk: np.ndarray, start: int, stop: int, lane: int) -> None:
            if vector:
                np.dot(z[0], chunk, out=out[0, start:stop])
            else:
                out[:, start:stop] = z @ chunk

        _host_pass(snapshots, product, chunk_size, n_jobs)
        return out[0] if vector else out
    cols = chunk_columns(n, chunk_size)
    zb = asarray(z, dtype="float64", xp=xp)
    out = xp.empty((z.shape[0], n), dtype=xp.float64)
    for start in range(0, n, cols):
        stop = min(start + cols, n)
        out[:, start:stop] = zb @ xp.astype(snapshots[:, start:stop], xp.float64)
    return out[0, :] if vector else out


def combine_rows_complex(snapshots: Any, coefficients: np.ndarray, chunk_size: int | None = None,
                         n_jobs: int | None = None) -> Any:
    """``coefficients @ W`` for complex host coefficients ``(k, m+1)``: complex128 ``(k, n)``,
    real and imaginary parts in one pass."""
    k = coefficients.shape[0]
    both = combine_rows(snapshots, np.concatenate([coefficients.real, coefficients.imag]),
                        chunk_size, n_jobs)
    xp = namespace_of(both)
    if is_numpy_namespace(xp):
        out = np.empty((k, both.shape[1]), dtype=np.complex128)
        out.real, out.imag = both[:k], both[k:]
        return out
    unit = xp.asarray(1j, dtype=xp.complex128)
    return xp.astype(both[:k, :], xp.complex128) + xp.astype(both[k:, :], xp.complex128) * unit
