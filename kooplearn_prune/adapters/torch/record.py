"""Recording a ``torch.nn.Module``'s training as a ``Trajectory`` (docs/theory.md §2).

``TorchRecorder`` copies the *effective* parameters (mask applied) into row ``j`` of a
``(rows, n)`` torch buffer every ``every`` optimizer steps inside a window, either from an
optimizer step post-hook (``attach(optimizer)``) or from explicit ``recorder.step()`` calls in a
hand-written loop. ``trajectory()`` hands the rows to kooplearn_prune without a copy
(``tensor.numpy()`` on the CPU, DLPack to CuPy on CUDA) as the same ``Trajectory`` and
``ParamLayout`` a native model produces, so the KMD and every score work unchanged.

Conventions and window rules are those of the native ``TrajectoryRecorder`` (one implementation,
``kooplearn_prune.window``): ``t`` counts the optimizer steps seen since the recorder was created
(plus ``step_offset``); ``snapshots[j] = θ_t`` with ``t = steps[j]``; ``gradients[j]`` is the
gradient the step producing snapshot ``j`` used (zero for the snapshot taken when recording
begins, then ``metadata.first_gradient_row = 1``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ..._hostmemory import host_zeros
from ...layout import ParamLayout
from ...metadata import ADAM_KINDS, TrainingMetadata
from ...trajectory import Trajectory
from ...window import (
    RecordingWindow,
    RowBuffer,
    WindowOwner,
    check_capacity,
    check_flag,
    weak_method,
)
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

_EXTRA_KEYS = ("eps", "dampening", "alpha", "amsgrad", "centered", "momentum_decay")


def _check_int(value: Any, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}")
    return value


def _record_dtype(model_dtypes: list[torch.dtype], dtype: Any) -> tuple[torch.dtype, dict]:
    """The buffer's dtype and, when it differs from a half-precision model's, a metadata note."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype such as torch.float32, got "
                            f"{dtype!r}")
        if dtype == torch.bfloat16:
            raise TypeError("dtype=torch.bfloat16: NumPy has no bfloat16, so the trajectory "
                            "could not reach the KMD; record in torch.float32 (the default for "
                            "bfloat16 models) or torch.float64")
        return dtype, {}
    widest = model_dtypes[0]
    for other in model_dtypes[1:]:
        widest = torch.promote_types(widest, other)
    if widest in (torch.bfloat16, torch.float16):
        return torch.float32, {"model_dtype": str(widest).removeprefix("torch."),
                               "recorded_dtype": "float32"}
    return widest, {}


