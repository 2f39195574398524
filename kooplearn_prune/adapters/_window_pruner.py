"""What the Lightning and ``transformers`` callbacks share: record, prune once, keep it pruned.

``WindowPruner`` is framework-free: a callback hands it the model and the optimizer when
training starts (``begin``) and the optimizer step count after every step (``after_step``).
It records the window with ``TorchRecorder`` (docs/theory.md §2), computes the masks of any
registered method with ``koopman_masks`` at the pruning step (§8-§11), applies them in torch's
pruning format (``weight_orig`` / ``weight_mask``), and from then on keeps the pruned weights,
their gradients and their optimizer state at zero with ``MaskEnforcer``. ``metrics`` holds the
numbers a callback logs: the ``MaskReport`` counts, the overlap with the magnitude mask of the
same sparsity on the last recorded snapshot (§13) and the fixed-point flags of the KMD (§7).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from ..koopman import KMD
from ..methods import get_method
from ..pruning.masks import COMPRESSION_OVER, resolve_sparsity
from ..pruning.metrics import overlap
from ..window import RecordingWindow
from .torch import MaskEnforcer, TorchRecorder, apply_masks, current_masks, koopman_masks
from .torch.params import select_parameters, torch

__all__ = ["WindowPruner", "PrunerResults", "unwrap_optimizer", "refresh_pruned_attributes"]

#: ``koopman_masks`` options a callback passes through unchanged.
MASK_OPTIONS = ("at", "kind", "n_batches", "seed", "max_layer_sparsity", "strict", "horizon",
                "converged")


def unwrap_optimizer(optimizer: Any) -> Any:
    """The ``torch.optim.Optimizer`` inside framework wrappers (accelerate, Lightning)."""
    seen = 0
    while not _is_plain_optimizer(optimizer) and hasattr(optimizer, "optimizer") and seen < 8:
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def _is_plain_optimizer(optimizer: Any) -> bool:
    return isinstance(optimizer, torch.optim.Optimizer) and \
        not isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)


class PrunerResults:
    """What a training-loop callback holding a ``WindowPruner`` (``self.pruner``) exposes."""

    pruner: WindowPruner

    @property
    def masks(self) -> dict[str, Any] | None:
        """``{state_dict name: bool tensor}`` once pruned, else ``None``."""
        return self.pruner.masks

    @property
    def report(self) -> Any:
        """The ``MaskReport`` of the pruning step (``None`` before it, or after a resume)."""
        return self.pruner.report

    @property
    def metrics(self) -> dict[str, float]:
        """The numbers logged at the pruning step, without ``log_prefix``."""
        return dict(self.pruner.metrics)

    def trajectory(self) -> Any:
        """The recorded window as a ``Trajectory``."""
        if self.pruner.recorder is None:
            raise RuntimeError("nothing recorded yet: the window starts when training starts")
        return self.pruner.recorder.trajectory()

    def compute_masks(self) -> tuple[dict[str, Any], Any]:
        """The masks and ``MaskReport`` of the recorded window (the model is not changed)."""
        return self.pruner.compute_masks()


class WindowPruner:
    """Record ``θ_t`` over a window, prune at ``prune_at``, keep the pruned entries at zero.

    ``every``/``start``/``stop``/``unit`` are the recording window of ``TorchRecorder``
    (``stop`` defaults to ``prune_at``, ``prune_at`` to ``stop``; give at least one, in the same
    ``unit``); ``prune_at >= stop``. ``method`` is any name of ``kooplearn_prune.methods``
    (default ``"kmp"``), ``kmd`` an unfitted ``KMD`` to use instead of ``KMD()``;
    ``mask_options`` go to ``koopman_masks`` (``at``, ``kind``, ``n_batches``, ``seed``,
    ``max_layer_sparsity``, ``strict``, ``horizon``, ``converged``).
    """

    def __init__(self, sparsity: float | None = None, compression: float | None = None,
                 method: str = "kmp", *, every: int = 1, start: int = 0,
                 stop: int | None = None, prune_at: int | None = None, unit: str = "step",
                 scope: str | None = None, over: str = COMPRESSION_OVER, prunable: Any = None,
                 non_prunable: str = "record", kmd: KMD | None = None,
                 mask_options: Mapping[str, Any] | None = None) -> None:
        self.spec = get_method(method)
        if sparsity is None and compression is None:
            raise ValueError("give sparsity= (fraction of prunable weights to remove) or "
                             "compression=")
        if stop is None and prune_at is None:
            raise ValueError("give prune_at= (the step or epoch at which to prune) or stop= "
                             "(the end of the recording window; pruning then happens there)")
        stop = prune_at if stop is None else stop
        prune_at = stop if prune_at is None else prune_at
        self.window = RecordingWindow(every, start, stop, unit)  # validates every/start/stop
        if isinstance(prune_at, bool) or not isinstance(prune_at, int) or prune_at < stop:
            raise ValueError(f"prune_at must be an integer >= stop={stop} (masks need the whole "
                             f"recorded window), got {prune_at!r}")
        if kmd is not None and not isinstance(kmd, KMD):
            raise TypeError(f"kmd must be an (unfitted) kooplearn_prune.koopman.KMD, got "
                            f"{type(kmd).__name__}")
        options = dict(mask_options or {})
        unknown = sorted(set(options) - set(MASK_OPTIONS))
        if unknown:
            raise ValueError(f"mask_options has unknown keys {unknown}; allowed: {MASK_OPTIONS}")
        self.sparsity, self.compression, self.method = sparsity, compression, method
        self.scope, self.over, self.prune_at = scope, over, prune_at
        self.prunable, self.non_prunable = prunable, non_prunable
        self.kmd_template, self.mask_options = kmd, options
        self.recorder: TorchRecorder | None = None
        self.enforcer: MaskEnforcer | None = None
        self.model: Any = None
        self.optimizer: Any = None
        self.prune_step: int | None = None
        self.stop_step: int | None = None
        self.masks: dict[str, Any] | None = None
        self.report: Any = None
        self.kmd: KMD | None = None
        self.metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ steps
    def _to_steps(self, value: int, steps_per_epoch: int | None) -> int:
        if self.window.unit == "step":
            return value
        if not steps_per_epoch:
            raise ValueError("unit='epoch' needs the number of optimizer steps per epoch, which "
                             "this trainer did not report; use unit='step'")
        return value * steps_per_epoch

    @property
    def phase(self) -> str:
        """``"new"``, ``"recording"``, ``"pruned"`` or ``"ended"`` (recording stopped unpruned)."""
        if self.masks is not None:
            return "pruned"
        if self.recorder is None:
            return "new"
        return "ended" if self.recorder.finished else "recording"

    def begin(self, model: Any, optimizer: Any, step: int, steps_per_epoch: int | None,
              fix: str, last_step: float | None = None) -> None:
        """Training starts (or resumes) at optimizer step ``step`` and ends at ``last_step``
        (when known); ``fix`` says how to pass the right optimizer in this framework. Everything
        is checked before recording begins."""
        optimizer = unwrap_optimizer(optimizer)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"the trainer's optimizer is a {type(optimizer).__name__}, not a "
                            f"torch.optim.Optimizer; {fix}")
        layout, refs = select_parameters(model, self.prunable, self.non_prunable)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [r.name for r in refs if r.param.requires_grad and id(r.param) not in held]
        if missing:
            raise ValueError(f"the trainer's optimizer does not own the model's parameters "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''}: it was built "
                             f"for another model or another parameter set, so recording and "
                             f"mask enforcement would never see these tensors change; {fix}")
        resolve_sparsity(self.sparsity, self.compression, layout=layout, over=self.over)
        start = self._to_steps(self.window.start, steps_per_epoch)
        prune_step = self._to_steps(self.prune_at, steps_per_epoch)
        if self.masks is None and last_step is not None and math.isfinite(last_step) \
                and prune_step > last_step:
            raise ValueError(f"prune_at={self.prune_at} ({self.window.unit}s) is step "
                             f"{prune_step}, after the last training step {int(last_step)}: "
                             f"the model would never be pruned; lower prune_at= or train longer")
        self.prune_step = prune_step
        self.stop_step = self._to_steps(self.window.stop, steps_per_epoch)
        self.model, self.optimizer = model, optimizer
        if self.masks is not None:  # a second fit() with the same callback: keep enforcing
            self._enforce()
            return
        if step >= self.prune_step:
            if not current_masks(model):
                raise RuntimeError(
                    f"training resumes at step {step}, after the pruning step "
                    f"{self.prune_step}, but the model carries no masks: the checkpoint's masks "
                    f"were not loaded into it. Load the pruned checkpoint into the model first "
                    f"(load_pruned_checkpoint in this adapter)")
            self.masks = current_masks(model)
            self.metrics = {"prune_step": float(self.prune_step)}
            self._enforce()
            return
        if start < step:
            raise RuntimeError(
                f"training resumes at step {step}, inside the recording window (starts at step "
                f"{start}, masks at step {self.prune_step}): the rows recorded before the "
                f"checkpoint are not in it. Resume from a checkpoint at or before step {start}, "
                f"or after step {self.prune_step}")
        self.recorder = TorchRecorder(
            model, every=self.window.every, start=self.window.start, stop=self.window.stop,
            unit=self.window.unit, steps_per_epoch=steps_per_epoch, prunable=self.prunable,
            non_prunable=self.non_prunable, record_gradients=self.spec.needs_gradient,
            step_offset=step)
        self.recorder.attach(optimizer)

    def after_step(self, step: int) -> dict[str, float] | None:
        """After optimizer step ``step``: prune when it is due (returns the metrics then)."""
        if self.phase == "recording" and step >= self.prune_step:
            return self.prune()
        return None

    def end(self) -> None:
        """Training ends: remove every hook; the masks stay on the model."""
        if self.recorder is not None and self.masks is None:
            warnings.warn(f"training ended at step {self.recorder.t}, before the pruning step "
                          f"{self.prune_step}: the model was not pruned (lower prune_at= or "
                          f"train longer)", RuntimeWarning, stacklevel=2)
        if self.recorder is not None and not self.recorder.finished:
            self.recorder.detach()
        if self.enforcer is not None:
            self.enforcer.detach()
            self._refresh_handle.remove()
            self.enforcer = None
        if self.masks is not None:
            refresh_pruned_attributes(self.model)

    # ------------------------------------------------------------------ masks
    def window_recorded(self) -> bool:
        """Whether every snapshot of the window has been taken."""
        rec = self.recorder
        return rec is not None and len(rec) > 0 and rec.t >= self.stop_step

    def compute_masks(self) -> tuple[dict[str, Any], Any]:
        """``koopman_masks`` on the recorded window (the model is not changed)."""
        if self.masks is not None and self.recorder is None:
            raise RuntimeError("the masks were restored from a checkpoint; the recorded window "
                               "is not in it, so they cannot be computed again")
        if not self.window_recorded():
            at = "training has not started" if self.recorder is None else \
                f"training is at step {self.recorder.t}"
            end = "its last step" if self.stop_step is None else f"step {self.stop_step}"
            raise RuntimeError(f"masks asked before the window is recorded: it ends at {end}, "
                               f"{at}. Ask after that step, or lower stop=")
        traj = self.recorder.trajectory()
        kmd = None
        if self.spec.needs_kmd:
            kmd = (KMD() if self.kmd_template is None else self.kmd_template).fit(traj)
        self.kmd = kmd
        masks, report = koopman_masks(traj, self.method, self.sparsity, self.compression,
                                      self.scope, model=self.model, kmd=kmd, over=self.over,
                                      **self.mask_options)
        return masks, report

    def prune(self) -> dict[str, float]:
        """Stop recording, compute the masks, apply them, start enforcing; returns the metrics."""
        step = self.recorder.t
        self.recorder.detach()
        masks, report = self.compute_masks()
        apply_masks(self.model, masks, mode="prune")  # keeps the parameters' order
        self.masks, self.report = masks, report
        self._enforce()
        self.metrics = self._metrics(report, step)
        return self.metrics

    def _enforce(self) -> None:
        model = self.model
        self.enforcer = MaskEnforcer(model, self.optimizer).attach()
        # After the enforcer's own post-hook: every later hook and callback sees plain tensors.
        self._refresh_handle = self.optimizer.register_step_post_hook(
            lambda *_: refresh_pruned_attributes(model))
        refresh_pruned_attributes(model)

    def _metrics(self, report: Any, step: int) -> dict[str, float]:
        traj = self.recorder.trajectory()
        _, mag_report = koopman_masks(traj, "magnitude", report.requested_sparsity, None,
                                      report.scope, model=self.model)
        numbers: dict[str, float] = {
            "prune_step": float(step), "snapshots": float(traj.n_snapshots),
            "requested_sparsity": report.requested_sparsity, "sparsity": report.sparsity,
            "sparsity_all": report.sparsity_all,
            "compression_prunable": report.compression_prunable,
            "compression_all": report.compression_all, "n_pruned": float(report.n_pruned),
            "overlap_magnitude": _overlap(report.flat_mask, mag_report.flat_mask, report.layout),
        }
        if self.kmd is not None:
            fp = self.kmd.fixed_point_info_
            lam = complex(fp.eigenvalue)
            numbers.update(rank=float(self.kmd.rank_), eigenvalue_real=lam.real,
                           eigenvalue_imag=lam.imag, distance_from_one=float(fp.distance_from_one),
                           growing_amplitude_share=float(fp.growing_amplitude_share),
                           fixed_point_reliable=float(fp.reliable),
                           stationary_is_complex=float(fp.stationary_is_complex),
                           competing_eigenvalues=float(fp.competing))
        return {k: float(v) for k, v in numbers.items()}


def _overlap(mask_a: Any, mask_b: Any, layout: Any) -> float:
    try:
        return overlap(mask_a, mask_b, layout)
    except ValueError:  # the mask keeps nothing prunable
        return math.nan


@torch.no_grad()
def refresh_pruned_attributes(model: Any) -> None:
    """Recompute each pruned ``weight`` as a plain tensor (``weight_orig * weight_mask``).

    torch's pruning hook leaves a non-leaf tensor there after a forward pass, which makes
    ``copy.deepcopy`` of the module fail and holds a stale value after the optimizer step; the
    next forward recomputes it with its graph as usual.
    """
    prune = torch.nn.utils.prune
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name in module.__dict__:
                module.__dict__[hook._tensor_name] = hook.apply_mask(module)
