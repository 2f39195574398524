"""Checks on what the KMD is given: its parameters, the snapshot array, snapshot times.

Every check raises before anything is changed, with a message that names the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import namespace_of, to_numpy
from ..layout import ParamLayout
from ..trajectory import Trajectory
from .rank import OPTIMAL

_EPS64 = float(np.finfo(np.float64).eps)

__all__ = [
    "SOLVERS",
    "ROBUST_SOLVERS",
    "check_params",
    "check_bagging",
    "check_bag_size",
    "check_threshold",
    "check_snapshots",
    "check_energy",
    "check_gram",
    "snapshot_times",
    "check_finite_prediction",
]

#: The exact-DMD values of ``KMD(solver=...)``: "svd" and "gram" are the two solvers of
#: docs/theory.md §5.1 and §5.2; "auto" picks one from the size of the snapshots.
SOLVERS = ("auto", "svd", "gram")

#: The noise-robust values of ``KMD(solver=...)`` (docs/theory.md §5.4, ``koopman.robust``):
#: total-least-squares DMD and optimized DMD, both from the Gram matrix.
ROBUST_SOLVERS = ("tls", "optimized")


# --------------------------------------------------------------------------- KMD parameters
def check_params(rank: Any, tol: Any, solver: Any, affine: Any, chunk_size: Any,
                 n_jobs: Any) -> None:
    """The arguments of ``KMD(...)``, checked by the constructor and again by ``fit``."""
    if not isinstance(solver, str) or solver not in SOLVERS + ROBUST_SOLVERS:
        raise ValueError(f"solver={solver!r} is unknown; choose 'auto', 'svd' (thin-SVD exact "
                         f"DMD, small problems), 'gram' (method of snapshots, large problems), "
                         f"'tls' (total-least-squares DMD) or 'optimized' (optimized DMD by "
                         f"variable projection); the last two resist noise (docs/theory.md §5.4)")
    if isinstance(rank, str):
        if rank != OPTIMAL:
            raise ValueError(f"rank={rank!r} is unknown; pass an integer >= 1 (the most modes to "
                             f"keep), None (every mode above the tolerance) or {OPTIMAL!r} (the "
                             f"Gavish-Donoho threshold, docs/theory.md §6)")
    else:
        check_positive_int("rank", rank, "the most modes to keep",
                           f"to keep every mode above the tolerance, or {OPTIMAL!r}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
            raise TypeError(f"tol must be a number in (0, 1) or None, got {tol!r}")
        if not (math.isfinite(tol) and 0.0 < tol < 1.0):
            raise ValueError(f"tol={tol!r} must lie in (0, 1): singular values below "
                             f"tol·σ_max are dropped; None picks the precision floor")
    if not isinstance(affine, (bool, np.bool_)):
        raise TypeError(f"affine must be True or False, got {affine!r}")
    check_positive_int("chunk_size", chunk_size, "parameter columns per chunk",
                       "for the automatic choice")
    check_positive_int("n_jobs", n_jobs, "threads for the passes over the snapshots",
                       "for every usable core")


def check_bagging(bags: Any, bag_fraction: Any, seed: Any, solver: Any) -> None:
    """``KMD(bags=, bag_fraction=, seed=)``: BOP-DMD bagging, for ``solver="optimized"`` only."""
    if isinstance(bags, bool) or not isinstance(bags, (int, np.integer)) or bags < 0:
        raise ValueError(f"bags={bags!r} must be an integer >= 0 (the number of bagged refits of "
                         f"optimized DMD; 0 for none)")
    if bags > 0 and solver != "optimized":
        raise ValueError(f"bags={bags} needs solver='optimized' (BOP-DMD), got solver={solver!r}; "
                         f"pass solver='optimized' or bags=0")
    if isinstance(bag_fraction, bool) or not isinstance(bag_fraction, (int, float, np.floating)) \
            or not (math.isfinite(bag_fraction) and 0.0 < bag_fraction < 1.0):
        raise ValueError(f"bag_fraction={bag_fraction!r} must lie in (0, 1): the share of the "
                         f"snapshots that each bag refits")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")


def check_bag_size(size: int, n_rows: int, rank: int) -> None:
    """A bag of ``size`` snapshots must hold more rows than the ``rank`` amplitudes it refits."""
    if size < rank + 2:
        raise ValueError(f"a bag holds {size} of the {n_rows} snapshots, too few to refit "
                         f"{rank} modes (it needs at least rank + 2 = {rank + 2}): raise "
                         f"bag_fraction, record more snapshots or lower rank")


def check_positive_int(name: str, value: Any, meaning: str, none_means: str) -> None:
    """``value`` is None or an integer >= 1; the error says what it means and what None does."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer or None ({none_means}), got "
                        f"{value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1 ({meaning}), or None {none_means}")