class TorchRecorder(WindowOwner):
    """Recorder of θ_t for any ``torch.nn.Module`` (docs/theory.md §2, rows of ``W``).

    Window (the rules of ``TrajectoryRecorder``): snapshots at ``t = start, start + every, ...``
    up to ``stop`` (inclusive; ``None``: until ``detach()``); ``every`` counts optimizer steps.
    ``unit="epoch"`` counts ``start``/``stop`` in epochs and needs ``steps_per_epoch=`` (a torch
    optimizer does not know it). The buffer is allocated now when its size is known: ``capacity``
    rows if given, else the window's rows when ``stop`` is given; otherwise it grows by doubling
    as rows arrive. No row is ever dropped. ``prunable``/``non_prunable`` choose the tensors (see
    ``select_parameters``); ``conventions="shrinkbench"`` selects ShrinkBench's prunable tensors
    (short for ``layout=select_parameters(model, conventions=...)[0]``); ``layout`` instead
    imposes an existing layout (checked against the model; not with ``conventions``).
    ``device="model"`` keeps the buffer on the parameters' device, ``"host"`` in CPU memory.
    ``record_gradients`` also stores each step's gradient. ``dtype``: the buffer's torch dtype;
    by default the parameters' (the widest, if they differ), except that ``bfloat16`` and
    ``float16`` models are recorded in ``float32``: NumPy has no bfloat16, and the KMD needs more
    precision than half (docs/theory.md §6). ``metadata.extra`` then notes ``model_dtype`` and
    ``recorded_dtype``; masks apply back to the half-precision model as usual. ``gram=True``
    streams each row into a ``koopman.streaming.GramAccumulator`` (``"background"``: in a worker
    thread); ``recorder.gram`` is then G for ``KMD().fit(recorder.trajectory(), gram=)``.

    Lifetime: ``with recorder.attach(optimizer): ...`` (hooked) or ``recorder.attach()`` and
    ``recorder.step()`` after every ``optimizer.step()``. Recording ends when the window ends or
    on ``detach()``, after which the recorder is finished (attach again raises: use a new one);
    ``recorder.trajectory()`` returns the recorded rows.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, start: int = 0,
                 stop: int | None = None, unit: str = "step",
                 steps_per_epoch: int | None = None, capacity: int | None = None,
                 prunable: Iterable[str] | Callable[[str, Any], bool] | None = None,
                 non_prunable: str = "record", layout: ParamLayout | None = None,
                 conventions: str | None = None, record_gradients: bool = False,
                 device: Any = "model", dtype: Any = None,
                 step_offset: int = 0, gram: bool | str = False) -> None:
        self.window = RecordingWindow(every, start, stop, unit)
        if not (isinstance(gram, bool) or gram == "background"):
            raise TypeError(f"gram must be True, False or 'background', got {gram!r}")
        if steps_per_epoch is not None:
            _check_int(steps_per_epoch, "steps_per_epoch", 1)
        self._steps = self.window.steps(steps_per_epoch)
        capacity = check_capacity(capacity)
        self.record_gradients = check_flag(record_gradients, "record_gradients")
        self.step_offset = _check_int(step_offset, "step_offset", 0)
        if layout is None:
            self.layout, self._refs = select_parameters(model, prunable, non_prunable,
                                                        conventions=conventions or "library")
        else:
            if conventions is not None:
                raise ValueError(f"give either layout= or conventions={conventions!r}, not both "
                                 f"(the layout already says which tensors are prunable; "
                                 f"conventions= is the shortcut for layout=select_parameters("
                                 f"model, conventions=...)[0])")
            if prunable is not None:
                raise ValueError("give either layout= or prunable=, not both (the layout already "
                                 "says which tensors are prunable)")
            self._refs = check_layout(model, layout)
            self.layout = layout
        self.model = model
        first = self._refs[0].param
        self.dtype, dtype_note = _record_dtype([r.param.dtype for r in self._refs], dtype)
        self.device = self._resolve_device(device, first)
        names = ["snapshots"] + (["gradients"] if self.record_gradients else [])
        self._buffer = RowBuffer(names, weak_method(self._new_rows))  # no cycle: see weak_method
        last = self._steps.last
        rows = capacity if capacity is not None else \
            None if last is None else self._steps.count(step_offset, last)
        if rows:
            self._buffer.reserve(rows)
        self._gram: Any = None  # gram=True: G = W Wᵀ updated as rows arrive (koopman.streaming)
        if gram:
            from ...koopman.streaming import GramAccumulator  # the analysis layer, only when asked

            self._gram = GramAccumulator(self.layout.size, background=gram == "background")
            if last is not None:  # blocks end just before the last row
                self._gram.expect(self._steps.count(step_offset, last))
        self.t = step_offset
        self.metadata = TrainingMetadata(every=every, steps_per_epoch=steps_per_epoch,
                                         framework="torch", device=str(first.device),
                                         extra=dtype_note)
        self._state = "new"  # -> "attached" -> "finished" (on detach)
        self._handle: Any = None

    @property
    def capacity(self) -> int:
        """Rows allocated so far (grows by doubling when ``stop`` and ``capacity`` are unset)."""
        return self._buffer.capacity

    def _new_rows(self, name: str, rows: int) -> torch.Tensor:
        shape = (rows, self.layout.size)
        if self.device.type == "cpu":  # pages faulted in now, and reused across recorders
            try:
                np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
            except TypeError:  # no NumPy twin (bfloat16)
                np_dtype = None
            if np_dtype is not None:
                return torch.from_numpy(host_zeros(shape, np_dtype))
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

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
        if self._state == "attached":
            raise RuntimeError("the recorder is already attached")
        if self._state == "finished":
            raise RuntimeError("this recorder was detached, which ended its recording; create a "
                               "new TorchRecorder to record more steps")
        metadata = self.metadata
        if optimizer is not None:
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                                f"{type(optimizer).__name__}")
            owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if not any(id(r.param) in owned for r in self._refs):
                raise ValueError("the optimizer updates none of the recorded tensors; pass the "
                                 "optimizer of this model")
            settings = self._optimizer_metadata(optimizer)
            settings["extra"] = {**metadata.extra, **settings["extra"]}
            metadata = replace(metadata, **settings)
        at_start = self._steps.wanted(self.t)
        self.metadata = replace(metadata, first_gradient_row=1 if at_start else 0)
        self._state = "attached"
        if at_start:
            self._record(self.t, gradient=False)
        if optimizer is not None:
            self._handle = optimizer.register_step_post_hook(self._post_hook)
        return self

    def detach(self) -> TorchRecorder:
        """End recording and remove the optimizer hook; model and optimizer are left as they were.

        The rows recorded so far stay; the recorder cannot be attached again.
        """
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._state = None, "finished"
        return self

    def __enter__(self) -> TorchRecorder:
        if self._state != "attached":
            self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @staticmethod
    def _optimizer_metadata(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The ``TrainingMetadata`` fields ``optimizer``'s first param group gives."""
        groups = optimizer.param_groups
        group = groups[0]
        kind = type(optimizer).__name__.lower()
        adam = kind in ADAM_KINDS
        meta: dict[str, Any] = {
            "optimizer": kind,
            "lr": None if group.get("lr") is None else float(group["lr"]),
            "momentum": 0.0 if adam else float(group.get("momentum") or 0.0),
            "nesterov": False if adam else bool(group.get("nesterov", False)),
            "betas": None if group.get("betas") is None
            else tuple(float(b) for b in group["betas"]),
            "weight_decay": float(group.get("weight_decay") or 0.0),
            "decoupled_weight_decay": bool(group.get("decoupled_weight_decay", kind == "adamw")),
        }
        extra = {k: group[k] for k in _EXTRA_KEYS
                 if isinstance(group.get(k), (bool, int, float))}
        if len(groups) > 1:
            extra["param_groups"] = len(groups)  # the settings above are those of the first
        meta["extra"] = extra
        return meta

    # ------------------------------------------------------------------ recording
    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._advance()

    def step(self) -> None:
        """Count one optimizer step (call it after ``optimizer.step()``); record if wanted."""
        if self._state != "attached":
            if self._state == "finished":
                raise RuntimeError("the recorder was detached: its recording has ended")
            raise RuntimeError("call recorder.attach() before the first step, so that the "
                               "starting point θ_0 is recorded")
        if self._handle is not None:
            raise RuntimeError("the recorder is attached to the optimizer's step hook, which "
                               "already counts steps; do not also call recorder.step()")
        self._advance()

    def _advance(self) -> None:
        self.t += 1
        if self._steps.wanted(self.t):
            self._record(self.t, gradient=True)

    def _record(self, t: int, gradient: bool) -> None:
        buffer = self._buffer
        row = buffer.next_row()  # doubles the buffer when full; never drops a row
        arrays = buffer.arrays
        with torch.no_grad():
            # One concatenation kernel per row: each source is a flat view of the parameter
            # (a copy only if it is not contiguous) or its effective value when it is masked.
            torch.cat([self._flat_source(ref) for ref in self._refs], out=arrays["snapshots"][row])
            if self.record_gradients:
                torch.cat([ref.param.grad.reshape(-1)
                           if gradient and ref.param.grad is not None
                           else ref.param.new_zeros(ref.param.numel())
                           for ref in self._refs], out=arrays["gradients"][row])
        buffer.commit(t)
        if self._gram is not None:  # CPU: the NumPy view (no copy); else the tensor itself
            rows = buffer.filled("snapshots")
            self._gram.follow(rows.numpy() if rows.device.type == "cpu" else rows)

    @property
    def gram(self) -> Any:
        """With ``gram=True``: the float64 Gram matrix of the recorded snapshots (NumPy),
        streamed while recording, for ``KMD().fit(recorder.trajectory(), gram=recorder.gram)``."""
        if self._gram is None:
            raise RuntimeError("this recorder does not stream the Gram matrix: pass "
                               "TorchRecorder(..., gram=True), or let KMD().fit compute it")
        return self._gram.gram

    @staticmethod
    def _flat_source(ref: TensorRef) -> torch.Tensor:
        if not ref.owners or ref.owners[0][0]._parameters.get(ref.owners[0][1]) is ref.param:
            return ref.param.reshape(-1)  # a plain parameter: the fast path
        return effective_value(ref).reshape(-1)

    # ------------------------------------------------------------------ result
    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def steps(self) -> list[int]:
        """The step ``t`` of each recorded row."""
        return self._buffer.steps

    @property
    def refs(self) -> list[TensorRef]:
        """Where each tensor of the layout lives in the model (layout order)."""
        return list(self._refs)

    def buffer(self) -> torch.Tensor:
        """The recorded rows of the torch buffer, ``(m+1, n)`` (a view)."""
        rows = self._buffer.filled("snapshots")
        return self._new_rows("snapshots", 0) if rows is None else rows

    def trajectory(self, xp: Any = None) -> Trajectory:
        """The recorded window as a ``Trajectory`` on backend ``xp`` (default: current backend).

        Zero-copy when the buffer is on the CPU and the backend is NumPy, or on CUDA with CuPy:
        the arrays are views of the recorder's buffer.
        """
        if not len(self._buffer):
            raise RuntimeError("the recorder has recorded nothing: call attach() (and step() "
                               "after each optimizer step) and check start=/stop=")
        gradients = self._buffer.filled("gradients")
        if gradients is not None:
            gradients = to_backend(gradients, xp)
        return Trajectory(to_backend(self._buffer.filled("snapshots"), xp), list(self.steps),
                          self.layout, gradients=gradients, metadata=self.metadata)
