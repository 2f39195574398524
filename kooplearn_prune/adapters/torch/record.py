"""Recording a ``torch.nn.Module``'s training as a ``Trajectory`` (THEORY.md §2, snapshots ``W``).

``TorchRecorder`` copies the *effective* parameters (mask applied) into row ``j`` of a
preallocated ``(rows, n)`` torch buffer every ``every`` optimizer steps inside a window, either
from an optimizer step post-hook (``attach(optimizer)``) or from explicit ``recorder.step()``
calls in a hand-written loop. ``trajectory()`` hands the rows to kooplearn_prune without a copy
(``tensor.numpy()`` on the CPU, DLPack to CuPy on CUDA) as the same ``Trajectory`` and
``ParamLayout`` a native model produces, so the KMD and every score work unchanged.

Conventions (those of ``kooplearn_prune.trajectory.TrajectoryRecorder``): ``t`` counts the
optimizer steps seen since the recorder was created (plus ``step_offset``); ``snapshots[j] = θ_t``
with ``t = steps[j]``; ``gradients[j]`` is the gradient the step producing snapshot ``j`` used
(zero for the snapshot taken when recording begins).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ...layout import ParamLayout
from ...trajectory import Trajectory
from .params import (
    TensorRef,
    check_layout,
    effective_value,
    nn,
    select_parameters,
    to_backend,
    torch,
)

__all__ = ["TorchRecorder"]

_OPTIMIZER_KEYS = ("lr", "momentum", "dampening", "nesterov", "betas", "eps", "weight_decay",
                   "alpha", "amsgrad")


def _check_int(value: Any, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}")
    return value


class TorchRecorder:
    """Preallocated recorder of θ_t for any ``torch.nn.Module`` (THEORY.md §2, rows of ``W``).

    ``every``: optimizer steps between snapshots; snapshots are taken at
    ``t = start, start + every, ...`` up to ``stop`` (inclusive). The buffer has
    ``(stop - start) // every + 1`` rows, or ``capacity`` rows when ``stop=None`` (then recording
    ends, with a warning, when the buffer is full). ``prunable``/``non_prunable`` choose the
    tensors (see ``select_parameters``); ``layout`` instead imposes an existing layout (checked
    against the model). ``device="model"`` keeps the buffer on the parameters' device,
    ``"host"`` in CPU memory. ``record_gradients`` also stores each step's gradient.

    Use ``with recorder.attach(optimizer): ...`` (hooked) or ``recorder.attach()`` and call
    ``recorder.step()`` after every ``optimizer.step()``; ``recorder.trajectory()`` returns the
    recorded window.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, start: int = 0,
                 stop: int | None = None, capacity: int | None = None,
                 prunable: Iterable[str] | Callable[[str, Any], bool] | None = None,
                 non_prunable: str = "record", layout: ParamLayout | None = None,
                 record_gradients: bool = False, device: Any = "model", dtype: Any = None,
                 step_offset: int = 0) -> None:
        self.every = _check_int(every, "every", 1)
        self.start = _check_int(start, "start", 0)
        self.step_offset = _check_int(step_offset, "step_offset", 0)
        if stop is not None and (_check_int(stop, "stop", 0) < start):
            raise ValueError(f"stop={stop} must be >= start={start}")
        if stop is None and capacity is None:
            raise ValueError("give stop= (the last optimizer step to record) or capacity= (how "
                             "many snapshots to preallocate) so the buffer can be allocated once")
        rows = (stop - start) // every + 1 if stop is not None else 0
        if capacity is not None:
            rows = _check_int(capacity, "capacity", 1) if stop is None else min(rows, capacity)
        if layout is None:
            self.layout, self._refs = select_parameters(model, prunable, non_prunable)
        else:
            if prunable is not None:
                raise ValueError("give either layout= or prunable=, not both (the layout already "
                                 "says which tensors are prunable)")
            self._refs = check_layout(model, layout)
            self.layout = layout
        self.model = model
        self.stop, self.rows = stop, rows
        self.record_gradients = bool(record_gradients)
        first = self._refs[0].param
        self.dtype = first.dtype if dtype is None else dtype
        if not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {self.dtype}")
        self.device = self._resolve_device(device, first)
        n = self.layout.size
        self._snapshots = torch.zeros((rows, n), dtype=self.dtype, device=self.device)
        self._gradients = (torch.zeros((rows, n), dtype=self.dtype, device=self.device)
                           if self.record_gradients else None)
        self.steps: list[int] = []
        self.t = step_offset
        self.metadata: dict[str, Any] = {"framework": "torch", "every": self.every,
                                         "device": str(first.device),
                                         "buffer_device": str(self.device),
                                         "dtype": str(self.dtype).replace("torch.", "")}
        self._attached = False
        self._optimizer: Any = None
        self._handle: Any = None
        self._full_warned = False

    @staticmethod
    def _resolve_device(device: Any, first: torch.Tensor) -> torch.device:
        if device == "model":
            return first.device
        if device == "host":
            return torch.device("cpu")
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be 'model', 'host' or a torch device, got "
                             f"{device!r}") from err

    # ------------------------------------------------------------------ attach / detach
    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> TorchRecorder:
        """Begin recording: take the snapshot at the current step if wanted, hook ``optimizer``.

        Without an optimizer, call ``recorder.step()`` after each ``optimizer.step()``.
        Returns the recorder, which is also a context manager that detaches on exit.
        """
        if self._attached:
            raise RuntimeError("the recorder is already attached; call detach() first")
        if optimizer is not None:
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                                f"{type(optimizer).__name__}")
            owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if not any(id(r.param) in owned for r in self._refs):
                raise ValueError("the optimizer updates none of the recorded tensors; pass the "
                                 "optimizer of this model")
            self.metadata.update(self._optimizer_metadata(optimizer))
        self._attached = True
        if self._wanted(self.t) and not self.steps:
            self._record(self.t, gradient=False)
            self.metadata["first_gradient_row"] = 1
        if optimizer is not None:
            self._optimizer = optimizer
            self._handle = optimizer.register_step_post_hook(self._post_hook)
        return self

    def detach(self) -> TorchRecorder:
        """Remove the optimizer hook; the model and the optimizer are left exactly as they were."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._optimizer, self._attached = None, None, False
        return self

    def __enter__(self) -> TorchRecorder:
        if not self._attached:
            self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @staticmethod
    def _optimizer_metadata(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        group = optimizer.param_groups[0]
        meta: dict[str, Any] = {"optimizer": type(optimizer).__name__}
        for key in _OPTIMIZER_KEYS:
            if key in group and group[key] is not None:
                value = group[key]
                meta[key] = list(value) if isinstance(value, tuple) else value
        if "momentum" not in meta and "betas" in meta:
            meta["momentum"] = meta["betas"][0]
        meta["lr"] = float(meta["lr"]) if "lr" in meta else None
        return meta

    # ------------------------------------------------------------------ recording
    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._advance()

    def step(self) -> None:
        """Count one optimizer step (call it after ``optimizer.step()``); record if wanted."""
        if not self._attached:
            raise RuntimeError("call recorder.attach() before the first step, so that the "
                               "starting point θ_0 is recorded")
        if self._handle is not None:
            raise RuntimeError("the recorder is attached to the optimizer's step hook, which "
                               "already counts steps; do not also call recorder.step()")
        self._advance()

    def _advance(self) -> None:
        self.t += 1
        if self._wanted(self.t):
            self._record(self.t, gradient=True)

    def _wanted(self, t: int) -> bool:
        return t >= self.start and (self.stop is None or t <= self.stop) \
            and (t - self.start) % self.every == 0

    def _record(self, t: int, gradient: bool) -> None:
        row = len(self.steps)
        if row >= self.rows:
            if not self._full_warned:
                warnings.warn(f"TorchRecorder buffer is full ({self.rows} snapshots); step {t} "
                              f"and later are not recorded. Raise capacity= or set stop=",
                              RuntimeWarning, stacklevel=3)
                self._full_warned = True
            return
        with torch.no_grad():
            # One concatenation kernel per row: each source is a flat view of the parameter
            # (a copy only if it is not contiguous) or its effective value when it is masked.
            torch.cat([self._flat_source(ref) for ref in self._refs], out=self._snapshots[row])
            if self._gradients is not None:
                torch.cat([ref.param.grad.reshape(-1)
                           if gradient and ref.param.grad is not None
                           else ref.param.new_zeros(ref.param.numel())
                           for ref in self._refs], out=self._gradients[row])
        self.steps.append(t)

    @staticmethod
    def _flat_source(ref: TensorRef) -> torch.Tensor:
        if not ref.owners or ref.owners[0][0]._parameters.get(ref.owners[0][1]) is ref.param:
            return ref.param.reshape(-1)  # a plain parameter: the fast path
        return effective_value(ref).reshape(-1)

    # ------------------------------------------------------------------ result
    def __len__(self) -> int:
        return len(self.steps)

    @property
    def refs(self) -> list[TensorRef]:
        """Where each tensor of the layout lives in the model (layout order)."""
        return list(self._refs)

    def buffer(self) -> torch.Tensor:
        """The recorded rows of the torch buffer, ``(m+1, n)`` (a view)."""
        return self._snapshots[: len(self.steps)]

    def trajectory(self, xp: Any = None) -> Trajectory:
        """The recorded window as a ``Trajectory`` on backend ``xp`` (default: current backend).

        Zero-copy when the buffer is on the CPU and the backend is NumPy, or on CUDA with CuPy:
        the arrays are views of the recorder's buffer.
        """
        k = len(self.steps)
        if k == 0:
            raise RuntimeError("the recorder has recorded nothing: call attach() (and step() "
                               "after each optimizer step) and check start=/stop=")
        gradients = None if self._gradients is None else to_backend(self._gradients[:k], xp)
        return Trajectory(to_backend(self._snapshots[:k], xp), list(self.steps), self.layout,
                          gradients=gradients, metadata=dict(self.metadata))
