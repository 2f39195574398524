"""Masks for a torch model from a recorded trajectory (THEORY.md §3-§4).

``koopman_masks`` scores the recorded parameters (KMP, KGP, magnitude, gradient or random),
hands the scores to the one exact-k selection engine (``pruning.global_mask`` /
``layerwise_mask``) and returns ``{state_dict name: bool tensor}`` plus a ``MaskReport``.
``gradient_scores`` averages ``|w ⊙ g|`` over several mini-batches of a torch model, and
``importance_scores`` exports any flat scores in the form
``torch.nn.utils.prune.global_unstructured(..., importance_scores=...)`` expects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...backend import namespace_of, to_numpy
from ...koopman import KMD, kgp_scores, kmp_scores
from ...layout import ParamLayout
from ...metadata import TrainingMetadata
from ...pruning.gradient import gradient_scores_from
from ...pruning.masks import global_mask, layerwise_mask, masks_by_name, resolve_sparsity
from ...pruning.metrics import compression as mask_compression
from ...pruning.metrics import format_mask_table, mask_table
from ...pruning.metrics import sparsity as mask_sparsity
from ...pruning.scores import magnitude_scores, random_scores
from ...trajectory import Trajectory
from .params import (
    as_torch,
    check_layout,
    nn,
    select_parameters,
    tensor_refs,
    to_backend,
    torch,
    write_effective,
)

__all__ = ["METHODS", "MaskReport", "koopman_masks", "masks_from_scores", "gradient_scores",
           "importance_scores"]

METHODS = ("kmp", "kgp", "magnitude", "gradient", "random")
SCOPES = ("global", "layerwise")


@dataclass
class MaskReport:
    """What a mask removes, counted on the layout (THEORY.md §4); ``str(report)`` is a table.

    ``requested_sparsity`` is ``p`` resolved from ``sparsity=`` or ``compression=``
    (``requested_compression``, ShrinkBench's all / nonzero). ``sparsity`` is realized over the
    prunable set, ``sparsity_all`` over all ``n_total`` parameters (those not recorded count as
    kept); ``compression = 1 / (1 − sparsity)``, ``compression_shrinkbench = n_total / kept``.
    ``table``: per-tensor rows of ``pruning.mask_table``. ``scores`` (float64, ``(n,)``) and
    ``flat_mask`` (bool, ``(n,)``) are on the backend.
    """

    method: str
    scope: str
    requested_sparsity: float
    requested_compression: float | None
    sparsity: float
    sparsity_all: float
    compression: float
    compression_shrinkbench: float
    n_params: int
    n_prunable: int
    n_total: int
    n_pruned: int
    table: list[dict[str, Any]]
    layout: ParamLayout = field(repr=False)
    scores: Any = field(repr=False)
    flat_mask: Any = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the flat arrays)."""
        keys = ("method", "scope", "requested_sparsity", "requested_compression", "sparsity",
                "sparsity_all", "compression", "compression_shrinkbench", "n_params",
                "n_prunable", "n_total", "n_pruned", "table", "info")
        return {k: getattr(self, k) for k in keys}

    def __str__(self) -> str:
        asked = (f"compression {self.requested_compression:g} (ShrinkBench) -> sparsity "
                 f"{self.requested_sparsity:.4f}" if self.requested_compression is not None
                 else f"sparsity {self.requested_sparsity:.4f}")
        head = (f"{self.method} mask ({self.scope}): requested {asked}; realized sparsity "
                f"{self.sparsity:.4f} of {self.n_prunable} prunable, {self.sparsity_all:.4f} of "
                f"all {self.n_total} parameters; compression {self.compression:.4g} (prunable), "
                f"{self.compression_shrinkbench:.4g} (ShrinkBench)")
        return head + "\n" + format_mask_table(self.table)


# --------------------------------------------------------------------------- scores → masks
def _count_model_parameters(model: nn.Module | None, layout: ParamLayout) -> int:
    if model is None:
        return layout.size
    return int(sum(r.param.numel() for r in tensor_refs(model)))


def _devices(layout: ParamLayout, model: nn.Module | None, device: Any,
             metadata: TrainingMetadata | Mapping[str, Any] | None) -> list[torch.device]:
    if model is not None:
        refs = check_layout(model, layout)
        return [r.param.device for r in refs]
    recorded = TrainingMetadata.coerce(metadata).device  # where the recorded model lived
    dev = torch.device(device if device is not None else recorded or "cpu")
    return [dev] * len(layout.names)


def masks_from_scores(scores: Any, layout: ParamLayout, sparsity: float | None = None,
                      compression: float | None = None, scope: str = "global", *,
                      model: nn.Module | None = None, device: Any = None,
                      max_layer_sparsity: float | None = None, method: str = "custom",
                      metadata: Mapping[str, Any] | None = None
                      ) -> tuple[dict[str, torch.Tensor], MaskReport]:
    """``({state_dict name: bool tensor}, MaskReport)`` from flat scores ``(n,)`` on ``layout``.

    Masks are returned for the prunable tensors only (the report covers every tensor).

    THEORY.md §3-§4: the ``k = round(p · n_prunable)`` smallest prunable scores are removed
    (ties by index), over all prunable tensors (``scope="global"``) or tensor by tensor
    (``"layerwise"``). Give ``sparsity`` or ``compression`` (ShrinkBench's all / nonzero, where
    "all" counts every parameter of ``model`` when given, recorded or not). Masks go to each
    parameter's device when ``model`` is given (its layout is checked), else to ``device``.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    if isinstance(scores, torch.Tensor):
        scores = to_backend(scores)
    metadata = metadata or {}
    devices = _devices(layout, model, device, metadata)
    n_total = _count_model_parameters(model, layout)
    extra = n_total - layout.size
    # Parameters outside the layout are never pruned: add them as one kept tensor so that a
    # ShrinkBench compression counts them, as ShrinkBench does.
    counting = layout if extra <= 0 else ParamLayout(
        (*layout.names, "(not recorded)"), (*layout.shapes, (extra,)), (*layout.prunable, False))
    p = resolve_sparsity(sparsity, compression, layout=counting)
    if scope == "global":
        flat = global_mask(scores, p, layout=layout, max_layer_sparsity=max_layer_sparsity)
    else:
        if max_layer_sparsity is not None:
            raise ValueError("max_layer_sparsity applies to scope='global' only")
        flat = layerwise_mask(scores, p, layout=layout)
    per_tensor = masks_by_name(flat, layout)
    # Only prunable tensors get a mask: a mask of all True on a bias would still make
    # apply_masks reparametrize it (bias_orig / bias_mask) for nothing.
    masks = {name: _torch_mask(per_tensor[name], dev)
             for name, dev, prunable in zip(layout.names, devices, layout.prunable) if prunable}
    xp = namespace_of(flat)
    kept = int(xp.sum(xp.astype(flat, xp.int64)))
    n_pruned = layout.size - kept
    report = MaskReport(
        method=method, scope=scope, requested_sparsity=p,
        requested_compression=None if compression is None else float(compression),
        sparsity=mask_sparsity(flat, layout), sparsity_all=n_pruned / max(n_total, 1),
        compression=mask_compression(flat, layout),
        compression_shrinkbench=math.inf if kept + max(extra, 0) == 0
        else n_total / (kept + max(extra, 0)),
        n_params=layout.size, n_prunable=layout.n_prunable, n_total=n_total, n_pruned=n_pruned,
        table=mask_table(flat, layout), layout=layout, scores=scores, flat_mask=flat,
    )
    _validate(masks, layout)
    return masks, report


def _torch_mask(array: Any, device: torch.device) -> torch.Tensor:
    """A bool backend array as a torch tensor of its own (not a view of the flat mask)."""
    if type(array).__module__.split(".")[0] == "cupy":
        return as_torch(array, device).clone()
    return torch.tensor(to_numpy(array), dtype=torch.bool, device=device)


def _validate(masks: Mapping[str, torch.Tensor], layout: ParamLayout) -> None:
    """Masks must be bool tensors of the layout's exact shapes (a bug here is ours)."""
    for name, shape, prunable in zip(layout.names, layout.shapes, layout.prunable):
        if not prunable:
            continue
        m = masks[name]
        if m.dtype != torch.bool or tuple(m.shape) != shape:
            raise RuntimeError(f"internal error: mask {name!r} is {m.dtype} {tuple(m.shape)}, "
                               f"expected bool {shape}")


# --------------------------------------------------------------------------- the methods
def _trajectory_of(source: Any) -> Trajectory:
    if isinstance(source, Trajectory):
        return source
    if hasattr(source, "trajectory") and callable(source.trajectory):
        return source.trajectory()
    raise TypeError(f"trajectory must be a Trajectory or a TorchRecorder, got "
                    f"{type(source).__name__}")


def _recorded_gradient_scores(traj: Trajectory, at: int | None, n_batches: int,
                              kind: str) -> tuple[Any, dict[str, Any]]:
    """``|θ_j ⊙ ḡ|`` with ``ḡ`` the mean of the last ``n_batches`` recorded gradients up to the
    one evaluated at θ_j (``gradients[j + 1]``, THEORY.md §3.2)."""
    if traj.gradients is None:
        raise ValueError("method='gradient' needs recorded gradients: record with "
                         "TorchRecorder(record_gradients=True), or compute gradient_scores(model, "
                         "loss_fn, batches) and call masks_from_scores")
    m = traj.n_snapshots - 1
    j = m - 1 if at is None else int(at)
    if not 0 <= j < m:
        raise ValueError(f"at={at} must be a snapshot index in [0, {m - 1}] for method="
                         f"'gradient' (the gradient at θ_j is stored with snapshot j + 1)")
    first = traj.metadata.first_gradient_row
    valid = [i for i in range(first, j + 2) if int(traj.steps[i]) > 0]
    rows = valid[-n_batches:]
    if not rows:
        raise ValueError("no recorded gradient up to snapshot at+1; record a longer window")
    xp = namespace_of(traj.gradients)
    total = xp.zeros((traj.n_params,), dtype=xp.float64)
    for i in rows:
        total = total + xp.astype(traj.gradients[i, :], xp.float64)
    scores = gradient_scores_from(traj.snapshots[j, :], total / len(rows), kind)
    return scores, {"at": j, "gradient_rows": rows}


def koopman_masks(trajectory: Any, method: str = "kmp", sparsity: float | None = None,
                  compression: float | None = None, scope: str = "global", *,
                  model: nn.Module | None = None, device: Any = None, at: int | None = None,
                  kind: str = "weight_times_gradient", n_batches: int = 10, seed: int = 0,
                  kmd: KMD | None = None, max_layer_sparsity: float | None = None,
                  strict: bool = False) -> tuple[dict[str, torch.Tensor], MaskReport]:
    """Masks of ``method`` for the tensors of a recorded ``trajectory`` (THEORY.md §3).

    ``method``: ``"kmp"`` (``|Re ξ_{k*}|``, the KMD's predicted fixed point; ``strict`` raises
    when it is unreliable), ``"kgp"`` (``|θ̂_j ⊙ ĝ_j|`` at snapshot ``j = at``, or ``|ĝ_j|`` with
    ``kind="gradient"``), ``"magnitude"`` (``|θ_j|``, default the last snapshot), ``"gradient"``
    (``|θ_j ⊙ ḡ|``, ``ḡ`` the mean of the last ``n_batches`` recorded gradients, default
    ``j = m − 1``) or ``"random"`` (``seed``). ``kmd``: a KMD already fitted to ``trajectory``.
    Returns ``({state_dict name: bool tensor}, MaskReport)``; see ``masks_from_scores`` for
    ``sparsity``/``compression``/``scope``/``model``/``device``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}")
    traj = _trajectory_of(trajectory)
    # Fail on the sparsity request before the (possibly long) scoring.
    resolve_sparsity(sparsity, compression, layout=traj.layout)
    info: dict[str, Any] = {}
    if method in ("kmp", "kgp"):
        if kmd is None:
            kmd = KMD().fit(traj)
        info.update(rank=int(kmd.rank_), kmd_method=str(kmd.solver_))
        if method == "kmp":
            scores = kmp_scores(kmd, strict=strict)
            fp = kmd.fixed_point_info_
            info.update(stationary_eigenvalue=complex(fp.eigenvalue),
                        distance_from_one=float(fp.distance_from_one))
        else:
            scores = kgp_scores(kmd, at=at, kind=kind)
            info["at"] = traj.n_snapshots - 1 if at is None else at
    elif method == "magnitude":
        j = traj.n_snapshots - 1 if at is None else int(at)
        scores = magnitude_scores(traj.snapshots[j, :])
        info["at"] = j
    elif method == "gradient":
        scores, extra = _recorded_gradient_scores(traj, at, n_batches, kind)
        info.update(extra)
    else:
        scores = random_scores(traj.snapshots[0, :], seed)
        info["seed"] = seed
    masks, report = masks_from_scores(scores, traj.layout, sparsity, compression, scope,
                                      model=model, device=device,
                                      max_layer_sparsity=max_layer_sparsity, method=method,
                                      metadata=traj.metadata)
    report.info.update(info)
    return masks, report


# --------------------------------------------------------------------------- gradients of a model
def gradient_scores(model: nn.Module, loss_fn: Callable[[Any, Any], Any], batches: Iterable[Any],
                    n_batches: int = 10, *, kind: str = "weight_times_gradient",
                    average: str = "gradient", layout: ParamLayout | None = None,
                    prunable: Any = None, non_prunable: str = "record", xp: Any = None) -> Any:
    """Gradient-pruning scores of a torch model over ``n_batches`` mini-batches (THEORY.md §3.2).

    ``batches`` yields ``(inputs, targets)``; ``loss_fn(model(inputs), targets)`` is the loss.
    ``average="gradient"``: ``|w ⊙ ḡ|`` with ``ḡ`` the mean gradient (an estimate of ``∇L``, as
    for native models); ``average="score"``: the mean of ``|w ⊙ g_b|``. ``kind="gradient"`` drops
    ``w``. ``w`` are the effective weights. Gradients come from ``torch.autograd.grad``, so
    ``.grad`` fields are untouched, and buffers (BatchNorm statistics) are restored afterwards.
    Returns float64 ``(n,)`` in ``layout`` order (default: ``select_parameters(model, ...)``) on
    backend ``xp``.
    """
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}")
    if kind not in ("weight_times_gradient", "gradient"):
        raise ValueError(f"kind must be 'weight_times_gradient' or 'gradient', got {kind!r}")
    if average not in ("gradient", "score"):
        raise ValueError(f"average must be 'gradient' (|w * mean g|) or 'score' "
                         f"(mean |w * g|), got {average!r}")
    if layout is None:
        layout, refs = select_parameters(model, prunable, non_prunable, warn_tied=False)
    else:
        refs = check_layout(model, layout)
    params = [r.param for r in refs]
    device = params[0].device
    theta = torch.zeros(layout.size, dtype=torch.float64, device=device)
    with torch.no_grad():
        for ref, (off, size, shape) in zip(refs, _slots(layout)):
            write_effective(ref, theta[off:off + size].view(shape))
    if kind == "gradient":
        theta.fill_(1.0)
    total = torch.zeros_like(theta)
    flat_grad = torch.zeros_like(theta)
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    used = 0
    try:
        for batch in batches:
            if used == n_batches:
                break
            inputs, targets = batch
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for (off, size, shape), g in zip(_slots(layout), grads):
                    view = flat_grad[off:off + size].view(shape)
                    view.zero_() if g is None else view.copy_(g)
                total += flat_grad.abs_().mul_(theta.abs()) if average == "score" else flat_grad
            used += 1
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])
    if used == 0:
        raise ValueError("gradient_scores: batches yielded no batch")
    total /= used
    scores = total if average == "score" else (theta * total).abs_()
    return to_backend(scores, xp)


def _slots(layout: ParamLayout) -> list[tuple[int, int, tuple[int, ...]]]:
    return list(zip(layout.offsets, layout.sizes, layout.shapes))


# --------------------------------------------------------------------------- export to torch
def importance_scores(scores: Any, model: nn.Module, layout: ParamLayout | None = None
                      ) -> tuple[list[tuple[nn.Module, str]], dict[tuple[nn.Module, str], Any]]:
    """``(parameters, importance_scores)`` for ``torch.nn.utils.prune.global_unstructured``.

    ``scores``: flat ``(n,)`` scores on ``layout``, or a ``MaskReport`` (its scores and layout).
    Only prunable tensors are listed, each under its canonical owner. Use as
    ``prune.global_unstructured(parameters, prune.L1Unstructured, importance_scores=imp,
    amount=p)``. (torch breaks ties in its own order, kooplearn_prune by index.)
    """
    if isinstance(scores, MaskReport):
        layout = scores.layout if layout is None else layout
        scores = scores.scores
    if layout is None:
        raise ValueError("importance_scores needs layout= (or a MaskReport as scores)")
    refs = check_layout(model, layout)
    flat = as_torch(to_numpy(scores) if not isinstance(scores, torch.Tensor) else scores)
    layout.check_vector(flat, "scores")
    parameters, importance = [], {}
    for ref, (off, size, shape), prunable in zip(refs, _slots(layout), layout.prunable):
        if not prunable:
            continue
        key = (ref.module, ref.attr)
        parameters.append(key)
        importance[key] = flat[off:off + size].reshape(shape).to(ref.param.device)
    return parameters, importance

