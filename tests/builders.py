"""Builders of known trajectories, shared by the test files (import with ``from builders import``).

Each one has a closed-form answer the tests check against: geometric transients around a known
fixed point (docs/theory.md §3), and gradient descent on a quadratic (docs/theory.md §4).
"""

from __future__ import annotations

import math

import numpy as np

from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.trajectory import Trajectory


def decaying_trajectory(n, m, lams, rng, pair=None, offset=True, scale=1.0, times=None):
    """θ_t = θ* + scale·(Σ_k λ_k^t u_k + ρ^t (cos φt u + sin φt v)), orthogonal u's of norm √n.

    Evaluated at t = 0..m, or at the real ``times`` (a real λ < 0 then means |λ|^t cos πt).
    Returns (snapshots (len(t), n) float64, θ*, the true eigenvalues)."""
    n_dirs = len(lams) + (2 if pair else 0)
    basis = np.linalg.qr(rng.standard_normal((n, n_dirs)))[0] * math.sqrt(n)
    t = np.arange(m + 1, dtype=np.float64) if times is None else np.asarray(times, float)
    t = t[:, None]
    theta_star = rng.standard_normal(n) if offset else np.zeros(n)
    transient = sum(abs(lam) ** t * np.cos(np.pi * t * (lam < 0)) * basis[:, k]
                    for k, lam in enumerate(lams))
    true = [1.0 + 0j] if offset else []
    true += [complex(lam) for lam in lams]
    if pair:
        rho, phi = pair
        transient = transient + rho**t * (np.cos(phi * t) * basis[:, -2] +
                                          np.sin(phi * t) * basis[:, -1])
        true += [rho * np.exp(1j * phi), rho * np.exp(-1j * phi)]
    return theta_star + scale * transient, theta_star, np.array(true)


def gd_quadratic(n, m, lams, eta, rng, excited=None):
    """Full-batch GD on L = ½θᵀHθ − bᵀθ with H's eigenvalues h_k = (1 − λ_k)/η.

    ``excited``: number of excited directions (None: all). Returns snapshots, H, b, θ*."""
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    h = (1.0 - np.asarray(lams)) / eta
    hmat = (q * h) @ q.T
    b = rng.standard_normal(n)
    theta_star = np.linalg.solve(hmat, b)
    if excited is None:
        theta = rng.standard_normal(n)
    else:
        theta = theta_star + q[:, :excited] @ rng.uniform(1.0, 2.0, excited)
    snapshots = [theta]
    for _ in range(m):
        theta = theta - eta * (hmat @ theta - b)
        snapshots.append(theta)
    return np.array(snapshots), hmat, b, theta_star


def quadratic_gd_trajectory(n=6, steps=12, lr=0.1, seed=0) -> Trajectory:
    """Full-batch gradient descent on ½θᵀHθ − bᵀθ, stored with the recorder's conventions."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    h = q @ np.diag(np.linspace(0.5, 3.0, n)) @ q.T
    b = rng.standard_normal(n)
    theta = rng.standard_normal(n)
    snapshots, gradients = [theta.copy()], [np.zeros(n)]
    for _ in range(steps):
        g = h @ theta - b
        theta = theta - lr * g
        snapshots.append(theta.copy())
        gradients.append(g)  # gradients[j] produced snapshot j
    layout = ParamLayout(("w",), ((2, n // 2),), (True,))
    return Trajectory(np.array(snapshots), np.arange(steps + 1), layout,
                      gradients=np.array(gradients), metadata={"lr": lr, "momentum": 0.0,
                                                               "every": 1})
