"""Checks for the exercises of notebook 02 (training and recording)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy
from .verdict import as_float_array, is_missing, missing, right, wrong

__all__ = ["snapshot_steps", "last_bias", "learning_rate"]


def snapshot_steps(answer: Any, traj: Any, *, strict: bool | None = None) -> Any:
    """02.1: the optimizer steps of the recorded rows, from EPOCHS, EVERY and the batches."""
    ex = "02.1"
    if is_missing(answer):
        return missing(ex, "steps", "np.arange(first, last + 1, EVERY) with the right ends",
                       strict=strict)
    got = np.asarray(answer).ravel()
    want = np.asarray(traj.steps)
    if got.shape == want.shape and np.array_equal(got, want):
        return right(ex, f"{want.size} rows at steps {want[0]}, {want[1]}, … {want[-1]}.",
                     strict=strict)
    if got.size and got.size == want.size - 1 and np.array_equal(got, want[1:]):
        hint = "the recorder also keeps θ_0, the parameters before the first step (step 0)"
    elif got.size and got[-1] > want[-1]:
        hint = ("training runs EPOCHS × steps_per_epoch optimizer steps; the last recorded step "
                "is the last multiple of EVERY that training reaches")
    else:
        hint = "steps are 0, EVERY, 2·EVERY, … up to the total number of optimizer steps"
    return wrong(ex, f"{got.size} steps ({got[:3]} … {got[-1:]}) versus {want.size} recorded "
                 f"({want[:3]} … {want[-1:]}).", hint, strict=strict)


def last_bias(answer: Any, traj: Any, *, strict: bool | None = None) -> Any:
    """02.2: the output layer's bias ``"2.bias"`` at the last recorded snapshot."""
    ex = "02.2"
    if is_missing(answer):
        return missing(ex, "bias", "layout.unflatten(one row of the snapshots)['2.bias']",
                       strict=strict)
    got = as_float_array(answer)
    rows = to_numpy(traj.snapshots)
    block = traj.layout.slice_of("2.bias")
    want = rows[-1, block].astype(np.float64)
    if got is not None and got.shape == want.shape and np.array_equal(got, want):
        return right(ex, f"the {want.size} biases of the last snapshot.", strict=strict)
    if got is not None and got.shape == want.shape and np.array_equal(got, rows[0, block]):
        hint = "that is the first snapshot (θ_0); the last one is row -1 (traj.last)"
    elif got is None or got.shape != want.shape:
        hint = (f"the bias has shape {want.shape}; take '2.bias', not a weight, "
                f"e.g. traj.layout.slice_of('2.bias')")
    else:
        hint = "take row -1 of traj.snapshots and the columns traj.layout.slice_of('2.bias')"
    return wrong(ex, "these are not the output biases of the last snapshot.", hint,
                 strict=strict)


def learning_rate(answer: Any, traj: Any, *, strict: bool | None = None) -> Any:
    """02.3: η estimated from the recorded updates and gradients by least squares."""
    ex = "02.3"
    if is_missing(answer):
        return missing(ex, "eta", "minimise ‖u + η g‖² over η: η = −⟨u, g⟩ / ⟨g, g⟩",
                       strict=strict)
    u = to_numpy(traj.updates)[1:].astype(np.float64)
    g = to_numpy(traj.gradients)[1:].astype(np.float64)
    want = -float(np.sum(u * g) / np.sum(g * g))
    got = float(as_float_array(answer))
    if np.isclose(got, want, rtol=1e-3):
        return right(ex, f"η ≈ {want:.6f}; the optimizer's metadata says {traj.metadata.lr}.",
                     strict=strict)
    hint = ("the update is MINUS η times the gradient, so η = −⟨u, g⟩/⟨g, g⟩"
            if np.isclose(got, -want, rtol=1e-3) else
            "skip row 0 (no update yet) and use all other rows: η = −⟨u, g⟩ / ⟨g, g⟩")
    return wrong(ex, f"got {got:.6g}, the least-squares estimate is {want:.6g}.", hint,
                 strict=strict)
