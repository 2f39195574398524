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
           "plot_overlap_vs_epoch", "save_figure", "coinciding_curves", "place_legend",
           "COINCIDE_TOL"]


def _axes(ax: Any, figsize: tuple[float, float] = (5, 4)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_spectrum(eigenvalues: Any, amplitudes: Any = None, *, ax: Any = None,
                  title: str = "Koopman spectrum", highlight: int | None = None,
                  note: str | None = None, colorbar: bool = True) -> Any:
    """Eigenvalues ``λ_k`` in the complex plane with the unit circle (docs/theory.md §3).

    Colour encodes ``|λ_k|`` (explained by a colour bar unless ``colorbar=False``); marker size
    follows ``|b_k|`` when ``amplitudes`` are given; ``highlight`` circles the stationary mode
    ``k*``; ``note`` is printed under the axes (what the reader should make of the dots).
    Inside the circle: decaying transients; on it: stationary or oscillating; outside: growth.
    """
    from matplotlib.patches import Circle

    ax = _axes(ax, (5.2, 4.5))
    lam = np.asarray(to_numpy(getattr(eigenvalues, "eigenvalues_", eigenvalues)), dtype=complex)
    if amplitudes is None and hasattr(eigenvalues, "amplitudes_"):
        amplitudes = eigenvalues.amplitudes_
    ax.add_patch(Circle((0.0, 0.0), 1.0, fill=False, edgecolor="0.6", lw=1, ls="--",
                        label="unit circle"))
    sizes, label = 30.0, r"$\lambda_k$"
    if amplitudes is not None:
        amp = np.abs(np.asarray(to_numpy(amplitudes)))
        sizes = 20 + 200 * amp / max(amp.max(), 1e-300)
        label = r"$\lambda_k$ (area grows with $|b_k|$)"
    modulus = np.abs(lam)
    points = ax.scatter(lam.real, lam.imag, s=sizes, c=modulus, cmap="viridis",
                        vmin=_colour_floor(modulus), vmax=max(1.0, float(modulus.max(initial=1.0))),
                        edgecolor="k", lw=0.5, zorder=3, label=label)
    if colorbar:
        ax.figure.colorbar(points, ax=ax, shrink=0.8, pad=0.03,
                           label=r"$|\lambda_k|$ (1: no decay)")
    if highlight is not None:
        ax.scatter([lam[highlight].real], [lam[highlight].imag], s=250, facecolor="none",
                   edgecolor="crimson", lw=2, zorder=4, label=r"stationary $\lambda_{k^*}$")
    ax.axhline(0, color="0.85", lw=0.8)
    ax.axvline(0, color="0.85", lw=0.8)
    ax.set_aspect("equal")
    ax.set_xlabel(r"Re $\lambda$")
    ax.set_ylabel(r"Im $\lambda$")
    ax.set_title(title)
    # below the axes: inside, any spot can hide an eigenvalue (the circle fills the frame)
    place_legend(ax, "below", ncol=3, columnspacing=1.0, handletextpad=0.4)
    if note:
        ax.text(0.5, -0.25, note, transform=ax.transAxes, ha="center", va="top", fontsize=8,
                wrap=True)
    return ax


def _colour_floor(modulus: np.ndarray) -> float:
    """Lower end of the |λ| colour scale: 0, or a tenth below the smallest |λ| when all are
    large, so that eigenvalues crowded near the circle still get different colours."""
    if modulus.size == 0:
        return 0.0
    return float(max(0.0, np.floor(10 * modulus.min()) / 10 - 0.1))


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


#: Two accuracy curves closer than this at every compression are drawn on top of each other;
#: the figure says so (accuracy as a fraction: 0.01 is one percentage point, under 2 % of the
#: height of a 0-1 axis, less than a marker).
COINCIDE_TOL = 0.01


def coinciding_curves(results: Mapping[str, Mapping[float, float]],
                      tol: float = COINCIDE_TOL) -> dict[str, tuple[str, float]]:
    """``{method: (earlier_method, max_gap)}`` for each curve that lies within ``tol`` of an
    earlier one at every shared x (and shares at least one x): the line it hides under, or that
    hides it. ``max_gap`` is the largest absolute difference."""
    found: dict[str, tuple[str, float]] = {}
    names = list(results)
    for j, name in enumerate(names):
        for earlier in names[:j]:
            shared = sorted(set(results[name]) & set(results[earlier]))
            if not shared:
                continue
            gap = max(abs(float(results[name][x]) - float(results[earlier][x])) for x in shared)
            if gap <= tol:
                found[name] = (earlier, gap)
                break
    return found


def plot_accuracy_vs_compression(results: Mapping[str, Mapping[float, float]] | Sequence[dict],
                                 *, ax: Any = None, baseline: float | None = None,
                                 title: str = "Accuracy versus compression",
                                 coincide_tol: float = COINCIDE_TOL,
                                 legend: str | None = "best") -> Any:
    """One line per method: test accuracy against compression (log2 axis).

    ``results`` is ``{method: {compression: accuracy}}`` or rows with keys ``method``,
    ``compression``, ``accuracy``. ``baseline`` draws the unpruned accuracy. A curve within
    ``coincide_tol`` of an earlier one at every compression is hidden under it; its legend entry
    says so (``kmp = magnitude ±0.003``) and the legend's title states the tolerance.
    ``legend``: a matplotlib ``loc`` ("best" avoids the data), "outside" (right of the axes) or
    None (no legend, e.g. when a neighbouring panel has it).
    """
    from matplotlib.ticker import FuncFormatter

    ax = _axes(ax, (6, 4))
    if not isinstance(results, Mapping):
        table: dict[str, dict[float, float]] = {}
        for row in results:
            table.setdefault(row["method"], {})[float(row["compression"])] = row["accuracy"]
        results = table
    hidden = coinciding_curves(results, coincide_tol)
    for method, curve in results.items():
        xs = sorted(curve)
        label = method
        if method in hidden:
            other, gap = hidden[method]
            label = f"{method} = {other} (±{gap:.3f})"
        ax.plot(xs, [curve[x] for x in xs], "o-", label=label)
    if baseline is not None:
        ax.axhline(baseline, color="0.3", ls=":", lw=1, label="unpruned")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.set_xlabel("compression (prunable / remaining)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    if legend is not None:
        legend_title = (f"'a = b': a's line covers b's\n(within ±{coincide_tol:g} at every "
                        f"compression)") if hidden else None
        place_legend(ax, legend, title=legend_title)
    return ax


def place_legend(ax: Any, where: str = "best", **kwargs: Any) -> Any:
    """A legend that does not cover the data: ``where="outside"`` puts it right of the axes,
    ``"below"`` under the x label, anything else is a matplotlib ``loc`` ("best" picks the
    spot with the fewest data points under it)."""
    options = {"fontsize": 8, "title_fontsize": 8, "framealpha": 0.9, **kwargs}
    if where == "below":
        return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), borderaxespad=0.0,
                         **options)
    if where == "outside":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                         **options)
    return ax.legend(loc=where, **options)


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
    place_legend(ax, "best")
    return ax


def save_figure(fig_or_ax: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") and not hasattr(fig_or_ax, "savefig") \
        else fig_or_ax
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")  # keeps outside legends
    plt.close(fig)
    return Path(path)
