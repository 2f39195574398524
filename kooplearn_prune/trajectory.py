"""Recorded parameter trajectories and their files (docs/theory.md §2).

``Trajectory`` holds the snapshots ``W`` as rows, ``(m+1, n)``, with the optimizer steps they
were taken at, optional gradients and applied updates, the ``ParamLayout`` and the training
metadata (a ``TrainingMetadata``); ``save``/``load`` write and read one ``.npz`` file atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ._io import save_npz_atomic
from .backend import asarray, to_numpy
from .layout import ParamLayout
from .metadata import TrainingMetadata

__all__ = ["Trajectory"]


class Trajectory:
    """Recorded snapshots of θ: ``snapshots[j] = θ_{steps[j]}``, ``(m+1, n)`` (docs/theory.md §2).

    ``gradients`` and ``updates`` (optional, same shape) hold the mini-batch gradient used at that
    step and the update the optimizer applied. ``metadata`` is a ``TrainingMetadata`` (optimizer,
    ``lr``, ``every``, ...), which the equivalence report uses to explain gaps between Koopman and
    classical pruning; a plain dict is accepted and converted (unknown keys raise).
    """

    def __init__(
        self,
        snapshots: Any,
        steps: Sequence[int] | np.ndarray | None = None,
        layout: ParamLayout | None = None,
        *,
        gradients: Any = None,
        updates: Any = None,
        metadata: TrainingMetadata | Mapping[str, Any] | None = None,
    ) -> None:
        shape = tuple(getattr(snapshots, "shape", ()))
        if len(shape) != 2:
            raise ValueError(
                f"snapshots must be a 2-D array (n_snapshots, n_params) with time as rows, "
                f"got shape {shape}"
            )
        if layout is None:
            layout = ParamLayout(("theta",), ((shape[1],),), (True,))
        layout.check_vector(snapshots, "snapshots")
        steps_arr = np.arange(shape[0]) if steps is None else np.asarray(steps, dtype=np.int64)
        if steps_arr.shape != (shape[0],):
            raise ValueError(f"steps must have length {shape[0]} (one per snapshot), "
                             f"got shape {steps_arr.shape}")
        for what, arr in (("gradients", gradients), ("updates", updates)):
            if arr is not None and tuple(arr.shape) != shape:
                raise ValueError(f"{what} must have the snapshots' shape {shape}, "
                                 f"got {tuple(arr.shape)}")
        metadata = TrainingMetadata.coerce(metadata)
        self.snapshots = snapshots
        self.steps = steps_arr
        self.layout = layout
        self.gradients = gradients
        self.updates = updates
        self.metadata = metadata

    @property
    def n_snapshots(self) -> int:
        """``m + 1``."""
        return int(self.snapshots.shape[0])

    @property
    def n_params(self) -> int:
        """``n``."""
        return int(self.snapshots.shape[1])

    @property
    def last(self) -> Any:
        """The last snapshot ``θ_last`` (a row view)."""
        return self.snapshots[-1, :]

    def window(self, start: int = 0, stop: int | None = None) -> Trajectory:
        """The snapshots with index ``start <= j < stop`` (views, no copy)."""
        sl = slice(start, stop)
        return Trajectory(
            self.snapshots[sl, :], self.steps[sl], self.layout,
            gradients=None if self.gradients is None else self.gradients[sl, :],
            updates=None if self.updates is None else self.updates[sl, :],
            metadata=self.metadata,
        )

    def __repr__(self) -> str:
        extras = [k for k in ("gradients", "updates") if getattr(self, k) is not None]
        return (f"Trajectory(m+1={self.n_snapshots}, n={self.n_params}, "
                f"steps={self.steps[0] if len(self.steps) else '-'}..."
                f"{self.steps[-1] if len(self.steps) else '-'}, "
                f"extras={extras}, tensors={len(self.layout.names)})")

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trajectory to one ``.npz`` file, atomically (temp file + rename)."""
        arrays = {
            "snapshots": to_numpy(self.snapshots),
            "steps": self.steps,
            "layout": np.array(json.dumps(self.layout.to_dict())),
            "metadata": np.array(json.dumps(self.metadata.to_dict())),
        }
        for key in ("gradients", "updates"):
            if getattr(self, key) is not None:
                arrays[key] = to_numpy(getattr(self, key))
        return save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, xp: ModuleType | None = None) -> Trajectory:
        """Read a trajectory written by ``save`` onto backend ``xp`` (default: current backend)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no trajectory file at {path}")
        with np.load(path, allow_pickle=False) as data:
            missing = {"snapshots", "steps", "layout", "metadata"} - set(data.files)
            if missing:
                raise ValueError(f"{path} is not a kooplearn_prune trajectory (missing "
                                 f"{sorted(missing)})")
            layout = ParamLayout.from_dict(json.loads(str(data["layout"])))
            try:  # both the record's JSON and the older plain-dict format
                metadata = TrainingMetadata.from_dict(json.loads(str(data["metadata"])))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: {err}") from err
            return cls(
                asarray(data["snapshots"], xp=xp),
                data["steps"],
                layout,
                gradients=asarray(data["gradients"], xp=xp) if "gradients" in data.files else None,
                updates=asarray(data["updates"], xp=xp) if "updates" in data.files else None,
                metadata=metadata,
            )

