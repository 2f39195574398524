"""Iterative pruning with rewinding for a ``torch.nn.Module`` (docs/theory.md §8, §13).

The contract of ``kooplearn_prune.iterative.iterative_pruning`` (levels, scores from each run's
recorded window through any method of the registry, cumulative sparsity ``1 − (1 − p)^L``,
rewinding, the per-level record with the overlap with GMP), for a torch model and your own
training loop ``train_fn(model, optimizer)``, or a small default loop over a ``loader``.

Each run is recorded by a ``TorchRecorder`` hooked to that run's optimizer (the dense run's
window reaches back to the rewind step, so θ_rewind is a row of the same trajectory; see the
native module for what that costs). Masks are applied in the torch pruning format
(``apply_masks``, ``weight_orig`` + ``weight_mask`` by default), the recorded θ_rewind is copied
into the raw trainable tensors (``weight_orig``), and a ``MaskEnforcer`` keeps pruned weights and
their optimizer state at zero during retraining. Buffers (BatchNorm statistics) are not part of
θ and are not rewound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...iterative import (
    IterativeResult,
    check_levels,
    level_record,
    plan_recording,
    score_level,
)
from ...layout import ParamLayout
from .apply import MODES, MaskEnforcer, apply_masks
from .params import check_layout, nn, torch
from .record import TorchRecorder

__all__ = ["iterative_pruning", "default_train_fn", "accuracy_on"]


def default_train_fn(loader: Any, epochs: int = 1,
                     loss: Callable[[Any, Any], Any] | None = None) -> Callable[[Any, Any], None]:
    """``train_fn(model, optimizer)``: ``epochs`` passes over ``loader`` of ``(inputs, targets)``
    with ``loss`` (default cross-entropy), one optimizer step per batch."""
    loss_fn = torch.nn.functional.cross_entropy if loss is None else loss

    def train(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model.train()
        for _ in range(epochs):
            for inputs, targets in loader:
                optimizer.zero_grad()
                loss_fn(model(inputs), targets).backward()
                optimizer.step()

    return train


def accuracy_on(inputs: Any, targets: Any, batch_size: int = 2048) -> Callable[[Any], float]:
    """``evaluate(model)``: top-1 accuracy on ``(inputs, targets)``, in eval mode, no graph."""

    def evaluate(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(targets), batch_size):
                out = model(inputs[i:i + batch_size])
                correct += int((out.argmax(dim=1) == targets[i:i + batch_size]).sum())
        model.train(was_training)
        return correct / len(targets)

    return evaluate


def _run_steps(loader: Any, epochs: int, steps: int | None) -> int:
    if loader is None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r}: with train_fn= give steps=, the number of "
                             f"optimizer steps one call of train_fn takes")
        return steps
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    return epochs * len(loader)


def _torch_masks(keep: Any, layout: ParamLayout, refs: list[Any]) -> dict[str, torch.Tensor]:
    """Flat NumPy keep-mask → ``{canonical name: bool tensor}`` for the prunable tensors."""
    per_tensor = layout.unflatten(keep)
    return {name: torch.as_tensor(per_tensor[name]).to(ref.param.device)
            for name, ref, prunable in zip(layout.names, refs, layout.prunable) if prunable}


@torch.no_grad()
def _rewind(model: nn.Module, layout: ParamLayout, point: torch.Tensor) -> None:
    """Copy θ_rewind into every recorded tensor's raw trainable leaf (``weight_orig``, ...)."""
    for ref, off, size in zip(check_layout(model, layout), layout.offsets, layout.sizes):
        ref.param.copy_(point[off:off + size].view(ref.shape))


