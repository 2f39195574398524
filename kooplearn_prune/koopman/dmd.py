"""The small dense algebra of exact DMD, on ``(m+1)``-sized host matrices (docs/theory.md §5).

Nothing here touches the big snapshot array ``W``: ``koopman.snapshots`` reduces it to a Gram
matrix (or ``KMD`` makes a float64 host copy for the thin SVD), and this module turns that into
eigenvalues, amplitudes and a coefficient matrix ``Ξ`` of shape ``(m+1, r)`` with mode
``ξ_k = Wᵀ Ξ[:, k]``. Steps, in the order ``decompose`` runs them:

1. ``reduced_from_gram`` / ``reduced_from_svd``: singular values of ``X = W[0:m]``, the rank
   (``rank.choose_rank``: precision floor ``default_tol``, an explicit rank, or the data-driven
   "optimal" threshold) and the projected operator ``Ã`` (§5.1, §5.2, §6);
2. ``paired_eig``: eigenpairs of the real ``Ã``, complex pairs stored side by side;
3. exact modes as coefficients on the snapshots, amplitudes by least squares on the first
   snapshot (``real_basis``, ``amplitudes_from_real``), modes ordered by amplitude;
4. the reconstruction error, with ``gram_root`` standing in for ``W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .rank import RankChoice, choose_rank

__all__ = [
    "default_tol",
    "gram_root",
    "rank_cutoff",
    "Reduced",
    "reduced_from_gram",
    "reduced_from_svd",
    "paired_eig",
    "real_basis",
    "amplitudes_from_real",
    "powers",
    "DMDFit",
    "decompose",
]

_EPS64 = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)


def default_tol(solver: str, n_snapshots: int, dtype_eps: float = _EPS32) -> float:
    """Relative singular-value cutoff used when ``tol=None``: singular values ``σ <= tol·σ_max``
    of ``X`` are dropped (docs/theory.md §6).

    ``max(floor, dtype_eps / 2)``, where the floor is what the solver resolves in float64:

    * "svd": ``10·(m+1)·eps64`` (the thin SVD is backward stable: σ is accurate to about
      ``(m+1)·eps64·σ_max``);
    * "gram": ``√(64·eps64) ≈ 1.2e-7``. The eigenvalues of ``G`` are ``σ²``, and the error of the
      float64 accumulation was measured at ``‖ΔG‖₂ ≈ 12·eps64·σ_max²`` (n = 1e6 and 4e6, data with
      a large common offset, against an extended-precision reference); the floor keeps a factor 5
      above that. Below it, directions of ``G`` are rounding noise.

    ``dtype_eps / 2`` (the snapshots' machine epsilon) drops the rounding noise of float32
    snapshots, whose singular values lie near ``0.3·eps32·σ_max/√(m+1)`` (measured 4.1e-9..4.5e-9
    of σ_max at m+1 = 41, n = 2e5): the cutoff sits about 10x above that noise. For float32 data
    it gives ``1.2e-7`` ("gram") and ``6e-8`` ("svd"). Measured with λ = 1, 0.95, 0.8, 0.6,
    0.9e^{±0.2i} and m+1 = 41 (``tests/test_kmd.py``): a transient of 1e-4 or 3e-5 of ‖θ‖
    (σ_6 = 4.8e-7, 1.4e-7 of σ_max) is kept, one of 1e-5 (σ_6 = 4.8e-8) loses a mode with both
    solvers (rank 5 of 6, fixed point 2.8e-7 off instead of 2.8e-8); ``KMD(solver="svd",
    tol=1e-8)`` keeps it. "gram" cannot go below its own floor. "tls" and "optimized" start from
    the same Gram matrix and use its floor (docs/theory.md §5.4).
    """
    if solver not in ("svd", "gram", "tls", "optimized"):
        raise ValueError(f"solver={solver!r}: default_tol needs 'svd', 'gram', 'tls' or "
                         f"'optimized'")
    floor = 10.0 * n_snapshots * _EPS64 if solver == "svd" else math.sqrt(64.0 * _EPS64)
    return max(floor, 0.5 * float(dtype_eps))


def gram_root(gram: np.ndarray) -> np.ndarray:
    """``R`` with ``Rᵀ R = G``, so ``‖Wᵀ x‖ = ‖R x‖``: R stands in for W in every small problem."""
    evals, evecs = np.linalg.eigh(gram)
    return np.sqrt(np.clip(evals, 0.0, None))[:, None] * evecs.T


def rank_cutoff(sigma: np.ndarray, tol: float, rank: int | None) -> int:
    """How many singular values (descending ``sigma``) to keep: those above ``tol·σ_max``, at
    most ``rank``; 0 when ``σ_max`` is 0. (``rank.choose_rank`` also knows ``rank="optimal"``.)"""
    return choose_rank(sigma, tol, rank, n_params=1).rank


class Reduced(NamedTuple):
    """The reduced problem of docs/theory.md §5.1: ``X = W[0:m]``, ``Xᵀ ≈ U_r Σ_r V_rᵀ``."""

    singular_values: np.ndarray  # σ of X, all m of them, descending
    v: np.ndarray  # V_r, (m, r)
    sigma: np.ndarray  # Σ_r, the r kept singular values
    a_tilde: np.ndarray  # Ã, (r, r)
    choice: RankChoice  # the rank kept and the rule that decided it


def _choose(sigma: np.ndarray, tol: float, rank: int | str | None,
            n_params: int | None) -> RankChoice:
    if isinstance(rank, str) and n_params is None:
        raise ValueError(f"rank={rank!r} needs n_params, the length of a snapshot")
    return choose_rank(sigma, tol, rank, 1 if n_params is None else n_params)


def reduced_from_gram(gram_fit: np.ndarray, tol: float, rank: int | str | None,
                      n_params: int | None = None) -> Reduced:
    """σ (all m, descending), V_r and Ã = Σ⁻¹ Vᵀ G[0:m,1:] V Σ⁻¹ from the Gram matrix (§5.2).

    ``rank``: None, an int or "optimal" (``rank.choose_rank``; "optimal" needs ``n_params``)."""
    m = gram_fit.shape[0] - 1
    s2, v = np.linalg.eigh(gram_fit[:m, :m])
    s2, v = s2[::-1], v[:, ::-1]
    sigma = np.sqrt(np.clip(s2, 0.0, None))
    choice = _choose(sigma, tol, rank, n_params)
    r = choice.rank
    vr, sr = v[:, :r], sigma[:r]
    a_tilde = (vr.T @ gram_fit[:m, 1:] @ vr) / np.outer(sr, sr)
    return Reduced(sigma, vr, sr, a_tilde, choice)


def reduced_from_svd(host: np.ndarray, tol: float, rank: int | str | None,
                     n_params: int | None = None) -> Reduced:
    """σ, V_r and Ã = U* Yᵀ V Σ⁻¹ from the thin SVD ``Xᵀ = U Σ V*`` (§5.1, Tu et al.).

    ``n_params`` defaults to the width of ``host``."""
    u, sigma, vh = np.linalg.svd(host[:-1].T, full_matrices=False)
    choice = _choose(sigma, tol, rank, host.shape[1] if n_params is None else n_params)
    r = choice.rank
    vr, sr = vh[:r].T, sigma[:r]
    a_tilde = (u[:, :r].T @ (host[1:].T @ vr)) / sr[None, :]
    return Reduced(sigma, vr, sr, a_tilde, choice)


def paired_eig(a_tilde: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def real_basis(coef: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Real columns with the same real span: c_k for a real λ, (Re c_k, Im c_k) for a pair."""
    cols = []
    for k in range(coef.shape[1]):
        if factor[k] == 1.0:
            cols.append(coef[:, k].real)
        elif factor[k] == 2.0:
            cols.extend([coef[:, k].real, coef[:, k].imag])
    return np.stack(cols, axis=1)


def amplitudes_from_real(beta: np.ndarray, factor: np.ndarray) -> np.ndarray:
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


def powers(lam: np.ndarray, times: np.ndarray) -> np.ndarray:
    """λ^t for real t >= 0, ``(len(t), r)``: |λ|^t e^{i t arg λ}. For a real negative λ this is the
    Nyquist oscillation |λ|^t cos(πt) once the real part is taken (exact at integer t). Overflow
    gives inf without a warning; the caller reports it."""
    t = times[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.abs(lam)[None, :] ** t * np.exp(1j * t * np.angle(lam)[None, :])


@dataclass
class DMDFit:
    """Everything ``decompose`` computes; ``KMD.fit`` assigns it only when all of it succeeded."""

    eigenvalues: np.ndarray  # λ_k, (r,) complex, ordered by |b_k|, pairs side by side
    amplitudes: np.ndarray  # b_k, (r,) complex
    xi_coef: np.ndarray  # Ξ, (m+1, r) complex: ξ_k = Wᵀ Ξ[:, k]
    factor: np.ndarray  # 1 (real λ), 2 (Im λ > 0) or 0 (its partner): real sums over modes
    singular_values: np.ndarray  # σ of X, all m
    rank: int
    reconstruction_error: float
    choice: RankChoice  # the rank and the rule that decided it (rank.choose_rank)
    eigenvalue_std: np.ndarray | None = None  # spread of λ_k over bags (robust.fit_optimized)


def decompose(reduced: Reduced, root_fit: np.ndarray, root_data: np.ndarray, m: int) -> DMDFit:
    """Exact DMD modes, amplitudes and reconstruction error from the reduced problem (§5.1-§5.2).

    ``root_fit`` and ``root_data`` are ``R`` with ``Rᵀ R = G`` for the fitted data (with the
    affine column, if any) and for ``W`` itself: the small problems use them instead of ``W``.
    """
    sigma, vr, sr, a_tilde = reduced.singular_values, reduced.v, reduced.sigma, reduced.a_tilde
    r = sr.size
    lam, w, factor = paired_eig(a_tilde)
    # Mode coefficients c_k (ψ_k = Wᵀ c_k): exact modes (1/λ) Yᵀ V Σ⁻¹ w live on rows 1..m; for
    # λ ≈ 0 the exact mode is undefined and the projected mode Xᵀ V Σ⁻¹ w (rows 0..m-1) is used.
    tiny = np.abs(lam) <= 1e-8 * max(1.0, float(np.max(np.abs(lam))))
    coef = np.zeros((m + 1, r), dtype=np.complex128)
    base = vr @ (w / sr[:, None])
    coef[1:, ~tiny] = base[:, ~tiny] / lam[~tiny]
    coef[:-1, tiny] = base[:, tiny]
    # The same modes in the coordinates of R (Rᵀ R = G), built in the textbook order: Yᵀ V first,
    # then Σ⁻¹, then w (Tu et al.). Forming V Σ⁻¹ w first adds terms of size 1/σ_min that cancel,
    # which costs about eps·σ_max/σ_min in every mode; fitting the amplitudes to those modes put
    # that error into the stationary amplitude (docs/theory.md §5.1, §6).
    modes = np.empty((root_fit.shape[0], r), dtype=np.complex128)
    modes[:, ~tiny] = ((root_fit[:, 1:] @ vr) / sr) @ w[:, ~tiny] / lam[~tiny]
    modes[:, tiny] = ((root_fit[:, :-1] @ vr) / sr) @ w[:, tiny]
    norms = np.linalg.norm(modes, axis=0)
    norms = np.where(norms > 0, norms, 1.0)
    coef /= norms
    modes /= norms
    # Amplitudes: argmin ‖Ψ b − θ_0‖ over real combinations, with R standing in for W.
    beta = np.linalg.lstsq(real_basis(modes, factor), root_fit[:, 0], rcond=None)[0]
    b = amplitudes_from_real(beta, factor)
    # Order modes by |b_k| (largest first), keeping each pair together.
    groups = [[k] if factor[k] == 1.0 else [k, k + 1] for k in range(r) if factor[k] != 0.0]
    groups.sort(key=lambda g: -abs(b[g[0]]))
    order = np.array([k for g in groups for k in g], dtype=int)
    lam, b, coef, factor = lam[order], b[order], coef[:, order], factor[order]
    xi_coef = coef * b[None, :]
    recon = np.real((powers(lam, np.arange(m + 1, dtype=np.float64)) * factor) @ xi_coef.T)
    residual = np.linalg.norm(root_data @ (np.eye(m + 1) - recon).T)
    total = np.linalg.norm(root_data)
    return DMDFit(lam, b, xi_coef, factor, sigma, r, float(residual / total), reduced.choice)
