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

from ._archive import read_npz_checked, save_npz_checked
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
        """Write the trajectory to one ``.npz`` file, atomically (temp file + rename).

        The zip's comment holds a manifest (format version, each array's shape, dtype and CRC-32)
        that ``load`` checks, so a damaged or incomplete file is an error, never silently less
        data; ``np.load`` sees exactly the arrays saved.
        """
        arrays = {
            "snapshots": to_numpy(self.snapshots),
            "steps": self.steps,
            "layout": np.array(json.dumps(self.layout.to_dict())),
            "metadata": np.array(json.dumps(self.metadata.to_dict())),
        }
        for key in ("gradients", "updates"):
            if getattr(self, key) is not None:
                arrays[key] = to_numpy(getattr(self, key))
        return save_npz_checked(path, arrays, FILE_FORMAT, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike, xp: ModuleType | None = None) -> Trajectory:
        """Read a trajectory written by ``save`` onto backend ``xp`` (default: current backend).

        Every array is read and checked (the manifest's checksums, shapes and dtypes; files from
        before the manifest, format version 1, are checked for structure only). A missing file is
        a ``FileNotFoundError``; anything else wrong is a ``ValueError`` naming the path.
        """
        path = Path(path)
        arrays, _ = read_npz_checked(path, "trajectory", FILE_FORMAT, FORMAT_VERSION)
        _check_members(path, arrays)
        try:  # metadata: both the record's JSON and the older plain-dict format
            layout = ParamLayout.from_dict(_json_member(path, arrays, "layout"))
            metadata = TrainingMetadata.from_dict(_json_member(path, arrays, "metadata"))
            snapshots, steps = arrays["snapshots"], arrays["steps"]
            _check_arrays(snapshots, steps, arrays.get("gradients"), arrays.get("updates"))
            trajectory = cls(snapshots, steps, layout, gradients=arrays.get("gradients"),
                             updates=arrays.get("updates"), metadata=metadata)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            if str(path) in str(err):
                raise
            raise ValueError(f"trajectory file {path}: {_message(err)}") from err
        for name in ("snapshots", "gradients", "updates"):
            if getattr(trajectory, name) is not None:
                setattr(trajectory, name, asarray(getattr(trajectory, name), xp=xp))
        return trajectory


FILE_FORMAT = "kooplearn_prune.trajectory"
FORMAT_VERSION = 2  # 1: no manifest (no checksums); 2: a manifest with each array's CRC-32
_REQUIRED = ("snapshots", "steps", "layout", "metadata")
_KNOWN = frozenset(_REQUIRED + ("gradients", "updates"))


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return f"missing key {err.args[0]!r}"
    return str(err)


def _check_members(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The archive holds a trajectory's arrays and no others."""
    missing = sorted(set(_REQUIRED) - set(arrays))
    if missing:
        raise ValueError(f"{path} is not a kooplearn_prune trajectory (missing {missing})")
    unexpected = sorted(set(arrays) - _KNOWN)
    if unexpected:
        raise ValueError(f"trajectory file {path} is damaged or not a trajectory: unexpected "
                         f"arrays {unexpected}")


def _json_member(path: Path, arrays: dict[str, np.ndarray], name: str) -> Any:
    array = arrays[name]
    if array.shape != () or array.dtype.kind != "U":
        raise ValueError(f"trajectory file {path}: {name!r} is not a JSON string (shape "
                         f"{array.shape}, dtype {array.dtype})")
    try:
        value = json.loads(str(array))
    except ValueError as err:
        raise ValueError(f"trajectory file {path}: {name!r} is not valid JSON ({err})") from None
    if name == "layout" and not isinstance(value, dict):
        raise ValueError(f"trajectory file {path}: 'layout' is not a JSON object")
    return value


def _check_arrays(snapshots: np.ndarray, steps: np.ndarray, *extras: np.ndarray | None) -> None:
    """Shapes and dtypes consistent with each other (the layout is checked by ``Trajectory``)."""
    if snapshots.ndim != 2 or snapshots.dtype.kind not in "fc":
        raise ValueError(f"snapshots must be a 2-D float array, got shape {snapshots.shape} and "
                         f"dtype {snapshots.dtype}")
    if steps.dtype.kind not in "iu":
        raise ValueError(f"steps must be integers, got dtype {steps.dtype}")
    for name, extra in zip(("gradients", "updates"), extras):
        if extra is not None and extra.dtype.kind not in "fc":
            raise ValueError(f"{name} must be a float array, got dtype {extra.dtype}")
