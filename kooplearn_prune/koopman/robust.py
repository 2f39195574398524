"""Noise-robust DMD solvers in Gram form: total least squares, optimized DMD (docs/theory.md §5.4).

Both work on the float64 Gram matrix ``G = W Wᵀ`` that the "gram" solver computes (§5.2) and never
touch the snapshots ``W`` again during the fit; their modes are coefficient matrices ``Ξ`` on the
snapshots, as for exact DMD, so every ``KMD`` query still costs one pass over ``W``.

* ``reduced_tls``: total-least-squares DMD (Dawson et al. 2016, Hemati et al. 2017). ``X`` and
  ``Y`` are projected onto the ``r`` leading right singular vectors of the stacked ``[Xᵀ; Yᵀ]``,
  the leading eigenvectors of ``X Xᵀ + Y Yᵀ = G[:-1, :-1] + G[1:, 1:]``, and exact DMD runs on the
  projected pair. It returns a ``dmd.Reduced``, so ``dmd.decompose`` finishes it.
* ``fit_optimized``: optimized DMD (Askham & Kutz 2018) by variable projection on the POD
  coefficients of all ``m+1`` snapshots (``G = V S² Vᵀ``, coefficients ``T = V_r S_r``): the
  discrete-time model ``T[j] ≈ Σ_k λ_k^j c_k`` is fitted by ``scipy.optimize.least_squares``,
  started from exact DMD, optionally with bagging (BOP-DMD, Sashidhar & Kutz 2022).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import least_squares

from .dmd import DMDFit, Reduced, paired_eig, powers, reduced_from_gram
from .inputs import ROBUST_SOLVERS
from .snapshots import _one_blas_thread

__all__ = ["ROBUST_SOLVERS", "Bagging", "reduced_tls", "fit_optimized", "bag_size"]


class Bagging(NamedTuple):
    """BOP-DMD settings: ``bags`` fits on random subsets of ``bag_size`` snapshots (0: none)."""

    bags: int = 0
    fraction: float = 0.6
    seed: int | None = None


def bag_size(n_rows: int, fraction: float) -> int:
    """Snapshots in one bag: ``round(fraction·(m+1))``."""
    return int(round(fraction * n_rows))


# --------------------------------------------------------------------------- total least squares
def reduced_tls(gram_fit: np.ndarray, tol: float, rank: int | str | None,
                n_params: int | None = None) -> Reduced:
    """The reduced problem of TLS-DMD from ``G`` alone (docs/theory.md §5.4).

    The rank ``r`` is chosen on the singular values of ``X`` as for exact DMD (§6). With
    ``Q`` the ``r`` leading eigenvectors of ``G[:-1,:-1] + G[1:,1:]`` (the right singular vectors
    of ``[Xᵀ; Yᵀ]``), the projected snapshots are ``Xᵀ Q Qᵀ`` and ``Yᵀ Q Qᵀ``; their Gram blocks
    are ``Qᵀ G[:-1,:-1] Q`` and ``Qᵀ G[:-1,1:] Q``. ``Reduced.v = Q V'`` lies in the span of ``Q``,
    so ``dmd.decompose`` builds the exact modes of the projected pair, ``Yᵀ Q Qᵀ V Σ⁻¹ w / λ``.
    ``singular_values`` and ``choice`` are those of ``X`` (what decided the rank).
    """
    exact = reduced_from_gram(gram_fit, tol, rank, n_params)
    r = exact.sigma.size
    m = gram_fit.shape[0] - 1
    _, q = np.linalg.eigh(gram_fit[:m, :m] + gram_fit[1:, 1:])
    q = q[:, ::-1][:, :r]
    s2, v_small = np.linalg.eigh(q.T @ gram_fit[:m, :m] @ q)
    s2, v_small = s2[::-1], v_small[:, ::-1]
    keep = s2 > (tol * exact.singular_values[0]) ** 2 if r else np.zeros(0, dtype=bool)
    sr = np.sqrt(s2[keep])
    vr = q @ v_small[:, keep]
    a_tilde = (vr.T @ gram_fit[:m, 1:] @ vr) / np.outer(sr, sr)
    return Reduced(exact.singular_values, vr, sr, a_tilde, exact.choice)


# --------------------------------------------------------------------------- optimized DMD
class _Blocks(NamedTuple):
    """The real block-diagonal model of optimized DMD: 1×1 blocks (one real λ) and 2×2 companion
    blocks ``[[0, 1], [−δ, τ]]`` (the roots of ``λ² − τλ + δ``: two real λ or a conjugate pair,
    with basis functions smooth across the switch)."""

    sizes: tuple[int, ...]  # 1 or 2 per block; parameters: λ for 1, (τ, δ) for 2


def _initial_blocks(lam: np.ndarray) -> tuple[_Blocks, np.ndarray]:
    """Blocks and parameters from exact-DMD eigenvalues: one 2×2 block per conjugate pair, real
    eigenvalues paired in descending order into 2×2 blocks (one 1×1 block for an odd one out)."""
    sizes, params = [], []
    for value in lam[lam.imag > 0]:
        sizes.append(2)
        params += [2.0 * value.real, abs(value) ** 2]
    reals = np.sort(lam[lam.imag == 0].real)[::-1]
    for i in range(0, reals.size - 1, 2):
        sizes.append(2)
        params += [reals[i] + reals[i + 1], reals[i] * reals[i + 1]]
    if reals.size % 2:
        sizes.append(1)
        params.append(reals[-1])
    return _Blocks(tuple(sizes)), np.asarray(params, dtype=np.float64)


def _basis(blocks: _Blocks, params: np.ndarray, n_times: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``Φ`` ``(n_times, r)`` (row ``t``: ``e₁ᵀ M^t`` for each block ``M``, ``λ^t`` for 1×1) and
    its derivatives: ``D[:, e] = ∂Φ[:, col[e]]/∂p[par[e]]``, one column per pair that depends."""
    sizes = np.asarray(blocks.sizes)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    single, double = first[sizes == 1], first[sizes == 2]
    tau, delta = params[double], params[double + 1]
    phi = np.empty((n_times, params.size))
    deriv = np.empty((n_times, single.size + 4 * double.size))
    t = np.arange(n_times, dtype=np.float64)[:, None]
    lam = params[single][None, :]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        phi[:, single] = np.real(powers(lam[0] + 0j, t[:, 0]))
        lower = np.real(powers(lam[0] + 0j, np.maximum(t[:, 0] - 1.0, 0.0)))
    deriv[:, : single.size] = t * lower
    # 2×2 blocks, all at once: [a, b]_{t+1} = [a, b]_t M = [−δ b, a + τ b], and its derivatives
    state = np.zeros((2, double.size))
    state[0] = 1.0
    d_tau, d_delta = np.zeros_like(state), np.zeros_like(state)
    k = single.size
    for j in range(n_times):
        phi[j, double], phi[j, double + 1] = state
        deriv[j, k : k + double.size], deriv[j, k + double.size : k + 2 * double.size] = d_tau
        deriv[j, k + 2 * double.size :] = d_delta.ravel()
        a, b = state
        d_tau = np.stack([-delta * d_tau[1], d_tau[0] + tau * d_tau[1] + b])
        d_delta = np.stack([-delta * d_delta[1] - b, d_delta[0] + tau * d_delta[1]])
        state = np.stack([-delta * b, a + tau * b])
    par = np.concatenate([single, double, double, double + 1, double + 1])
    col = np.concatenate([single, double, double + 1, double, double + 1])
    return phi, deriv, par, col


