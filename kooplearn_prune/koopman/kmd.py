"""The Koopman mode decomposition of a training trajectory, computed by exact DMD (THEORY.md §1-§2).

``KMD().fit(snapshots)`` takes the snapshots ``W`` (rows ``θ_j``, shape ``(m+1, n)``) and writes the
trajectory as a sum of modes that each evolve by one complex number,

    θ_j ≈ Σ_k λ_k^j ξ_k        (eigenvalues_ λ_k, modes ξ_k = b_k ψ_k, ‖ψ_k‖ = 1, amplitudes_ b_k).

Two ways to compute it, with the same result on well-conditioned data:

* ``method="gram"`` (the method of snapshots, THEORY.md §2): one float64 Gram matrix
  ``G = W Wᵀ``, accumulated over chunks of the parameter axis, gives every small matrix; the big
  array is touched once for the fit and once for each set of modes or predictions asked for.
* ``method="svd"``: thin-SVD exact DMD (Tu et al., 2014) on a float64 host copy, the most
  accurate choice for small problems.

Both reduce the decomposition to a coefficient matrix ``Ξ`` of shape ``(m+1, r)``: mode ``k`` is
``ξ_k = Wᵀ Ξ[:, k]``, a combination of the snapshots. So modes, predictions and the fixed point are
all matrix products ``Zᵀ W`` with a small host matrix ``Z``, done chunk by chunk in float64 on the
snapshots' own backend (NumPy, CuPy or array_api_strict).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import queue
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import asarray, is_numpy_namespace, namespace_of, to_numpy
from ..layout import ParamLayout
from ..trajectory import Trajectory

__all__ = [
    "KMD",
    "FixedPointInfo",
    "FixedPointWarning",
    "NotFittedError",
    "gram_matrix",
    "default_tol",
    "AUTO_SVD_MAX_ENTRIES",
]

logger = logging.getLogger(__name__)

METHODS = ("auto", "svd", "gram")

#: ``method="auto"`` uses the thin SVD when the snapshots hold at most this many numbers
#: (``(m+1)·n``; 2**21 is a 16 MiB float64 host copy) and the Gram matrix otherwise.
AUTO_SVD_MAX_ENTRIES = 2**21

#: Most parameter columns converted to float64 at a time (a 13 MiB buffer for m = 100).
MAX_CHUNK_COLUMNS = 2**14

#: Chunk i of a pass is summed in lane i % LANES, so sums do not depend on the thread count; this
#: is also the most threads a pass uses.
LANES = 8

#: Passes over fewer entries ((m+1)·n) than this run in the calling thread.
PARALLEL_MIN_ENTRIES = 2**20

_EPS64 = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)


class NotFittedError(ValueError, AttributeError):
    """A fitted attribute or method was used before ``KMD.fit``."""


class FixedPointWarning(UserWarning):
    """The predicted fixed point is unreliable (no eigenvalue near 1, or growing modes)."""


@dataclass(frozen=True)
class FixedPointInfo:
    """How trustworthy the stationary mode ξ_{k*} is as a prediction of where training goes.

    THEORY.md §2, "Choosing the stationary mode": ``k* = argmin_k |λ_k − 1|``. The prediction is
    reliable when ``|λ_{k*} − 1| <= tol`` and the modes with ``|λ| > 1`` (other than k* and its
    conjugate) carry at most ``max_growing_share`` of the amplitude at the last snapshot,
    ``Σ_growing |b_k| |λ_k|^m / Σ_k |b_k| |λ_k|^m``.
    """

    index: int
    eigenvalue: complex
    distance_from_one: float
    growing_amplitude_share: float
    n_growing: int
    tol: float
    max_growing_share: float

    @property
    def reliable(self) -> bool:
        return (self.distance_from_one <= self.tol
                and self.growing_amplitude_share <= self.max_growing_share)

    def describe(self) -> str:
        """One sentence with the numbers."""
        lam = self.eigenvalue
        text = (f"stationary eigenvalue λ_{self.index} = {lam.real:.6g}{lam.imag:+.3g}i, "
                f"|λ − 1| = {self.distance_from_one:.3g} (tol {self.tol:.3g}); {self.n_growing} "
                f"growing mode(s) with |λ| > 1 carry {self.growing_amplitude_share:.3g} of the "
                f"amplitude at the last snapshot (max {self.max_growing_share:.3g})")
        if not self.reliable:
            text += (": the predicted fixed point is unreliable; record a longer or later window, "
                     "or check that training converges")
        return text


# --------------------------------------------------------------------------- parameter checks
def _check_params(rank: Any, tol: Any, method: Any, affine: Any, chunk_size: Any,
                  n_jobs: Any) -> None:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose 'auto', 'svd' (thin-SVD exact "
                         f"DMD, small problems) or 'gram' (method of snapshots, large problems)")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise TypeError(f"rank must be a positive integer or None, got {rank!r}")
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1 (the most modes to keep), or None to "
                             f"keep every mode above the tolerance")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
            raise TypeError(f"tol must be a number in (0, 1) or None, got {tol!r}")
        if not (math.isfinite(tol) and 0.0 < tol < 1.0):
            raise ValueError(f"tol={tol!r} must lie in (0, 1): singular values below "
                             f"tol·σ_max are dropped; None picks the precision floor")
    if not isinstance(affine, (bool, np.bool_)):
        raise TypeError(f"affine must be True or False, got {affine!r}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
            raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1 (parameter columns per "
                             f"chunk), or None for the automatic choice")
    if n_jobs is not None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)):
            raise TypeError(f"n_jobs must be a positive integer or None, got {n_jobs!r}")
        if n_jobs < 1:
            raise ValueError(f"n_jobs={n_jobs} must be >= 1 (threads for the passes over the "
                             f"snapshots), or None for every usable core")


def _check_snapshots(snapshots: Any) -> tuple[Any, ParamLayout | None]:
    """The ``(m+1, n)`` snapshot array (and layout, for a Trajectory), or a clear error."""
    layout = None
    if isinstance(snapshots, Trajectory):
        layout, snapshots = snapshots.layout, snapshots.snapshots
    elif isinstance(snapshots, (list, tuple)):
        snapshots = np.asarray(snapshots)
    if not hasattr(snapshots, "shape") or not hasattr(snapshots, "dtype"):
        raise TypeError(f"snapshots must be an array of shape (m+1, n) or a Trajectory, got "
                        f"{type(snapshots).__name__}")
    shape = tuple(snapshots.shape)
    if len(shape) != 2:
        raise ValueError(f"snapshots must be 2-D, (m+1, n) with one snapshot θ_j per row, got "
                         f"shape {shape}; a single parameter vector is not a trajectory")
    if shape[0] < 3:
        raise ValueError(f"snapshots has {shape[0]} row(s); the KMD needs at least 3 snapshots "
                         f"(2 to define the map, 1 more to test it): record a longer window")
    if shape[1] < 1:
        raise ValueError("snapshots has no parameters (n = 0)")
    xp = namespace_of(snapshots)
    dtype = snapshots.dtype
    if not (xp.isdtype(dtype, "real floating") or
            (xp.isdtype(dtype, "integral") and dtype != xp.bool)):
        raise TypeError(f"snapshots must be real numbers (float32 or float64), got dtype {dtype}")
    return snapshots, layout


def default_tol(method: str, n_snapshots: int, dtype_eps: float = _EPS32) -> float:
    """Relative singular-value cutoff used when ``tol=None``: singular values ``σ <= tol·σ_max``
    of ``X`` are dropped (THEORY.md §2, precision).

    ``max(floor, dtype_eps / 2)``, where the floor is what the method resolves in float64:

    * "svd": ``10·(m+1)·eps64`` (the thin SVD is backward stable: σ is accurate to about
      ``(m+1)·eps64·σ_max``);
    * "gram": ``√(64·eps64) ≈ 1.2e-7``. The eigenvalues of ``G`` are ``σ²``, and the error of the
      float64 accumulation was measured at ``‖ΔG‖₂ ≈ 12·eps64·σ_max²`` (n = 1e6 and 4e6, data with
      a large common offset, against an extended-precision reference); the floor keeps a factor 5
      above that. Below it, directions of ``G`` are rounding noise.

    ``dtype_eps / 2`` (the snapshots' machine epsilon) drops the rounding noise of float32
    snapshots, whose singular values lie near ``0.3·eps32·σ_max/√(m+1)``. For float32 data this
    gives ``1.2e-7`` ("gram") and ``6e-8`` ("svd"), so a transient whose singular values are 1e-6
    of σ_max (a transient of about 1e-5..1e-4 of ‖θ‖) is kept.
    """
    if method not in ("svd", "gram"):
        raise ValueError(f"method={method!r}: default_tol needs 'svd' or 'gram'")
    floor = math.sqrt(64.0 * _EPS64) if method == "gram" else 10.0 * n_snapshots * _EPS64
    return max(floor, 0.5 * float(dtype_eps))


def _dtype_eps(dtype: Any, xp: ModuleType) -> float:
    return float(xp.finfo(dtype).eps) if xp.isdtype(dtype, "real floating") else _EPS64


def _resolve_jobs(n_jobs: int | None) -> int:
    """Worker threads for the passes over W: ``n_jobs``, or the usable cores (at most LANES)."""
    if n_jobs is not None:
        return int(n_jobs)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, LANES))


def _chunk_columns(n: int, chunk_size: int | None) -> int:
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
    workers = _resolve_jobs(n_jobs) if large else 1
    cols = _chunk_columns(n, chunk_size)
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


# --------------------------------------------------------------------------- passes over W
def gram_matrix(snapshots: Any, chunk_size: int | None = None,
                n_jobs: int | None = None) -> np.ndarray:
    """The float64 Gram matrix ``G = W Wᵀ`` of the snapshots, ``(m+1, m+1)``, on the host.

    THEORY.md §2 (precision): every product of two float32 numbers is exact in float64, so each
    chunk of parameter columns is converted to float64 before it is multiplied. On the host,
    ``chunk @ chunk.T`` on the C-ordered chunk is one BLAS ``dsyrk`` call with no copy (the same
    routine and layout as ``scipy.linalg.blas.dsyrk(1, chunk.T, trans=1)``, but NumPy releases the
    GIL, so chunks run in ``n_jobs`` threads). Other backends: ``chunk @ chunk.T`` in float64, one
    chunk at a time. Peak extra memory: one chunk per thread.
    """
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
    cols = _chunk_columns(n, chunk_size)
    gram = xp.zeros((n_rows, n_rows), dtype=xp.float64)
    for start in range(0, n, cols):
        chunk = xp.astype(snapshots[:, start : min(start + cols, n)], xp.float64)
        gram = gram + chunk @ chunk.T
    return np.array(to_numpy(gram), dtype=np.float64)


def _combine(snapshots: Any, coefficients: np.ndarray, chunk_size: int | None = None,
             n_jobs: int | None = None) -> Any:
    """``coefficients @ W`` in float64, chunk by chunk, on the snapshots' backend.

    ``coefficients``: real host array ``(k, m+1)`` or ``(m+1,)``; returns ``(k, n)`` or ``(n,)``.
    """
    xp = namespace_of(snapshots)
    vector = coefficients.ndim == 1
    z = np.ascontiguousarray(np.atleast_2d(coefficients), dtype=np.float64)
    n_rows, n = (int(d) for d in snapshots.shape)
    if is_numpy_namespace(xp):
        out = np.empty((z.shape[0], n), dtype=np.float64)

        def product(chunk: np.ndarray, start: int, stop: int, lane: int) -> None:
            if vector:
                np.dot(z[0], chunk, out=out[0, start:stop])
            else:
                out[:, start:stop] = z @ chunk

        _host_pass(snapshots, product, chunk_size, n_jobs)
        return out[0] if vector else out
    cols = _chunk_columns(n, chunk_size)
    zb = asarray(z, dtype="float64", xp=xp)
    out = xp.empty((z.shape[0], n), dtype=xp.float64)
    for start in range(0, n, cols):
        stop = min(start + cols, n)
        out[:, start:stop] = zb @ xp.astype(snapshots[:, start:stop], xp.float64)
    return out[0, :] if vector else out


def _combine_complex(snapshots: Any, coefficients: np.ndarray, chunk_size: int | None = None,
                     n_jobs: int | None = None) -> Any:
    """``coefficients @ W`` for complex host coefficients ``(k, m+1)``: complex128 ``(k, n)``,
    real and imaginary parts in one pass."""
    k = coefficients.shape[0]
    both = _combine(snapshots, np.concatenate([coefficients.real, coefficients.imag]),
                    chunk_size, n_jobs)
    xp = namespace_of(both)
    if is_numpy_namespace(xp):
        out = np.empty((k, both.shape[1]), dtype=np.complex128)
        out.real, out.imag = both[:k], both[k:]
        return out
    unit = xp.asarray(1j, dtype=xp.complex128)
    return xp.astype(both[:k, :], xp.complex128) + xp.astype(both[k:, :], xp.complex128) * unit


# --------------------------------------------------------------------------- small host algebra
def _gram_root(gram: np.ndarray) -> np.ndarray:
    """``R`` with ``Rᵀ R = G``, so ``‖Wᵀ x‖ = ‖R x‖``: R stands in for W in every small problem."""
    evals, evecs = np.linalg.eigh(gram)
    return np.sqrt(np.clip(evals, 0.0, None))[:, None] * evecs.T


def _cutoff(sigma: np.ndarray, tol: float, rank: int | None) -> int:
    if sigma.size == 0 or not sigma[0] > 0:
        return 0
    r = int(np.count_nonzero(sigma > tol * sigma[0]))
    return r if rank is None else min(r, int(rank))


def _reduced_from_gram(gram_fit: np.ndarray, tol: float, rank: int | None):
    """σ (all m, descending), V_r and Ã = Σ⁻¹ Vᵀ G[0:m,1:] V Σ⁻¹ from the Gram matrix (§2)."""
    m = gram_fit.shape[0] - 1
    s2, v = np.linalg.eigh(gram_fit[:m, :m])
    s2, v = s2[::-1], v[:, ::-1]
    sigma = np.sqrt(np.clip(s2, 0.0, None))
    r = _cutoff(sigma, tol, rank)
    vr, sr = v[:, :r], sigma[:r]
    a_tilde = (vr.T @ gram_fit[:m, 1:] @ vr) / np.outer(sr, sr)
    return sigma, vr, sr, a_tilde


def _reduced_from_svd(host: np.ndarray, tol: float, rank: int | None):
    """σ, V_r and Ã = U* Yᵀ V Σ⁻¹ from the thin SVD ``Xᵀ = U Σ V*`` (Tu et al.)."""
    u, sigma, vh = np.linalg.svd(host[:-1].T, full_matrices=False)
    r = _cutoff(sigma, tol, rank)
    vr, sr = vh[:r].T, sigma[:r]
    a_tilde = (u[:, :r].T @ (host[1:].T @ vr)) / sr[None, :]
    return sigma, vr, sr, a_tilde


def _paired_eig(a_tilde: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenpairs of the real matrix Ã, with each complex pair stored as (λ, conj λ) next to each
    other and exactly conjugate eigenvectors. Also returns the factor 1 (real λ), 2 (the member
    with Im λ > 0) or 0 (its partner) that turns a sum over modes into a real sum."""
    lam, w = np.linalg.eig(a_tilde)
    lam, w = lam.astype(np.complex128), w.astype(np.complex128)
    real = lam.imag == 0  # LAPACK returns real eigenvalues with an exactly zero imaginary part
    upper = lam.imag > 0
    if 2 * int(upper.sum()) + int(real.sum()) != lam.size:
        raise RuntimeError("eigenvalues of a real matrix did not come in conjugate pairs")
    lam_out = [lam[real]]
    w_out = [w[:, real].real.astype(np.complex128)]
    factor = [np.ones(int(real.sum()))]
    for k in np.flatnonzero(upper):
        lam_out.append(np.array([lam[k], np.conj(lam[k])]))
        w_out.append(np.stack([w[:, k], np.conj(w[:, k])], axis=1))
        factor.append(np.array([2.0, 0.0]))
    return np.concatenate(lam_out), np.concatenate(w_out, axis=1), np.concatenate(factor)


def _real_basis(coef: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Real columns with the same real span: c_k for a real λ, (Re c_k, Im c_k) for a pair."""
    cols = []
    for k in range(coef.shape[1]):
        if factor[k] == 1.0:
            cols.append(coef[:, k].real)
        elif factor[k] == 2.0:
            cols.extend([coef[:, k].real, coef[:, k].imag])
    return np.stack(cols, axis=1)


def _amplitudes(beta: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Complex b_k from real least-squares weights: b ψ + conj(b ψ) = β1 Re ψ + β2 Im ψ gives
    b = (β1 − iβ2)/2, so the amplitudes of a pair are exactly conjugate."""
    b = np.empty(factor.size, dtype=np.complex128)
    i = 0
    for k in range(factor.size):
        if factor[k] == 1.0:
            b[k] = beta[i]
            i += 1
        elif factor[k] == 2.0:
            b[k] = 0.5 * (beta[i] - 1j * beta[i + 1])
            b[k + 1] = np.conj(b[k])
            i += 2
    return b


def _powers(lam: np.ndarray, times: np.ndarray) -> np.ndarray:
    """λ^t for real t >= 0, ``(len(t), r)``: |λ|^t e^{i t arg λ}. For a real negative λ this is the
    Nyquist oscillation |λ|^t cos(πt) once the real part is taken (exact at integer t)."""
    t = times[:, None]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _finite
        return np.abs(lam)[None, :] ** t * np.exp(1j * t * np.angle(lam)[None, :])


@dataclass
class _Fit:
    """Everything ``fit`` computes, assigned to the estimator only when all of it succeeded."""

    eigenvalues: np.ndarray
    amplitudes: np.ndarray
    xi_coef: np.ndarray
    factor: np.ndarray
    singular_values: np.ndarray
    rank: int
    reconstruction_error: float


def _decompose(reduced, root_fit: np.ndarray, root_data: np.ndarray, m: int) -> _Fit:
    """Exact DMD modes, amplitudes and reconstruction error from the reduced problem (§2)."""
    sigma, vr, sr, a_tilde = reduced
    r = sr.size
    lam, w, factor = _paired_eig(a_tilde)
    # Mode coefficients c_k (ψ_k = Wᵀ c_k): exact modes (1/λ) Yᵀ V Σ⁻¹ w live on rows 1..m; for
    # λ ≈ 0 the exact mode is undefined and the projected mode Xᵀ V Σ⁻¹ w (rows 0..m-1) is used.
    coef = np.zeros((m + 1, r), dtype=np.complex128)
    base = vr @ (w / sr[:, None])
    tiny = np.abs(lam) <= 1e-8 * max(1.0, float(np.max(np.abs(lam))))
    coef[1:, ~tiny] = base[:, ~tiny] / lam[~tiny]
    coef[:-1, tiny] = base[:, tiny]
    norms = np.linalg.norm(root_fit @ coef, axis=0)
    coef /= np.where(norms > 0, norms, 1.0)
    # Amplitudes: argmin ‖Ψ b − θ_0‖ over real combinations, with R standing in for W.
    basis = _real_basis(coef, factor)
    beta = np.linalg.lstsq(root_fit @ basis, root_fit[:, 0], rcond=None)[0]
    b = _amplitudes(beta, factor)
    # Order modes by |b_k| (largest first), keeping each pair together.
    groups = [[k] if factor[k] == 1.0 else [k, k + 1] for k in range(r) if factor[k] != 0.0]
    groups.sort(key=lambda g: -abs(b[g[0]]))
    order = np.array([k for g in groups for k in g], dtype=int)
    lam, b, coef, factor = lam[order], b[order], coef[:, order], factor[order]
    xi_coef = coef * b[None, :]
    recon = np.real((_powers(lam, np.arange(m + 1, dtype=np.float64)) * factor) @ xi_coef.T)
    residual = np.linalg.norm(root_data @ (np.eye(m + 1) - recon).T)
    total = np.linalg.norm(root_data)
    return _Fit(lam, b, xi_coef, factor, sigma, r, float(residual / total))


# --------------------------------------------------------------------------- the estimator
class KMD:
    """Koopman mode decomposition of snapshots ``W`` (rows θ_j, shape ``(m+1, n)``) by exact DMD.

    THEORY.md §1-§2. ``θ_j ≈ Σ_k λ_k^j ξ_k`` with ``ξ_k = b_k ψ_k`` and ``‖ψ_k‖ = 1``.

    Parameters
    ----------
    rank : int or None
        Keep at most this many singular values of ``X = W[0:m]`` (None: all above ``tol``).
    tol : float in (0, 1) or None
        Drop singular values ``σ <= tol·σ_max``. None: ``default_tol(method, m+1, eps)``, the
        precision floor (float32 data: 1.2e-7 for "gram", set by the float64 accumulation of G,
        and 6e-8 for "svd", set by float32 rounding noise).
    method : "auto", "svd" or "gram"
        "gram": method of snapshots, one float64 Gram matrix (large n). "svd": thin-SVD exact DMD
        on a float64 host copy (small problems, most accurate). "auto": "svd" when
        ``(m+1)·n <= AUTO_SVD_MAX_ENTRIES`` (2**21), else "gram"; the choice is ``method_`` and
        is logged at INFO level.
    affine : bool
        Append a constant 1 to every snapshot (THEORY.md §1): exact for affine dynamics in which
        every direction is excited (small teaching problems). Modes keep length ``n``.
    chunk_size : int or None
        Parameter columns converted to float64 at a time (None: n/256 within [1024, 2**14]).
    n_jobs : int or None
        Threads for the passes over host snapshots (None: the usable cores, at most 8). Results do
        not depend on it (chunk sums are kept in 8 fixed lanes).

    Fitted attributes
    -----------------
    eigenvalues_ (r,) complex, amplitudes_ (r,) complex b_k, singular_values_ (m,) of X (the first
    ``rank_`` were kept), rank_, tol_, method_, reconstruction_error_ (relative Frobenius error of
    the reconstruction of W; computed from G, so about 1e-8 is the floor), fixed_point_info_,
    snapshots_ (a reference, not a copy: do not modify it while you use the fit), layout_ (the
    Trajectory's ParamLayout, or None). Modes are ordered by |b_k| (largest first) and complex
    pairs sit next to each other (Im λ > 0 first).
    """

    def __init__(self, rank: int | None = None, tol: float | None = None, method: str = "auto",
                 affine: bool = False, chunk_size: int | None = None,
                 n_jobs: int | None = None) -> None:
        _check_params(rank, tol, method, affine, chunk_size, n_jobs)
        self.rank = rank
        self.tol = tol
        self.method = method
        self.affine = affine
        self.chunk_size = chunk_size
        self.n_jobs = n_jobs

    def __repr__(self) -> str:
        defaults = {"rank": None, "tol": None, "method": "auto", "affine": False,
                    "chunk_size": None, "n_jobs": None}
        args = [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        return f"KMD({', '.join(args)})"

    # ------------------------------------------------------------------ fit
    def fit(self, snapshots: Any) -> KMD:
        """Decompose ``snapshots`` (an ``(m+1, n)`` array on any backend, or a Trajectory).

        Returns ``self``. Raises ValueError/TypeError before changing anything when the input is
        unusable (not 2-D, fewer than 3 snapshots, NaN/Inf, all zero, not real).
        """
        _check_params(self.rank, self.tol, self.method, self.affine, self.chunk_size,
                      self.n_jobs)
        snapshots, layout = _check_snapshots(snapshots)
        xp = namespace_of(snapshots)
        n_rows, n = (int(d) for d in snapshots.shape)
        m = n_rows - 1
        method = self.method
        if method == "auto":
            method = "svd" if n_rows * n <= AUTO_SVD_MAX_ENTRIES else "gram"
            logger.info("KMD: method='auto' chose %r for %d x %d snapshots (svd up to %d entries)",
                        method, n_rows, n, AUTO_SVD_MAX_ENTRIES)
        tol = float(self.tol) if self.tol is not None else default_tol(
            method, n_rows, _dtype_eps(snapshots.dtype, xp))

        if method == "gram":
            gram = gram_matrix(snapshots, self.chunk_size, self.n_jobs)
            _check_energy(np.diag(gram))
            gram_fit = gram + 1.0 if self.affine else gram
            reduced = _reduced_from_gram(gram_fit, tol, self.rank)
            root_data = _gram_root(gram)
            root_fit = _gram_root(gram_fit) if self.affine else root_data
        else:
            host = np.array(to_numpy(snapshots), dtype=np.float64)
            _check_energy(np.einsum("ij,ij->i", host, host))
            host_fit = np.hstack([host, np.ones((n_rows, 1))]) if self.affine else host
            reduced = _reduced_from_svd(host_fit, tol, self.rank)
            root_data = np.linalg.qr(host.T, mode="r")
            root_fit = np.linalg.qr(host_fit.T, mode="r") if self.affine else root_data
        if reduced[2].size == 0:
            raise ValueError("no singular value of the snapshots is above the tolerance "
                             f"(tol={tol:.3g}); lower tol or check the trajectory")
        fit = _decompose(reduced, root_fit, root_data, m)
        info = _fixed_point_info(fit.eigenvalues, fit.amplitudes, m, 1e-3, 1e-2)

        # Everything succeeded: now (and only now) change the estimator.
        self.snapshots_ = snapshots
        self.layout_ = layout
        self.method_ = method
        self.tol_ = tol
        self.rank_ = fit.rank
        self.singular_values_ = fit.singular_values
        self.eigenvalues_ = fit.eigenvalues
        self.amplitudes_ = fit.amplitudes
        self.reconstruction_error_ = fit.reconstruction_error
        self.fixed_point_info_ = info
        self._xi_coef = fit.xi_coef
        self._factor = fit.factor
        return self

    # ------------------------------------------------------------------ fitted state
    def _check_fitted(self) -> None:
        if not hasattr(self, "_xi_coef"):
            raise NotFittedError("this KMD is not fitted yet: call kmd.fit(snapshots) first")

    @property
    def n_snapshots_(self) -> int:
        """``m + 1``."""
        self._check_fitted()
        return int(self.snapshots_.shape[0])

    @property
    def modes_(self) -> Any:
        """All modes ξ_k as rows, complex128 ``(r, n)`` on the snapshots' backend (one pass over W,
        computed on every access: keep the result if you need it twice)."""
        self._check_fitted()
        return _combine_complex(self.snapshots_, self._xi_coef.T, self.chunk_size, self.n_jobs)

    def mode(self, k: int) -> Any:
        """Mode ξ_k, complex128 ``(n,)`` (one matrix-vector product over W)."""
        self._check_fitted()
        r = self.rank_
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -r <= k < r:
            raise IndexError(f"mode index k={k!r} is out of range for rank_={r}")
        return _combine_complex(self.snapshots_, self._xi_coef[:, [int(k)]].T, self.chunk_size,
                                self.n_jobs)[0, :]

    # ------------------------------------------------------------------ prediction
    def _evaluate(self, coefficients: np.ndarray) -> Any:
        """``coefficients @ W`` (real host rows ``(k, m+1)`` or one row): one pass over W."""
        return _combine(self.snapshots_, coefficients, self.chunk_size, self.n_jobs)

    def _time_coefficients(self, times: np.ndarray) -> np.ndarray:
        """Real rows z(t) with θ̂(t) = z(t)ᵀ W: ``Re Σ_k f_k λ_k^t Ξ[:, k]``, ``(len(t), m+1)``."""
        weights = _powers(self.eigenvalues_, times) * self._factor
        with np.errstate(over="ignore", invalid="ignore"):
            return _finite(np.real(weights @ self._xi_coef.T), times)

    def _update_coefficients(self, times: np.ndarray) -> np.ndarray:
        """Rows for θ̂(t+1) − θ̂(t) = Σ_k (λ_k − 1) λ_k^t ξ_k (THEORY.md §3.2): the stationary mode
        (λ = 1) drops out exactly."""
        lam = self.eigenvalues_
        weights = _powers(lam, times) * ((lam - 1.0) * self._factor)
        with np.errstate(over="ignore", invalid="ignore"):
            return _finite(np.real(weights @ self._xi_coef.T), times)

    def predict(self, j: Any) -> Any:
        """The reconstruction θ̂(j) = Σ_k λ_k^j ξ_k at snapshot index j (real, j >= 0).

        ``j`` may be a number (returns float64 ``(n,)``) or a 1-D array of them (``(len(j), n)``).
        Conjugate pairs are summed as ``2 Re(λ^j ξ)``, so the result is real by construction;
        ``j > m`` extrapolates, non-integer j interpolates between snapshots.
        """
        self._check_fitted()
        times, scalar = _as_times(j, "j")
        z = self._time_coefficients(times)
        return self._evaluate(z[0] if scalar else z)

    def predict_update(self, j: Any) -> Any:
        """θ̂(j+1) − θ̂(j), the Koopman estimate of one snapshot-to-snapshot update (THEORY §3.2)."""
        self._check_fitted()
        times, scalar = _as_times(j, "j")
        z = self._update_coefficients(times)
        return self._evaluate(z[0] if scalar else z)

    def reconstruct(self) -> Any:
        """θ̂_j for every snapshot, float64 ``(m+1, n)`` (compare with ``snapshots_``)."""
        self._check_fitted()
        return self.predict(np.arange(self.n_snapshots_, dtype=np.float64))

    # ------------------------------------------------------------------ fixed point
    def fixed_point(self, tol: float = 1e-3, strict: bool = False,
                    max_growing_share: float = 1e-2) -> Any:
        """The stationary mode ξ_{k*}, k* = argmin |λ_k − 1|: where training converges (§1-§2).

        Returns float64 ``(n,)`` on the snapshots' backend (for a real λ_{k*} this is ξ_{k*}
        itself; should λ_{k*} be one of a complex pair, the pair's real sum 2 Re ξ_{k*}).
        Stores ``fixed_point_info_``. When ``|λ_{k*} − 1| > tol`` or growing modes carry more than
        ``max_growing_share`` of the amplitude, warns (``FixedPointWarning``) with the numbers, or
        raises ValueError with ``strict=True`` (then nothing is changed).
        """
        self._check_fitted()
        for name, value in (("tol", tol), ("max_growing_share", max_growing_share)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
                    not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        info = _fixed_point_info(self.eigenvalues_, self.amplitudes_, self.n_snapshots_ - 1,
                                 float(tol), float(max_growing_share))
        if not info.reliable:
            if strict:
                raise ValueError(info.describe())
            warnings.warn(info.describe(), FixedPointWarning, stacklevel=2)
        self.fixed_point_info_ = info
        k = info.index
        return self._evaluate(self._factor[k] * self._xi_coef[:, k].real)


# --------------------------------------------------------------------------- helpers
def _check_energy(diag: np.ndarray) -> None:
    """``diag[j] = ‖θ_j‖²``: NaN or Inf anywhere in W shows up here, as does an all-zero W."""
    if not np.all(np.isfinite(diag)):
        raise ValueError("snapshots contain NaN or Inf (or values whose squares overflow "
                         "float64); the KMD needs finite values: check training for divergence")
    if not np.any(diag > 0):
        raise ValueError("snapshots are all zero: there is no trajectory to decompose")


def _fixed_point_info(lam: np.ndarray, b: np.ndarray, m: int, tol: float,
                      max_share: float) -> FixedPointInfo:
    k = int(np.argmin(np.abs(lam - 1.0)))
    if lam[k].imag < 0:  # the partner stored just before carries Im λ > 0
        k -= 1
    partners = {k, k + 1} if lam[k].imag > 0 else {k}
    weight = np.abs(b) * np.abs(lam) ** m
    growing = np.abs(lam) > 1.0
    growing[list(partners)] = False
    total = float(np.sum(weight))
    share = float(np.sum(weight[growing]) / total) if total > 0 and np.isfinite(total) else (
        1.0 if np.any(growing) else 0.0)
    return FixedPointInfo(index=k, eigenvalue=complex(lam[k]),
                          distance_from_one=float(abs(lam[k] - 1.0)),
                          growing_amplitude_share=share, n_growing=int(np.sum(growing)),
                          tol=tol, max_growing_share=max_share)


def _as_times(j: Any, name: str) -> tuple[np.ndarray, bool]:
    """Snapshot times as a float64 host vector, and whether a scalar was given."""
    if isinstance(j, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number >= 0, got {j!r}")
    try:
        times = np.asarray(to_numpy(j) if hasattr(j, "shape") else j, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real number >= 0 or a 1-D array of them, got "
                        f"{j!r}") from err
    if times.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-D array, got shape {times.shape}")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError(f"{name}={j!r}: snapshot indices must be finite and >= 0 (0 is the first "
                         f"snapshot, m the last, larger values extrapolate)")
    return np.atleast_1d(times), times.ndim == 0


def _finite(z: np.ndarray, times: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(z)):
        raise ValueError(f"the prediction overflows at t={float(np.max(times)):g}: a mode with "
                         f"|λ| > 1 grows without bound; use a smaller horizon")
    return z
