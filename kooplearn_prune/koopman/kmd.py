"""The Koopman mode decomposition of a training trajectory by exact DMD (docs/theory.md §5).

``KMD().fit(snapshots)`` takes the snapshots ``W`` (rows ``θ_j``, shape ``(m+1, n)``) and writes the
trajectory as a sum of modes that each evolve by one complex number (§3),

    θ_j ≈ Σ_k λ_k^j ξ_k        (eigenvalues_ λ_k, modes ξ_k = b_k ψ_k, ‖ψ_k‖ = 1, amplitudes_ b_k).

Two exact-DMD solvers, with the same result on well-conditioned data:

* ``solver="gram"`` (the method of snapshots, §5.2): one float64 Gram matrix ``G = W Wᵀ``,
  accumulated over chunks of the parameter axis (§6), gives every small matrix; the big array is
  touched once for the fit and once for each set of modes or predictions asked for.
* ``solver="svd"``: thin-SVD exact DMD (§5.1, Tu et al., 2014) on a float64 host copy, the most
  accurate choice for small problems.

Two noise-robust solvers start from the same Gram matrix (``koopman.robust``, §5.4):
``solver="tls"`` (total-least-squares DMD) and ``solver="optimized"`` (optimized DMD by variable
projection; ``bags=`` adds BOP-DMD spreads).

All reduce the decomposition to a coefficient matrix ``Ξ`` (``mode_coefficients_``, shape
``(m+1, r)``): mode ``k`` is ``ξ_k = Wᵀ Ξ[:, k]``, a combination of the snapshots. So modes,
predictions and the fixed point are all combinations ``Wᵀ z`` with a small host vector ``z``
(``KMD.combine``). Where the code lives: ``koopman.snapshots`` (the passes over ``W``),
``koopman.dmd`` (the small algebra), ``koopman.inputs`` (input checks), this module (the estimator
and the fixed-point diagnostics of §7).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import numpy as np

from ..backend import namespace_of, to_numpy
from .dmd import decompose, default_tol, gram_root, powers, reduced_from_gram, reduced_from_svd
from .inputs import (
    ROBUST_SOLVERS,
    SOLVERS,
    check_bag_size,
    check_bagging,
    check_energy,
    check_finite_prediction,
    check_gram,
    check_params,
    check_snapshots,
    check_threshold,
    snapshot_times,
)
from .rank import OPTIMAL, RankWarning, warn_about_rank
from .robust import Bagging, bag_size, fit_optimized, reduced_tls
from .snapshots import _one_blas_thread, combine_rows, combine_rows_complex, gram_matrix
from .stationary import (
    MAX_GROWING_SHARE,
    STATIONARY_TOL,
    FixedPointInfo,
    FixedPointWarning,
    stationary_mode,
)

__all__ = [
    "KMD",
    "FixedPointInfo",
    "FixedPointWarning",
    "NotFittedError",
    "RankWarning",
    "gram_matrix",
    "default_tol",
    "snapshot_times",
    "SOLVERS",
    "ROBUST_SOLVERS",
    "AUTO_SVD_MAX_ENTRIES",
    "OPTIMAL",
    "STATIONARY_TOL",
    "MAX_GROWING_SHARE",
]

logger = logging.getLogger(__name__)

#: ``solver="auto"`` uses the thin SVD when the snapshots hold at most this many numbers
#: (``(m+1)·n``; 2**21 is a 16 MiB float64 host copy) and the Gram matrix otherwise.
AUTO_SVD_MAX_ENTRIES = 2**21

class NotFittedError(ValueError, AttributeError):
    """A fitted attribute or method was used before ``KMD.fit``."""


def _deprecated_method(old: str = "method=", new: str = "solver=") -> None:
    warnings.warn(f"KMD's {old} is deprecated and will be removed in the next release: use "
                  f"{new} ('auto', 'svd' or 'gram'); 'method' names a pruning method elsewhere",
                  DeprecationWarning, stacklevel=3)


# --------------------------------------------------------------------------- the estimator
class KMD:
    """Koopman mode decomposition of snapshots ``W`` (rows θ_j, shape ``(m+1, n)``) by exact DMD.

    docs/theory.md §3 and §5. ``θ_j ≈ Σ_k λ_k^j ξ_k`` with ``ξ_k = b_k ψ_k`` and ``‖ψ_k‖ = 1``.

    Parameters
    ----------
    rank : None (the default), "optimal" or int
        How many singular values of ``X = W[0:m]`` to keep (§6). None: every singular value
        above ``tol``, noise included (full rank). "optimal": the Gavish-Donoho
        (2014) hard threshold for an unknown noise level, ``τ = ω(β)·median(σ_2..σ_m)`` with
        ``β = (m−1)/n`` (ω ≈ 1.43 for n ≫ m), on top of ``tol``; the first direction (the
        window's mean, the stationary part) is always kept and set aside from the median. It
        assumes that fewer than half of σ_2..σ_m are signal, and it removes noise that is white
        over the parameters; measured on SGD
        windows (``benchmarks/kmd_rank.py``) it keeps 8 to 19 of 40 directions, because SGD
        noise accumulates over a window (its singular values fall like 1/k instead of forming a
        flat bulk). A window that does not move at all warns (nothing to estimate noise from);
        with fewer parameters than snapshots (small teaching systems) the floor alone decides.
        It is not the default because it does not beat full rank across settings: it lifts the
        worst late window's KMP/GMP overlap (0.762 -> 0.940, ``benchmarks/kmd_rank.py``) but
        costs KMP 0.02-0.07 of overlap with the converged mask on early momentum windows
        (``early_training_momentum`` config, 10 seeds, §12). The robust solvers need it (or an
        int). An int: at most that many (more than the m that X has warns, ``RankWarning``).
    tol : float in (0, 1) or None
        Drop singular values ``σ <= tol·σ_max``. None: ``default_tol(solver, m+1, eps)``, the
        precision floor of §6 (float32 data: 1.2e-7 for "gram", set by the float64 accumulation
        of G, and 6e-8 for "svd", set by float32 rounding noise).
    solver : "auto", "svd", "gram", "tls" or "optimized" (None means "auto")
        "gram": method of snapshots, one float64 Gram matrix (large n, §5.2). "svd": thin-SVD exact
        DMD on a float64 host copy (small problems, most accurate, §5.1). "auto": "svd" when
        ``(m+1)·n <= AUTO_SVD_MAX_ENTRIES`` (2**21), else "gram"; the choice is ``solver_`` and is
        logged at INFO level. "tls" (total-least-squares DMD) and "optimized" (optimized DMD,
        variable projection on the POD coefficients) resist measurement noise (§5.4); both fit
        from the Gram matrix with no further pass over W, and help only with a truncated rank
        (an int or "optimal": at full rank TLS is exact DMD and optimized DMD fits the noise).
    affine : bool
        Append a constant 1 to every snapshot: exact for affine dynamics in which every direction
        is excited (small teaching problems, §4), provided the constant direction's singular value
        is above ``tol``. Measured (GD on a quadratic, λ in [0.1, 0.9]): n = 6, m+1 = 25 (σ_7 =
        1e-6..1e-5 of σ_max) gives the fixed point to 3e-13 where plain DMD is 1e-4..1e-2 off;
        n = 15, m+1 = 60 (σ_16 = 2e-14..9e-14 of σ_max, under the "svd" floor 1.3e-13) keeps 15
        of 16 and is no better than plain DMD (7e-10..2e-9 against 4e-10..2e-9) unless
        ``tol=1e-15`` (7e-12..6e-10); slower modes (λ up to 0.98) put σ_16 near 1e-17 and
        nothing is exact. Modes keep length ``n``.
    chunk_size : int or None
        Parameter columns converted to float64 at a time (None: n/256 within [1024, 2**14]).
    n_jobs : int or None
        Threads for the passes over host snapshots (None: the usable cores, at most 8). Results do
        not depend on it (chunk sums are kept in 8 fixed lanes).
    bags, bag_fraction, seed : int, float, int or None
        ``solver="optimized"`` only: ``bags`` refits on random subsets of
        ``round(bag_fraction·(m+1))`` snapshots (BOP-DMD, §5.4; 0, the default, for none), which
        give ``eigenvalue_std_``; ``seed`` seeds the subsets.
    method : deprecated
        The old name of ``solver`` (DeprecationWarning; passing both is a TypeError).

    Fitted attributes
    -----------------
    eigenvalues_ (r,) complex λ_k, amplitudes_ (r,) complex b_k, mode_coefficients_ Ξ (m+1, r)
    complex with ξ_k = Wᵀ Ξ[:, k], singular_values_ (m,) of X (the first ``rank_`` were kept),
    rank_, rank_method_ (which cutoff decided rank_: "explicit", "tolerance" or "optimal"),
    rank_threshold_ (the singular-value cutoff applied, in the units of σ: ``tol_·σ_max``, or the
    Gavish-Donoho τ when it is higher), noise_level_ (rank="optimal" only, else None: the
    per-entry noise level ``median(σ_2..σ_m)/√(n·μ_β)`` of the white-noise model),
    eigenvalue_std_ ((r,) spread sqrt(var Re λ_k + var Im λ_k) over the bags, or None),
    tol_, solver_, reconstruction_error_ (relative Frobenius error of the reconstruction of
    W; computed from G, so about 1e-8 is the floor), fixed_point_info_ (§7, with the default
    thresholds STATIONARY_TOL and MAX_GROWING_SHARE), snapshots_ (a reference, not a copy: do not
    modify it while you use the fit), layout_ (the Trajectory's ParamLayout, or None). Modes are
    ordered by |b_k| (largest first) and complex pairs sit next to each other (Im λ > 0 first).
    """

    def __init__(self, rank: int | str | None = None, tol: float | None = None,
                 solver: str | None = None, affine: bool = False, chunk_size: int | None = None,
                 n_jobs: int | None = None, *, bags: int = 0, bag_fraction: float = 0.6,
                 seed: int | None = None, method: str | None = None) -> None:
        if method is not None:
            if solver is not None:
                raise TypeError(f"pass solver= only: method={method!r} is its deprecated old "
                                f"name and solver={solver!r} was given too")
            _deprecated_method()
            solver = method
        solver = "auto" if solver is None else solver
        check_params(rank, tol, solver, affine, chunk_size, n_jobs)
        check_bagging(bags, bag_fraction, seed, solver)
        self.rank = rank
        self.tol = tol
        self.solver = solver
        self.affine = affine
        self.chunk_size = chunk_size
        self.n_jobs = n_jobs
        self.bags = bags
        self.bag_fraction = bag_fraction
        self.seed = seed

    def __repr__(self) -> str:
        defaults = {"rank": None, "tol": None, "solver": "auto", "affine": False,
                    "chunk_size": None, "n_jobs": None, "bags": 0, "bag_fraction": 0.6,
                    "seed": None}
        args = [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        return f"KMD({', '.join(args)})"

    @property
    def method(self) -> str:
        """Deprecated name of ``solver``."""
        _deprecated_method("attribute method", "solver")
        return self.solver

    @method.setter
    def method(self, value: str) -> None:
        _deprecated_method("attribute method", "solver")
        self.solver = value

    @property
    def method_(self) -> str:
        """Deprecated name of ``solver_``."""
        _deprecated_method("attribute method_", "solver_")
        return self.solver_

    # ------------------------------------------------------------------ fit
    def fit(self, snapshots: Any, *, gram: Any = None, n_params: int | None = None) -> KMD:
        """Decompose ``snapshots`` (an ``(m+1, n)`` array on any backend, or a Trajectory).

        ``gram=``: the float64 ``W Wᵀ`` of the full snapshots, already computed (no pass over W;
        ``inputs.check_gram``); ``snapshots`` may then be one shard of the columns, ``n_params``
        the full snapshot length. Returns ``self``. Raises ValueError/TypeError before changing
        anything when the input is unusable (not 2-D, fewer than 3 snapshots, NaN/Inf, all
        zero, not real). Warns (``RankWarning``) when ``rank`` is more than the m singular values
        X has, and when ``rank="optimal"`` meets a window that does not move (no noise level).
        """
        check_params(self.rank, self.tol, self.solver, self.affine, self.chunk_size, self.n_jobs)
        check_bagging(self.bags, self.bag_fraction, self.seed, self.solver)
        snapshots, layout = check_snapshots(snapshots)
        xp = namespace_of(snapshots)
        n_rows = int(snapshots.shape[0])
        given, n, solver = check_gram(gram, snapshots, n_params, self.solver)
        if solver == "auto":
            solver = "svd" if n_rows * n <= AUTO_SVD_MAX_ENTRIES else "gram"
            logger.info("KMD: solver='auto' chose %r for %d x %d snapshots (svd up to %d entries)",
                        solver, n_rows, n, AUTO_SVD_MAX_ENTRIES)
        dtype_eps = float(xp.finfo(snapshots.dtype).eps) if xp.isdtype(
            snapshots.dtype, "real floating") else float(np.finfo(np.float64).eps)
        tol = float(self.tol) if self.tol is not None else default_tol(solver, n_rows, dtype_eps)

        if solver == "gram" or solver in ROBUST_SOLVERS:
            gram = gram_matrix(snapshots, self.chunk_size, self.n_jobs) if given is None else given
            # (m+1)² matrices: one BLAS thread (several only spin on a busy machine: the fit of
            # a 101x101 G measured 0.3-0.45 s with two, 2 ms with one)
            with _one_blas_thread():
                check_energy(np.diag(gram))
                gram_fit = gram + 1.0 if self.affine else gram
                reduce = reduced_tls if solver == "tls" else reduced_from_gram
                reduced = reduce(gram_fit, tol, self.rank, n + self.affine)
                if self.bags:
                    check_bag_size(bag_size(n_rows, self.bag_fraction), n_rows,
                                   reduced.sigma.size)
                root_data = gram_root(gram)
                root_fit = gram_root(gram_fit) if self.affine else root_data
        else:
            host = np.array(to_numpy(snapshots), dtype=np.float64)
            check_energy(np.einsum("ij,ij->i", host, host))
            host_fit = np.hstack([host, np.ones((n_rows, 1))]) if self.affine else host
            reduced = reduced_from_svd(host_fit, tol, self.rank, n + self.affine)
            root_data = np.linalg.qr(host.T, mode="r")
            root_fit = np.linalg.qr(host_fit.T, mode="r") if self.affine else root_data
        if reduced.sigma.size == 0:
            raise ValueError("no singular value of the snapshots is above the tolerance "
                             f"(tol={tol:.3g}); lower tol or check the trajectory")
        with _one_blas_thread():  # the reduced (rank x rank) problem, as above
            if solver == "optimized":
                fit = fit_optimized(reduced, gram_fit, root_data,
                                    Bagging(int(self.bags), float(self.bag_fraction), self.seed))
            else:
                fit = decompose(reduced, root_fit, root_data, n_rows - 1)
            info = stationary_mode(fit.eigenvalues, fit.amplitudes, n_rows - 1)
        warn_about_rank(self.rank, self.solver, fit.singular_values, tol,
                        robust=self.solver in ROBUST_SOLVERS)

        # Everything succeeded: now (and only now) change the estimator.
        self.snapshots_ = snapshots
        self.layout_ = layout
        self.solver_ = solver
        self.tol_ = tol
        self.rank_ = fit.rank
        self.rank_method_ = fit.choice.method
        self.rank_threshold_ = fit.choice.threshold
        self.noise_level_ = fit.choice.noise_level
        self.singular_values_ = fit.singular_values
        self.eigenvalues_ = fit.eigenvalues
        self.amplitudes_ = fit.amplitudes
        self.reconstruction_error_ = fit.reconstruction_error
        self.eigenvalue_std_ = fit.eigenvalue_std
        self.fixed_point_info_ = info
        self._xi_coef = fit.xi_coef
        self._factor = fit.factor
        return self

    # ------------------------------------------------------------------ fitted state
    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` has succeeded on this estimator."""
        return hasattr(self, "_xi_coef")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("this KMD is not fitted yet: call kmd.fit(snapshots) first")

    @property
    def n_snapshots_(self) -> int:
        """``m + 1``."""
        self._check_fitted()
        return int(self.snapshots_.shape[0])

    @property
    def mode_coefficients_(self) -> np.ndarray:
        """Ξ, complex128 ``(m+1, r)`` on the host (read-only): mode ``ξ_k = Wᵀ Ξ[:, k]``.

        docs/theory.md §5.2 (the modes as combinations of the snapshots, amplitude included)."""
        self._check_fitted()
        view = self._xi_coef.view()
        view.flags.writeable = False
        return view

    @property
    def modes_(self) -> Any:
        """All modes ξ_k as rows, complex128 ``(r, n)`` on the snapshots' backend (one pass over W,
        computed on every access: keep the result if you need it twice)."""
        self._check_fitted()
        return combine_rows_complex(self.snapshots_, self._xi_coef.T, self.chunk_size,
                                    self.n_jobs)

    def mode(self, k: int) -> Any:
        """Mode ξ_k, complex128 ``(n,)`` (one matrix-vector product over W)."""
        self._check_fitted()
        r = self.rank_
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -r <= k < r:
            raise IndexError(f"mode index k={k!r} is out of range for rank_={r}")
        return combine_rows_complex(self.snapshots_, self._xi_coef[:, [int(k)]].T,
                                    self.chunk_size, self.n_jobs)[0, :]

    # ------------------------------------------------------------------ combinations of snapshots
    def combine(self, coefficients: Any) -> Any:
        """``Wᵀ z``: combinations of the fitted snapshots, in one pass over W (docs/theory.md §5.2).

        ``coefficients``: host array-like ``(m+1,)`` (one ``z``) or ``(k, m+1)`` (one ``z`` per
        row), real or complex. Returns ``(n,)`` or ``(k, n)`` on the snapshots' backend, float64 for
        real and complex128 for complex ``z``; row ``i`` is ``Σ_j z_i[j] θ_j``, accumulated in
        float64 chunk by chunk. Every prediction of the KMD is such a combination (see
        ``prediction_coefficients`` and ``update_coefficients``).
        """
        self._check_fitted()
        z = np.asarray(to_numpy(coefficients) if hasattr(coefficients, "shape") else coefficients)
        n_rows = self.n_snapshots_
        if z.ndim not in (1, 2) or z.shape[-1] != n_rows:
            raise ValueError(f"coefficients must have shape (m+1,) or (k, m+1) with m+1 = "
                             f"{n_rows} (one weight per snapshot), got shape {z.shape}")
        if not (np.issubdtype(z.dtype, np.number) and not np.issubdtype(z.dtype, np.bool_)):
            raise TypeError(f"coefficients must be numbers, got dtype {z.dtype}")
        if not np.all(np.isfinite(z)):
            raise ValueError("coefficients contain NaN or Inf")
        if np.iscomplexobj(z):
            out = combine_rows_complex(self.snapshots_, np.atleast_2d(z), self.chunk_size,
                                       self.n_jobs)
            return out[0, :] if z.ndim == 1 else out
        return combine_rows(self.snapshots_, z.astype(np.float64, copy=False), self.chunk_size,
                            self.n_jobs)

    def prediction_coefficients(self, j: Any) -> np.ndarray:
        """Real host rows ``z(j)`` with ``θ̂(j) = Wᵀ z(j)`` (docs/theory.md §5.1, the prediction).

        ``z(j) = Re Σ_k λ_k^j Ξ[:, k]``. ``j``: a real number >= 0 (returns ``(m+1,)``) or a 1-D
        array of them (``(len(j), m+1)``). ``kmd.combine(kmd.prediction_coefficients(j))`` is
        ``kmd.predict(j)``.
        """
        self._check_fitted()
        times, scalar = snapshot_times(j, "j")
        z = self._weighted_sum(powers(self.eigenvalues_, times), times)
        return z[0] if scalar else z

    def update_coefficients(self, j: Any) -> np.ndarray:
        """Real host rows for ``θ̂(j+1) − θ̂(j) = Σ_k (λ_k − 1) λ_k^j ξ_k`` (docs/theory.md §11).

        Shapes as ``prediction_coefficients``. The stationary mode (λ = 1) drops out exactly;
        ``kmd.combine(kmd.update_coefficients(j))`` is ``kmd.predict_update(j)``.
        """
        self._check_fitted()
        times, scalar = snapshot_times(j, "j")
        lam = self.eigenvalues_
        z = self._weighted_sum(powers(lam, times) * (lam - 1.0), times)
        return z[0] if scalar else z

    def _weighted_sum(self, weights: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``Re Σ_k weights[:, k] Ξ[:, k]`` with each conjugate pair summed once (factor 2)."""
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.real((weights * self._factor) @ self._xi_coef.T)
        return check_finite_prediction(z, times)

    # ------------------------------------------------------------------ prediction
    def predict(self, j: Any) -> Any:
        """The reconstruction θ̂(j) = Σ_k λ_k^j ξ_k at snapshot index j (real, j >= 0), §5.1.

        ``j`` may be a number (returns float64 ``(n,)``) or a 1-D array of them (``(len(j), n)``).
        Conjugate pairs are summed as ``2 Re(λ^j ξ)``, so the result is real by construction;
        ``j > m`` extrapolates, non-integer j interpolates between snapshots.
        """
        return self.combine(self.prediction_coefficients(j))

    def predict_update(self, j: Any) -> Any:
        """θ̂(j+1) − θ̂(j), the Koopman estimate of one snapshot-to-snapshot update at snapshot j
        (docs/theory.md §11: ``−η ĝ_j`` for gradient descent). Shapes as ``predict``."""
        return self.combine(self.update_coefficients(j))

    def reconstruct(self) -> Any:
        """θ̂_j for every snapshot, float64 ``(m+1, n)`` (compare with ``snapshots_``)."""
        self._check_fitted()
        return self.predict(np.arange(self.n_snapshots_, dtype=np.float64))

    # ------------------------------------------------------------------ fixed point
    def fixed_point_diagnostics(self, tol: float = STATIONARY_TOL,
                                max_growing_share: float = MAX_GROWING_SHARE) -> FixedPointInfo:
        """``fixed_point_info_`` judged with other thresholds (docs/theory.md §7); changes nothing.

        ``k*``, ``|λ_{k*} − 1|`` and the growing-amplitude share do not depend on the thresholds;
        only ``reliable`` does. With the default thresholds this is ``fixed_point_info_`` itself.
        """
        self._check_fitted()
        tol = check_threshold("tol", tol)
        max_growing_share = check_threshold("max_growing_share", max_growing_share)
        info = self.fixed_point_info_
        if tol == info.tol and max_growing_share == info.max_growing_share:
            return info
        return dataclasses.replace(info, tol=tol, max_growing_share=max_growing_share)

    def fixed_point(self, tol: float = STATIONARY_TOL, strict: bool = False,
                    max_growing_share: float = MAX_GROWING_SHARE) -> Any:
        """The stationary mode ξ_{k*}, k* = argmin |λ_k − 1|: where training converges (§3, §7).

        Returns float64 ``(n,)`` on the snapshots' backend (for a real λ_{k*} this is ξ_{k*}
        itself; should λ_{k*} be one of a complex pair, the pair's real sum 2 Re ξ_{k*}, which
        the record flags as unreliable, as it does two competing eigenvalues). A pure
        query: the thresholds judge this call only (``fixed_point_diagnostics``), and
        ``fixed_point_info_`` (set by ``fit``) never changes. When ``|λ_{k*} − 1| > tol`` or
        growing modes carry more than ``max_growing_share`` of the amplitude, warns
        (``FixedPointWarning``) with the numbers, or raises ValueError with ``strict=True``; so
        does a complex λ_{k*} or a runner-up within ``tol`` of it (``FixedPointInfo``).
        """
        info = self.fixed_point_diagnostics(tol, max_growing_share)
        if not info.reliable:
            if strict:
                raise ValueError(info.describe())
            warnings.warn(info.describe(), FixedPointWarning, stacklevel=2)
        k = info.index
        return self.combine(self._factor[k] * self._xi_coef[:, k].real)