def iterative_pruning(model: nn.Module, optimizer_factory: Callable[[nn.Module], Any],
                      train_fn: Callable[[nn.Module, Any], None] | None = None, *,
                      levels: int, fraction: float = 0.2, method: str = "kmp",
                      rewind: str | int = "init", loader: Any = None, epochs: int = 1,
                      steps: int | None = None, window: int | None = None, every: int = 1,
                      evaluate: Callable[[nn.Module], float] | None = None, mode: str = "prune",
                      prunable: Any = None, seed: int = 0,
                      method_options: Mapping[str, Any] | None = None) -> IterativeResult:
    """Train ``model``, then ``levels`` times: prune ``fraction`` of what remains, rewind, retrain.

    One run is ``train_fn(model, optimizer)`` taking ``steps`` optimizer steps, or, with
    ``loader=``, ``epochs`` passes over it (``default_train_fn``). ``optimizer_factory(model)``
    builds a fresh optimizer per run, after the masks are applied (so it holds ``weight_orig``):
    the optimizer state is reset at each rewind. Scores read the last ``window`` steps of a run
    (default: one pass over ``loader``), every ``every`` steps. ``evaluate(model) -> float`` runs
    after each run (``accuracy_on(x, y)`` gives test accuracy). ``mode``: how masks are applied
    (``apply_masks``). ``rewind``, ``method``, ``method_options``, ``seed``: as in the native
    ``iterative_pruning``. Arguments, including ``rewind``, are checked before the model changes.
    """
    spec = check_levels(levels, fraction, method)
    if not callable(optimizer_factory):
        raise TypeError("optimizer_factory must be a callable model -> optimizer, e.g. "
                        "lambda m: torch.optim.SGD(m.parameters(), lr=0.05)")
    if (train_fn is None) == (loader is None):
        raise ValueError("give exactly one of train_fn= (your loop, with steps=) or loader= "
                         "(the default loop, epochs= passes)")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not callable(evaluate):
        raise TypeError("evaluate= must be a callable model -> float, e.g. accuracy_on(x_test, "
                        "y_test)")
    total = _run_steps(loader, epochs, steps)
    if window is None:
        if loader is None:
            raise ValueError("window= (steps at the end of a run that the scores read) is needed "
                             "with train_fn=")
        window = len(loader)
    plan = plan_recording(total, window, every, rewind)
    train = default_train_fn(loader, epochs) if train_fn is None else train_fn
    options = {"seed": seed, **dict(method_options or {})}

    def run(start: int | None, layout: ParamLayout | None, masks: Any) -> tuple[Any, float]:
        optimizer = optimizer_factory(model)
        recorder = None if start is None else TorchRecorder(
            model, every=every, start=start, stop=total, layout=layout,
            prunable=prunable if layout is None else None,
            record_gradients=spec.needs_gradient)
        enforcer = None if masks is None else MaskEnforcer(model, optimizer, masks).attach()
        try:
            if recorder is not None:
                recorder.attach(optimizer)
            train(model, optimizer)
        finally:
            for hooked in (recorder, enforcer):
                if hooked is not None:
                    hooked.detach()
        if recorder is not None and recorder.t != total:
            raise ValueError(f"train_fn took {recorder.t} optimizer steps but steps={total}; "
                             f"pass the number of optimizer.step() calls one run makes")
        return recorder, float(evaluate(model))

    dense, accuracy = run(plan.dense_start, None, None)
    layout = dense.layout
    rows = list(dense.steps)
    point = dense.buffer()[rows.index(plan.rewind_step)].clone()  # the one row kept
    window_traj = dense.trajectory().window(rows.index(plan.first))
    del dense
    records = [level_record(0, method, fraction, None, layout, accuracy, None)]
    masks: list[Any] = []
    keep = None
    for level in range(1, levels + 1):
        keep, gmp = score_level(method, window_traj, level, fraction, keep, options)
        window_traj = None  # the previous run's buffer can go before the next run records
        torch_masks = _torch_masks(keep, layout, check_layout(model, layout))
        apply_masks(model, torch_masks, mode=mode)
        _rewind(model, layout, point)
        recorder, accuracy = run(plan.first if level < levels else None, layout, torch_masks)
        window_traj = None if recorder is None else \
            recorder.trajectory().window(list(recorder.steps).index(plan.first))
        masks.append(keep)
        records.append(level_record(level, method, fraction, keep, layout, accuracy, gmp))
    return IterativeResult(tuple(records), tuple(masks), layout, method, float(fraction),
                           plan.rewind_step, point.cpu().numpy(), tuple(int(s) for s in rows))
