"""Undoing an update that made parameters non-finite: ``Trainer(check_finite=True)``'s guard.

``LastFinite`` keeps the parameters and the optimizer's per-parameter state from before the
current step, tests the parameters after it, and copies everything back when they are not finite,
so that ``NonFiniteLossError`` can say truthfully that the model holds its last finite parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import is_numpy_namespace
from .optim import Optimizer

__all__ = ["LastFinite"]


class LastFinite:
    """The parameters and optimizer state from before the current step, to undo a bad update.

    ``save()`` copies them into buffers allocated once; ``finite_after_step()`` is the cheap test
    (one sum of squares per parameter; an overflow of that sum is confirmed or refuted by
    ``non_finite()``, the exact ``isfinite`` test); ``restore()`` copies everything back. The
    state is planned again whenever its keys change; its arrays keep their shapes (those of the
    parameters, for every optimizer of ``kooplearn_prune.optim``).
    """

    def __init__(self, optimizer: Optimizer, xp: Any) -> None:
        self.optimizer, self.xp = optimizer, xp
        self.numpy = is_numpy_namespace(xp)
        self.copies = [xp.empty_like(p.data) for p in optimizer.params]
        self.state: list[dict[str, Any]] = [{} for _ in optimizer.params]
        self.keys: list[tuple[str, ...]] = [() for _ in optimizer.params]
        #: per state: (its keys, the keys of arrays, the keys of scalars), None until planned
        self.plans: list[tuple[set[str], tuple[str, ...], tuple[str, ...]] | None] = \
            [None for _ in optimizer.params]
        self.counters: tuple[int, list[int]] = (0, [])

    def save(self) -> None:
        opt = self.optimizer
        for p, copy in zip(opt.params, self.copies):
            copy[...] = p.data
        for i, state in enumerate(opt.state):
            if state:
                self._save_state(i, state)
            elif self.keys[i]:
                self.keys[i], self.plans[i] = (), None
        self.counters = (opt.step_count, list(getattr(opt, "_masked_version", ())))

    def _save_state(self, i: int, state: dict[str, Any]) -> None:
        saved, plan = self.state[i], self.plans[i]
        if plan is None or state.keys() != plan[0]:  # new keys (the first step): plan again
            for key, value in state.items():
                if hasattr(value, "shape") and \
                        getattr(saved.get(key), "shape", None) != value.shape:
                    saved[key] = self.xp.empty_like(value)
            arrays = tuple(k for k, v in state.items() if hasattr(v, "shape"))
            plan = self.plans[i] = (set(state), arrays, tuple(k for k in state if k not in arrays))
            self.keys[i] = tuple(state)
        for key in plan[1]:
            saved[key][...] = state[key]
        for key in plan[2]:
            saved[key] = state[key]  # a step count or another immutable scalar

    def finite_after_step(self) -> bool:
        if self.numpy:
            vdot, total = np.vdot, 0.0
            for p in self.optimizer.params:
                total += vdot(p.data, p.data)  # overflows only for |θ| ~ 1e19 in float32
            return math.isfinite(total)
        xp = self.xp
        sums = [xp.sum(p.data * p.data) for p in self.optimizer.params]
        return math.isfinite(float(sum(sums[1:], sums[0])))

    def non_finite(self) -> list[str]:
        """The names of the parameters holding inf or NaN (exact)."""
        xp = self.xp
        return [name for name, p in zip(self.optimizer.names, self.optimizer.params)
                if not bool(xp.all(xp.isfinite(p.data)))]

    def restore(self) -> None:
        opt = self.optimizer
        for p, copy in zip(opt.params, self.copies):
            p.data[...] = copy
        for state, saved, keys in zip(opt.state, self.state, self.keys):
            for key in [k for k in state if k not in keys]:
                del state[key]
            for key in keys:
                value = saved[key]
                if hasattr(value, "shape"):
                    if key in state and hasattr(state[key], "shape"):
                        state[key][...] = value
                    else:
                        state[key] = self.xp.asarray(value, copy=True)
                else:
                    state[key] = value
        opt.step_count = self.counters[0]
        if hasattr(opt, "_masked_version"):
            opt._masked_version[:] = self.counters[1]