def check_threshold(name: str, value: Any) -> float:
    """A fixed-point threshold (docs/theory.md §7) as a float: finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
            not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    return float(value)


# --------------------------------------------------------------------------- data
def check_snapshots(snapshots: Any) -> tuple[Any, ParamLayout | None]:
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


def check_energy(diag: np.ndarray) -> None:
    """``diag[j] = ‖θ_j‖²``: NaN or Inf anywhere in W shows up here, as does an all-zero W."""
    if not np.all(np.isfinite(diag)):
        raise ValueError("snapshots contain NaN or Inf (or values whose squares overflow "
                         "float64); the KMD needs finite values: check training for divergence")
    if not np.any(diag > 0):
        raise ValueError("snapshots are all zero: there is no trajectory to decompose")


def check_gram(gram: Any, snapshots: Any, n_params: Any, solver: str
               ) -> tuple[np.ndarray | None, int, str]:
    """``KMD.fit(snapshots, gram=, n_params=)``: the Gram matrix, the snapshot length ``n``, solver.

    docs/theory.md §5.2: ``G = W Wᵀ`` of the FULL snapshots (all ``n_params`` parameters) while
    ``snapshots`` may hold only some of the parameter columns (one rank's shard): the fit needs G
    alone, and modes, fixed point and scores are combinations ``Wᵀ z`` of the local columns. G must
    be float64 ``(m+1, m+1)`` with ``m+1`` the snapshots' rows, finite and symmetric (to
    ``64·eps64·max diag G``; returned exactly symmetric). ``solver="auto"`` becomes "gram";
    "svd" needs W itself and is an error. Without ``gram``, ``n_params`` must be W's width.
    """
    n_rows, width = (int(d) for d in snapshots.shape)
    if n_params is None:
        n_total = width
    else:
        check_positive_int("n_params", n_params, "the length of one full snapshot",
                           "for the snapshots' width")
        n_total = int(n_params)
        if n_total < width:
            raise ValueError(f"n_params={n_total} is less than the {width} parameter columns of "
                             f"snapshots; pass the length of one FULL snapshot (all shards)")
    if gram is None:
        if n_total != width:
            raise ValueError(f"n_params={n_total} differs from the snapshots' width {width}; "
                             f"that needs gram= (the Gram matrix of the full snapshots), or drop "
                             f"n_params")
        return None, n_total, solver
    if solver == "svd":
        raise ValueError("solver='svd' factors the snapshots themselves and cannot use gram=; "
                         "pass solver='gram' (or 'auto', 'tls', 'optimized') with gram=, or drop "
                         "gram=")
    if not hasattr(gram, "shape") or not hasattr(gram, "dtype"):
        raise TypeError(f"gram must be a float64 array of shape (m+1, m+1) (e.g. "
                        f"GramAccumulator.gram or koopman.gram_matrix(W)), got "
                        f"{type(gram).__name__}")
    host = to_numpy(gram)
    if host.dtype != np.float64:
        raise TypeError(f"gram must be float64 (accumulated as in docs/theory.md §6), got dtype "
                        f"{host.dtype}; use GramAccumulator or koopman.gram_matrix, which "
                        f"accumulate in float64 (a float32 G loses the small directions)")
    if host.shape != (n_rows, n_rows):
        raise ValueError(f"gram has shape {tuple(host.shape)} but snapshots has {n_rows} rows: "
                         f"gram must be ({n_rows}, {n_rows}), the Gram matrix of the same "
                         f"snapshots (one row and column per snapshot θ_j)")
    if not np.all(np.isfinite(host)):
        raise ValueError("gram contains NaN or Inf; the snapshots it came from are not finite "
                         "(check training for divergence) or it overflowed")
    scale = float(np.max(np.abs(np.diag(host)))) if host.size else 0.0
    if np.any(np.diag(host) < 0) or \
            float(np.max(np.abs(host - host.T))) > 64.0 * _EPS64 * scale:
        raise ValueError("gram is not a Gram matrix W Wᵀ (not symmetric, or a negative diagonal "
                         "entry ‖θ_j‖²): pass the float64 Gram matrix of the snapshots, e.g. "
                         "GramAccumulator.gram or koopman.gram_matrix(W)")
    gram = np.array(host, dtype=np.float64, copy=True)
    gram = 0.5 * (gram + gram.T)  # exactly symmetric; unchanged when it already was
    return gram, n_total, "gram" if solver == "auto" else solver


def snapshot_times(j: Any, name: str = "j") -> tuple[np.ndarray, bool]:
    """Snapshot indices as a float64 host vector ``(len,)``, and whether a scalar was given.

    ``j``: a real number >= 0 or a 1-D array of them (0 is the first snapshot, m the last, larger
    values extrapolate, non-integers interpolate). ``name`` is the argument named in errors.
    """
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


def check_finite_prediction(z: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``z`` unchanged, or a ValueError when a growing mode overflowed at the largest time."""
    if not np.all(np.isfinite(z)):
        raise ValueError(f"the prediction overflows at t={float(np.max(times)):g}: a mode with "
                         f"|λ| > 1 grows without bound; use a smaller horizon")
    return z
