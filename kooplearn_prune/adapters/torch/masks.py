"""Masks for a torch model from a recorded trajectory (docs/theory.md §8, §13).

``koopman_masks`` scores the recorded parameters with any method of the registry
(``kooplearn_prune.methods``: KMP, KGP, magnitude, gradient, random, ...), hands the scores
to the one exact-k selection engine (``pruning.global_mask`` / ``layerwise_mask``) and returns
``{state_dict name: bool tensor}`` plus a ``MaskReport``.
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
from ...koopman import KMD
from ...layout import ParamLayout
from ...metadata import TrainingMetadata
from ...methods import get_method, method_scores, recorded_gradient_rows
from ...pruning.masks import (
    COMPRESSION_OVER,
    global_mask,
    layerwise_mask,
    masks_by_name,
    resolve_sparsity,
)
from ...pruning.metrics import compression as mask_compression
from ...pruning.metrics import format_mask_table, mask_table
from ...pruning.metrics import sparsity as mask_sparsity
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

__all__ = ["MaskReport", "koopman_masks", "masks_from_scores", "gradient_scores",
           "importance_scores"]

SCOPES = ("global", "layerwise")


@dataclass
class MaskReport:
    """What a mask removes, counted on the layout (docs/theory.md §13); ``str(report)`` is a table.

    ``requested_sparsity`` is ``p`` resolved from ``sparsity=`` or ``compression=``
    (``requested_compression`` over the set ``requested_over`` names). ``sparsity`` is realized
    over the prunable set, ``sparsity_all`` over all ``n_total`` parameters (those not recorded
    count as kept); ``compression_prunable = 1 / (1 − sparsity)``, ``compression_all =
    n_total / kept`` (ShrinkBench's).
    ``table``: per-tensor rows of ``pruning.mask_table``. ``scores`` (float64, ``(n,)``) and
    ``flat_mask`` (bool, ``(n,)``) are on the backend.
    """

    method: str
    scope: str
    requested_sparsity: float
    requested_compression: float | None
    requested_over: str
    sparsity: float
    sparsity_all: float
    compression_prunable: float
    compression_all: float
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
        keys = ("method", "scope", "requested_sparsity", "requested_compression",
                "requested_over", "sparsity", "sparsity_all", "compression_prunable",
                "compression_all", "n_params",
                "n_prunable", "n_total", "n_pruned", "table", "info")
        return {k: getattr(self, k) for k in keys}

    def __str__(self) -> str:
        asked = (f"compression {self.requested_compression:g} over {self.requested_over} -> "
                 f"sparsity "
                 f"{self.requested_sparsity:.4f}" if self.requested_compression is not None
                 else f"sparsity {self.requested_sparsity:.4f}")
        head = (f"{self.method} mask ({self.scope}): requested {asked}; realized sparsity "
                f"{self.sparsity:.4f} of {self.n_prunable} prunable, {self.sparsity_all:.4f} of "
                f"all {self.n_total} parameters; compression {self.compression_prunable:.4g} "
                f"over prunable, {self.compression_all:.4g} over all (ShrinkBench's)")
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
                      metadata: Any = None, over: str = COMPRESSION_OVER,
                      ) -> tuple[dict[str, torch.Tensor], MaskReport]:
    """``({state_dict name: bool tensor}, MaskReport)`` from flat scores ``(n,)`` on ``layout``.

    Masks are returned for the prunable tensors only (the report covers every tensor).

    docs/theory.md §8, §13: the ``k = round(p · n_prunable)`` smallest prunable scores are removed
    (ties by index), over all prunable tensors (``scope="global"``) or tensor by tensor
    (``"layerwise"``). Give ``sparsity`` or ``compression`` over the set ``over`` names
    (``"prunable"`` by default; ``"all"``: ShrinkBench's all / nonzero, where "all" counts every
    parameter of ``model`` when given, recorded or not). Masks go to each
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
    p = resolve_sparsity(sparsity, compression, layout=counting, over=over)
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
        requested_over=over,
        sparsity=mask_sparsity(flat, layout), sparsity_all=n_pruned / max(n_total, 1),
        compression_prunable=mask_compression(flat, layout, over="prunable"),
        compression_all=math.inf if kept + max(extra, 0) == 0
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


def koopman_masks(trajectory: Any, method: str = "kmp", sparsity: float | None = None,
                  compression: float | None = None, scope: str | None = None, *,
                  model: nn.Module | None = None, device: Any = None, at: int | None = None,
                  kind: str = "weight_times_gradient", n_batches: int = 10, seed: int = 0,
                  kmd: KMD | None = None, max_layer_sparsity: float | None = None,
                  strict: bool = False, over: str = COMPRESSION_OVER,
                  horizon: float | None = None, converged: Any = None,
                  ) -> tuple[dict[str, torch.Tensor], MaskReport]:
    """Masks of a registered pruning ``method`` for the tensors of a recorded ``trajectory``.

    ``method`` is any name of ``kooplearn_prune.methods.METHODS`` (docs/theory.md §8-§11):
    ``"kmp"`` (the KMD's predicted fixed point; ``strict`` raises when it is unreliable),
    ``"kgp"`` (``|θ̂_j ⊙ ĝ_j|`` at snapshot ``j = at``, or ``|ĝ_j|`` with ``kind="gradient"``),
    ``"magnitude"`` / ``"magnitude_layerwise"`` (``|θ_j|``, default the last snapshot),
    ``"gradient"`` (``|θ_j ⊙ ḡ|``, ``ḡ`` the mean of the last ``n_batches`` recorded gradients,
    default ``j = m − 1``), ``"random"`` (``seed``), and the controls of docs/theory.md §12:
    ``"trend_two_point"`` / ``"trend_lstsq"`` (the window's trend extrapolated ``horizon``
    snapshot intervals ahead, default one window length), ``"window_mean"``, ``"oracle"``
    (``|θ|`` of ``converged``, the converged network's flat θ in layout order, a torch tensor or
    an array). ``kmd``: a KMD already fitted to ``trajectory``. ``scope`` defaults to the
    method's own. Returns
    ``({state_dict name: bool tensor}, MaskReport)``; see ``masks_from_scores`` for
    ``sparsity``/``compression``/``scope``/``model``/``device``.
    """
    spec = get_method(method)
    scope = spec.scope if scope is None else scope
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    traj = _trajectory_of(trajectory)
    # Fail on the sparsity request before the (possibly long) scoring.
    resolve_sparsity(sparsity, compression, layout=traj.layout, over=over)
    if spec.needs_kmd and kmd is None:
        kmd = KMD().fit(traj)
    if isinstance(converged, torch.Tensor):
        converged = to_backend(converged)
    scores = method_scores(method, traj, at=at, kmd=kmd, n_batches=n_batches, seed=seed,
                           kind=kind, strict=strict, horizon=horizon, converged=converged)
    info: dict[str, Any] = {"at": _scored_snapshot(spec, traj, at)}
    if spec.needs_kmd:
        info.update(rank=int(kmd.rank_), kmd_solver=str(kmd.solver_))
    if method == "kmp":
        fp = kmd.fixed_point_info_
        info.update(stationary_eigenvalue=complex(fp.eigenvalue),
                    distance_from_one=float(fp.distance_from_one))
    if method == "random":
        info["seed"] = seed
    if spec.needs_gradient:
        info["gradient_rows"] = recorded_gradient_rows(traj, info["at"], n_batches)
    masks, report = masks_from_scores(scores, traj.layout, sparsity, compression, scope,
                                      model=model, device=device,
                                      max_layer_sparsity=max_layer_sparsity, method=method,
                                      metadata=traj.metadata, over=over)
    report.info.update(info)
    return masks, report


def _scored_snapshot(spec: Any, traj: Trajectory, at: int | None) -> int:
    """The snapshot index the scores describe (the gradient's default is the last but one)."""
    if at is not None:
        return int(at)
    return traj.n_snapshots - (2 if spec.needs_gradient else 1)


# --------------------------------------------------------------------------- gradients of a model
def gradient_scores(model: nn.Module, batches: Iterable[Any], *,
                    loss: Callable[[Any, Any], Any] | None = None, n_batches: int = 10,
                    kind: str = "weight_times_gradient",
                    average: str = "gradient", layout: ParamLayout | None = None,
                    prunable: Any = None, non_prunable: str = "record", xp: Any = None) -> Any:
    """Gradient-pruning scores of a torch model over ``n_batches`` batches (docs/theory.md §11).

    Same argument order as the native ``pruning.gradient_scores``. ``batches`` yields
    ``(inputs, targets)``; ``loss(model(inputs), targets)`` is the loss (default
    ``torch.nn.functional.cross_entropy``).
    ``average="gradient"``: ``|w ⊙ ḡ|`` with ``ḡ`` the mean gradient (an estimate of ``∇L``, as
    for native models); ``average="score"``: the mean of ``|w ⊙ g_b|``. ``kind="gradient"`` drops
    ``w``. ``w`` are the effective weights. Gradients come from ``torch.autograd.grad``, so
    ``.grad`` fields are untouched, and buffers (BatchNorm statistics) are restored afterwards.
    Returns float64 ``(n,)`` in ``layout`` order (default: ``select_parameters(model, ...)``) on
    backend ``xp``.
    """
    if callable(batches) and not hasattr(batches, "__iter__"):
        raise TypeError("gradient_scores(model, batches, *, loss=...): batches come second and "
                        "the loss function is given as loss=")
    loss_fn = torch.nn.functional.cross_entropy if loss is None else loss
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