def _varpro(coeffs: np.ndarray, times: np.ndarray, blocks: _Blocks,
            params0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimize ``‖T − Φ(p) Φ(p)⁺ T‖_F`` over the block parameters ``p`` (variable projection,
    Golub & Pereyra): the linear weights ``C = Φ⁺ T`` are eliminated, and the Jacobian of the
    projected residual ``ρ`` is ``−(P⊥ ∂Φ C + Φ⁺ᵀ ∂Φᵀ ρ)``. Returns ``(p, C)``."""
    n_times = int(times.max()) + 1
    cache: dict[bytes, tuple] = {}

    def solve(p: np.ndarray) -> tuple:
        key = p.tobytes()
        if key not in cache:
            cache.clear()
            phi, deriv, par, col = _basis(blocks, p, n_times)
            phi, deriv = phi[times], deriv[times]
            if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(deriv))):
                cache[key] = (None,) * 6
            else:
                u, sv, vt = np.linalg.svd(phi, full_matrices=False)
                keep = sv > sv[0] * 1e-13
                q = u[:, keep]
                pinv = (vt[keep].T / sv[keep]) @ q.T
                c = pinv @ coeffs
                cache[key] = (coeffs - phi @ c, c, q, pinv, deriv, (par, col))
        return cache[key]

    def residual(p: np.ndarray) -> np.ndarray:
        rho = solve(p)[0]
        return np.full(coeffs.size, 1e30) if rho is None else rho.ravel()

    def jacobian(p: np.ndarray) -> np.ndarray:
        rho, c, q, pinv, deriv, (par, col) = solve(p)
        if rho is None:
            return np.zeros((coeffs.size, p.size))
        orth = deriv - q @ (q.T @ deriv)
        terms = orth[:, None, :] * c[col].T[None, :, :]
        terms += pinv.T[:, col][:, None, :] * (rho.T @ deriv)[None, :, :]
        flat = terms.reshape(coeffs.size, -1)
        jac = np.zeros((coeffs.size, p.size))
        first = np.unique(par, return_index=True)[1]  # each parameter has one or two entries
        second = np.setdiff1d(np.arange(par.size), first)
        jac[:, par[first]] -= flat[:, first]
        jac[:, par[second]] -= flat[:, second]
        return jac

    method = "lm" if coeffs.size >= params0.size else "trf"
    result = least_squares(residual, params0, jac=jacobian, method=method, xtol=1e-12,
                           ftol=1e-12, gtol=1e-12, max_nfev=100 * (params0.size + 1))
    p = result.x if np.all(np.isfinite(result.x)) and solve(result.x)[0] is not None else params0
    return p, solve(p)[1]


def _block_eigen(blocks: _Blocks, params: np.ndarray, weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues, factors and complex weights ``(r, k)`` with ``Φ C = Re Σ factor·λ^t c``.

    A 2×2 block ``M = P D P⁻¹`` gives ``e₁ᵀ M^t C = Σ_i (e₁ᵀ P)_i λ_i^t (P⁻¹ C)_i``."""
    lams, factors, rows, i = [], [], [], 0
    for size in blocks.sizes:
        block = weights[i : i + size]
        if size == 1:
            lams.append(np.array([params[i] + 0j]))
            factors.append(np.ones(1))
            rows.append(block.astype(np.complex128))
        else:
            tau, delta = params[i], params[i + 1]
            lam, p, factor = paired_eig(np.array([[0.0, 1.0], [-delta, tau]]))
            if not np.linalg.cond(p) < 1e12:
                raise ValueError(f"optimized DMD converged to a repeated eigenvalue "
                                 f"{lam[0]:.6g} (a Jordan block, not a sum of modes λ^j ξ): "
                                 f"lower rank, or use solver='gram' or 'tls'")
            lams.append(lam)
            factors.append(factor)
            rows.append(p[0][:, None] * np.linalg.solve(p, block.astype(np.complex128)))
        i += size
    return np.concatenate(lams), np.concatenate(factors), np.concatenate(rows)


def _match(reference: np.ndarray, values: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """``values`` reordered within each block to lie nearest ``reference`` (bagged eigenvalues)."""
    out, i = values.copy(), 0
    for size in sizes:
        if size == 2:
            straight = abs(values[i] - reference[i]) + abs(values[i + 1] - reference[i + 1])
            swapped = abs(values[i] - reference[i + 1]) + abs(values[i + 1] - reference[i])
            if swapped < straight:
                out[i], out[i + 1] = values[i + 1], values[i]
        i += size
    return out


def fit_optimized(exact: Reduced, gram_fit: np.ndarray, root_data: np.ndarray,
                  bagging: Bagging | None = None) -> DMDFit:
    """Optimized DMD (and BOP-DMD with ``bagging.bags > 0``) from ``G`` (docs/theory.md §5.4).

    ``exact`` is the exact-DMD reduced problem (``dmd.reduced_from_gram``): its rank ``r``,
    chosen on the singular values of ``X`` (§6), and its eigenvalues start the fit. The POD
    coefficients ``T = V_r S_r`` of all snapshots (``G = V S² Vᵀ``) are fitted by the discrete-time
    model ``T[j] ≈ Σ_k λ_k^j c_kᵀ`` with real block parameters (``_Blocks``), started from exact
    DMD; the coefficients on the snapshots are ``Ξ[:, k] = V_r S_r⁻¹ c_k``. With bagging, each bag
    refits ``bag_size`` random rows of ``T`` from the full fit, and ``eigenvalue_std`` holds the
    spread ``sqrt(var Re λ + var Im λ)`` over the bags; the eigenvalues are those of the full fit.
    """
    r = exact.sigma.size
    s2, v = np.linalg.eigh(gram_fit)
    s, v = np.sqrt(np.clip(s2[::-1][:r], 0.0, None)), v[:, ::-1][:, :r]
    s = np.where(s > 0, s, 1.0)
    coeffs = v * s
    lam0 = paired_eig(exact.a_tilde)[0]
    blocks, params0 = _initial_blocks(lam0)
    with _one_blas_thread():  # small matrices: BLAS threads only spin (3x slower, measured)
        return _fit_blocks(coeffs, v, s, blocks, params0, root_data, exact, bagging)


def _fit_blocks(coeffs: np.ndarray, v: np.ndarray, s: np.ndarray, blocks: _Blocks,
                params0: np.ndarray, root_data: np.ndarray, exact: Reduced,
                bagging: Bagging | None) -> DMDFit:
    """The variable-projection fit (and the bags) of ``fit_optimized``."""
    n_rows = coeffs.shape[0]
    times = np.arange(n_rows)
    params, weights = _varpro(coeffs, times, blocks, params0)
    lam, factor, c = _block_eigen(blocks, params, weights)
    xi_coef = (v / s) @ c.T
    spread = None
    if bagging is not None and bagging.bags > 0:
        rng = np.random.default_rng(bagging.seed)
        size = bag_size(n_rows, bagging.fraction)
        samples = np.empty((bagging.bags, lam.size), dtype=np.complex128)
        for bag in range(bagging.bags):
            rows = np.sort(rng.choice(n_rows, size, replace=False))
            p_bag, w_bag = _varpro(coeffs[rows], rows, blocks, params)
            samples[bag] = _match(lam, _block_eigen(blocks, p_bag, w_bag)[0], blocks.sizes)
        spread = np.sqrt(np.var(samples.real, axis=0) + np.var(samples.imag, axis=0))
    return assemble(lam, xi_coef, factor, root_data, exact, spread)


def assemble(lam: np.ndarray, xi_coef: np.ndarray, factor: np.ndarray, root_data: np.ndarray,
             reduced: Reduced, spread: np.ndarray | None = None) -> DMDFit:
    """A ``DMDFit`` from eigenvalues and mode coefficients ``Ξ`` (``ξ_k = Wᵀ Ξ[:, k]``): unit modes
    ``ψ_k = ξ_k/b_k`` with ``b_k = ‖ξ_k‖`` (``R`` stands in for ``W``), ordered by ``|b_k|`` with
    each pair together, and the relative reconstruction error (as ``dmd.decompose``)."""
    m = xi_coef.shape[0] - 1
    b = np.linalg.norm(root_data @ xi_coef, axis=0).astype(np.complex128)
    groups = [[k] if factor[k] == 1.0 else [k, k + 1] for k in range(lam.size) if factor[k] != 0]
    groups.sort(key=lambda g: -abs(b[g[0]]))
    order = np.array([k for g in groups for k in g], dtype=int)
    lam, b, xi_coef, factor = lam[order], b[order], xi_coef[:, order], factor[order]
    spread = None if spread is None else spread[order]
    recon = np.real((powers(lam, np.arange(m + 1, dtype=np.float64)) * factor) @ xi_coef.T)
    residual = np.linalg.norm(root_data @ (np.eye(m + 1) - recon).T)
    error = float(residual / np.linalg.norm(root_data))
    return DMDFit(lam, b, xi_coef, factor, reduced.singular_values, lam.size, error,
                  reduced.choice, spread)
