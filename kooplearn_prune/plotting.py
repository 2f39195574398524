"""Pictures of the theory: the spectrum on the unit circle, mode magnitudes, accuracy versus
compression, and mask overlap versus training window.

Every function draws on a given matplotlib ``Axes`` (or a new one) and returns it, so notebooks
can compose figures; ``save_figure`` writes PNGs atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path
from .backend import to_numpy

__all__ = ["plot_spectrum", "plot_mode_magnitudes", "plot_accuracy_vs_compression",
           "plot_overlap_vs_epoch", "save_figure"]


def _axes(ax: Any, figsize: tuple[float, float] = (5, 4)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_spectrum(eigenvalues: Any, amplitudes: Any = None, *, ax: Any = None,
                  title: str = "Koopman spectrum", highlight: int | None = None) -> Any:
    """Eigenvalues ``λ_k`` in the complex plane with the unit circle (docs/theory.md §3).

    Marker size follows ``|b_k|`` when ``amplitudes`` are given; ``highlight`` circles the
    stationary mode ``k*``. Inside the circle: decaying transients; on it: stationary or
    oscillating; outside: growth.
    """
    ax = _axes(ax, (4.5, 4.5))
    lam = np.asarray(to_numpy(getattr(eigenvalues, "eigenvalues_", eigenvalues)), dtype=complex)
    if amplitudes is None and hasattr(eigenvalues, "amplitudes_"):
        amplitudes = eigenvalues.amplitudes_
    theta = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(theta), np.sin(theta), color="0.6", lw=1, ls="--", label="unit circle")
    sizes = 30.0
    if amplitudes is not None:
        amp = np.abs(np.asarray(to_numpy(amplitudes)))
        sizes = 20 + 200 * amp / max(amp.max(), 1e-300)
    ax.scatter(lam.real, lam.imag, s=sizes, c=np.abs(lam), cmap="viridis", vmin=0,
               vmax=max(1.0, float(np.abs(lam).max(initial=1.0))), edgecolor="k", lw=0.5,
               zorder=3, label=r"$\lambda_k$")
    if highlight is not None:
        ax.scatter([lam[highlight].real], [lam[highlight].imag], s=250, facecolor="none",
                   edgecolor="crimson", lw=2, zorder=4, label=r"stationary $\lambda_{k^*}$")
    ax.axhline(0, color="0.85", lw=0.8)
    ax.axvline(0, color="0.85", lw=0.8)
    ax.set_aspect("equal")
    ax.set_xlabel(r"Re $\lambda$")
    ax.set_ylabel(r"Im $\lambda$")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    return ax


def plot_mode_magnitudes(eigenvalues: Any, amplitudes: Any, *, ax: Any = None) -> Any:
    """``|b_k|`` against ``|λ_k|``: which modes carry the trajectory, and how fast they decay."""
    ax = _axes(ax)
    lam = np.abs(np.asarray(to_numpy(eigenvalues)))
    amp = np.abs(np.asarray(to_numpy(amplitudes)))
    ax.semilogy(lam, np.maximum(amp, 1e-300), "o")
    ax.axvline(1.0, color="crimson", lw=1, ls="--")
    ax.set_xlabel(r"$|\lambda_k|$")
    ax.set_ylabel(r"amplitude $|b_k|$")
    ax.set_title("Mode amplitudes")
    return ax


def plot_accuracy_vs_compression(results: Mapping[str, Mapping[float, float]] | Sequence[dict],
                                 *, ax: Any = None, baseline: float | None = None,
                                 title: str = "Accuracy versus compression") -> Any:
    """One line per method: test accuracy against compression (log2 axis).

    ``results`` is ``{method: {compression: accuracy}}`` or rows with keys ``method``,
    ``compression``, ``accuracy``. ``baseline`` draws the unpruned accuracy.
    """
    ax = _axes(ax, (6, 4))
    if not isinstance(results, Mapping):
        table: dict[str, dict[float, float]] = {}
        for row in results:
            table.setdefault(row["method"], {})[float(row["compression"])] = row["accuracy"]
        results = table
    for method, curve in results.items():
        xs = sorted(curve)
        ax.plot(xs, [curve[x] for x in xs], "o-", label=method)
    if baseline is not None:
        ax.axhline(baseline, color="0.3", ls=":", lw=1, label="unpruned")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("compression (prunable / remaining)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_overlap_vs_epoch(epochs: Sequence[float], curves: Mapping[str, Sequence[float]], *,
                          ax: Any = None, title: str = "Mask overlap with the converged mask",
                          ylabel: str = "overlap of kept sets") -> Any:
    """Overlap (docs/theory.md §13) of each method's mask with a reference mask, per window."""
    from matplotlib.ticker import MaxNLocator

    ax = _axes(ax, (6, 4))
    for label, values in curves.items():
        ax.plot(list(epochs), list(values), "o-", label=label)
    ax.set_xlabel("training window (epoch)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def save_figure(fig_or_ax: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") and not hasattr(fig_or_ax, "savefig") \
        else fig_or_ax
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)
