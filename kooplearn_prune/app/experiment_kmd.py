"""The KMD of a recorded window as an experiment fits it, and what a run records about it.

Both runners (the native MLP in ``experiment``, PyTorch models in ``torch_study``) fit every
window's KMD here, with the config's ``[koopman] solver`` and ``rank`` (docs/theory.md §5, §6),
and take the window's own magnitude masks here (the same-window reference of every run's
``overlap_with_window_magnitude``, docs/theory.md §13).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..koopman import KMD
from ..methods import method_mask, method_scores
from ..trajectory import Trajectory
from .experiment_torch_config import kmd_rank

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .experiment_config import ExperimentConfig

__all__ = ["fit_window_kmd", "kmd_info", "window_magnitude_masks"]


def fit_window_kmd(config: ExperimentConfig, window: Trajectory) -> KMD:
    """``KMD(rank=[koopman] rank, solver=[koopman] solver)`` fitted to ``window``."""
    return KMD(rank=kmd_rank(config.kmd_rank), solver=config.kmd_solver).fit(window)


def kmd_info(kmd: KMD | None, method: str) -> dict[str, Any] | None:
    """The KMD's rank and solver, and for KMP its fixed-point diagnostics (docs/theory.md §7)."""
    if kmd is None or method not in ("kmp", "kgp"):
        return None
    info: dict[str, Any] = {"rank": int(kmd.rank_), "solver": kmd.solver_}
    fp = getattr(kmd, "fixed_point_info_", None)
    if method == "kmp" and fp is not None:
        info.update({"fixed_point_reliable": bool(fp.reliable),
                     "distance_from_one": fp.distance_from_one,
                     "growing_amplitude_share": fp.growing_amplitude_share})
    return info


def window_magnitude_masks(window: Trajectory) -> Callable[[float], Any]:
    """Sparsity → the ``magnitude`` (GMP) mask of ``window``'s last snapshot, cached."""
    scores, masks = method_scores("magnitude", window), {}

    def mask(sparsity: float) -> Any:
        if sparsity not in masks:
            masks[sparsity] = method_mask("magnitude", scores, sparsity, window)
        return masks[sparsity]
    return mask
