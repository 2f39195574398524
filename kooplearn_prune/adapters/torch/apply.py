"""Applying masks to a ``torch.nn.Module`` and keeping them applied (docs/theory.md §8).

Three ways to apply ``{state_dict name: bool tensor}`` (``True`` = kept):

* ``"prune"``: ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``). An existing mask is
  *replaced* (``prune.custom_from_mask`` would intersect it with the new one);
* ``"parametrize"``: ``torch.nn.utils.parametrize`` with ``MaskParametrization``; survives
  ``copy.deepcopy`` and pickling;
* ``"bake"``: the pruned entries are set to zero in place, no reparametrization.

Every owner of a tied tensor gets the mask. ``MaskEnforcer`` keeps pruned weights *and* their
optimizer state (momentum buffers, Adam moments) at zero during fine-tuning; ``make_permanent``
removes the reparametrization and checks that the zeros survived; ``load_pruned_state_dict``
loads a checkpoint saved in any mode into a fresh model.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ...pruning.metrics import compression, mask_table, sparsity
from .params import (
    PARAMETRIZED,
    PRUNED,
    MaskParametrization,
    TensorRef,
    _lookup,
    _prune_hook,
    as_torch,
    effective_value,
    nn,
    owner_state,
    parametrize,
    prune,
    select_parameters,
    tensor_refs,
    torch,
)

__all__ = ["apply_masks", "current_masks", "MaskEnforcer", "make_permanent",
           "load_pruned_state_dict", "model_sparsity", "deepcopy_model"]

MODES = ("prune", "parametrize", "bake")


# --------------------------------------------------------------------------- validation
def _as_mask(value: Any, ref: TensorRef, key: str) -> torch.Tensor:
    """``value`` as a bool tensor of ``ref``'s exact shape on its device; ``ValueError`` if not."""
    try:
        t = as_torch(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"masks[{key!r}] must be a tensor or array, got "
                        f"{type(value).__name__}") from err
    if tuple(t.shape) != ref.shape:
        raise ValueError(f"masks[{key!r}] has shape {tuple(t.shape)} but the parameter has shape "
                         f"{ref.shape}; masks must have the parameter's exact shape")
    if t.dtype != torch.bool:
        if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"masks[{key!r}] is not binary: a mask holds True/1 (kept) and "
                             f"False/0 (pruned) only")
        t = t != 0
    return t.to(ref.param.device)


def _plan(model: nn.Module, masks: Mapping[str, Any]) -> list[tuple[TensorRef, torch.Tensor]]:
    """Check every mask against the model before anything changes; one entry per tensor."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping {{state_dict name: bool tensor}}, got "
                        f"{type(masks).__name__}")
    table = _lookup(tensor_refs(model))
    unknown = [k for k in masks if k not in table]
    if unknown:
        raise ValueError(f"masks name tensors the model does not have: {unknown}; the model's "
                         f"tensors are {sorted({r.name for r in table.values()})}")
    plan: dict[int, tuple[TensorRef, torch.Tensor, str]] = {}
    for key, value in masks.items():
        ref = table[key]
        mask = _as_mask(value, ref, key)
        if not ref.owners:
            raise ValueError(f"masks[{key!r}] targets a tensor that belongs to a multi-tensor "
                             f"parametrization and cannot be masked")
        if id(ref) in plan:
            if not torch.equal(plan[id(ref)][1], mask):
                raise ValueError(f"masks[{key!r}] and masks[{plan[id(ref)][2]!r}] are two names "
                                 f"of one tied tensor but differ")
            continue
        for module, attr in ref.owners:
            if owner_state(module, attr) == "foreign":
                raise ValueError(f"{key!r} carries a parametrization that is not a mask; "
                                 f"remove it before applying masks")
        plan[id(ref)] = (ref, mask, key)
    return [(ref, mask) for ref, mask, _ in plan.values()]


# --------------------------------------------------------------------------- one owner
def _take_place(module: nn.Module, old: str, new: str, keys: list[str]) -> None:
    """Put parameter ``new`` where ``old`` stood in ``keys`` (the order before the change).

    torch's pruning appends ``weight_orig`` at the end of the module's parameters; an optimizer
    built after loading a pruned checkpoint would then number the tensors differently from the
    one that was saved, and hand one tensor's state to another.
    """
    params = module._parameters
    order = [new if key == old else key for key in keys if key in params or key == old]
    order += [key for key in params if key not in order]
    items = [(key, params[key]) for key in order]
    params.clear()
    params.update(items)


def _restore_raw(module: nn.Module, attr: str) -> None:
    """Undo our or torch's mask on ``module.<attr>``: the raw trainable tensor comes back."""
    state = owner_state(module, attr)
    if state == PRUNED:
        hook = _prune_hook(module, attr)
        for key, value in list(module._forward_pre_hooks.items()):
            if value is hook:
                del module._forward_pre_hooks[key]
        keys = list(module._parameters)
        orig = module._parameters.pop(attr + "_orig")
        module._buffers.pop(attr + "_mask")
        module.__dict__.pop(attr, None)
        module.register_parameter(attr, orig)
        _take_place(module, attr + "_orig", attr, keys)
    elif state == PARAMETRIZED:
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)


def _apply_one(module: nn.Module, attr: str, mask: torch.Tensor, mode: str) -> None:
    state = owner_state(module, attr)
    if mode == "prune":
        if state == PRUNED:  # replace the mask; custom_from_mask would intersect the two
            hook = _prune_hook(module, attr)
            module._buffers[attr + "_mask"].copy_(mask)
            setattr(module, attr, hook.apply_mask(module))
            return
        _restore_raw(module, attr)
        keys = list(module._parameters)
        dtype = module._parameters[attr].dtype
        prune.custom_from_mask(module, attr, mask.to(dtype))
        _take_place(module, attr, attr + "_orig", keys)
    elif mode == "parametrize":
        if state == PARAMETRIZED:
            module.parametrizations[attr][0].mask.copy_(mask)
            return
        _restore_raw(module, attr)
        dtype = module._parameters[attr].dtype
        parametrize.register_parametrization(module, attr, MaskParametrization(mask.to(dtype)))
    else:
        _restore_raw(module, attr)
        with torch.no_grad():
            module._parameters[attr].masked_fill_(~mask, 0)


def apply_masks(model: nn.Module, masks: Mapping[str, Any], mode: str = "prune") -> nn.Module:
    """Apply ``{state_dict name: mask}`` to ``model`` in place and return it.

    ``mode``: ``"prune"`` (``torch.nn.utils.prune``: ``weight_orig``/``weight_mask``, an existing
    mask is replaced, not intersected), ``"parametrize"`` (``MaskParametrization``,
    deepcopy-safe) or ``"bake"`` (zero in place). Masks: bool (or 0/1) tensors or arrays of the
    parameters' exact shapes; names may be canonical or ``_orig``-free aliases of tied tensors,
    and every owner of a tied tensor is masked. All masks are checked before anything changes.
    Re-applying in another mode first restores the raw values (the previous mask is dropped).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for ref, mask in _plan(model, masks):
        for module, attr in ref.owners:
            _apply_one(module, attr, mask, mode)
    return model


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks the model carries now (torch prune buffers and ``MaskParametrization``s)."""
    found: dict[str, torch.Tensor] = {}
    for ref in tensor_refs(model):
        for module, attr in ref.owners:
            state = owner_state(module, attr)
            if state == PRUNED:
                found[ref.name] = module._buffers[attr + "_mask"] != 0
            elif state == PARAMETRIZED:
                found[ref.name] = module.parametrizations[attr][0].mask != 0
            if ref.name in found:
                break
    return found


# --------------------------------------------------------------------------- fine-tuning
class MaskEnforcer:
    """Keep pruned weights and their optimizer state at zero while fine-tuning (docs/theory.md §8).

    After each ``optimizer.step()`` (a step post-hook, or a call to ``enforce()``), every pruned
    entry of the trainable tensor (``weight``, ``weight_orig`` or ``...original``) is set to zero,
    and so is the same entry of each optimizer state tensor of that shape (SGD momentum buffer,
    Adam ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, ...), so momentum cannot move it again.
    Before each step the pruned entries of the gradient are zeroed too. ``masks`` default to the
    ones the model carries (modes ``"prune"`` and ``"parametrize"``); pass them for ``"bake"``
    mode or after ``make_permanent``. ``optimizer`` must hold every masked tensor that requires a
    gradient (checked now, before anything is attached): hooks on another model's optimizer would
    never run while this model trains. To fine-tune part of a model, pass ``masks=`` for the
    tensors that optimizer holds.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 masks: Mapping[str, Any] | None = None) -> None:
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got "
                            f"{type(optimizer).__name__}")
        masks = current_masks(model) if masks is None else masks
        if not masks:
            raise ValueError("the model carries no masks (mode 'bake' or after make_permanent): "
                             "pass masks= to MaskEnforcer")
        plan = _plan(model, masks)
        if optimizer is not None:
            _check_optimizer_holds(optimizer, [ref for ref, _ in plan])
        self.model, self.optimizer = model, optimizer
        self._pairs = [(ref.param, ~mask) for ref, mask in plan]
        self._handles: list[Any] = []

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero the pruned entries of the weights, their gradients and the optimizer state."""
        state = {} if self.optimizer is None else self.optimizer.state
        for param, pruned in self._pairs:
            param.masked_fill_(pruned, 0)
            if param.grad is not None:
                param.grad.masked_fill_(pruned, 0)
            for value in state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(pruned, 0)

    @torch.no_grad()
    def _zero_gradients(self, *_: Any) -> None:
        for param, pruned in self._pairs:
            if param.grad is not None:
                param.grad.masked_fill_(pruned, 0)

    def attach(self) -> MaskEnforcer:
        """Enforce now and after every optimizer step (hooks); returns self (a context manager)."""
        if self.optimizer is None:
            raise ValueError("attach() needs the optimizer: MaskEnforcer(model, optimizer)")
        if self._handles:
            raise RuntimeError("the enforcer is already attached")
        self.enforce()
        self._handles = [self.optimizer.register_step_pre_hook(self._zero_gradients),
                         self.optimizer.register_step_post_hook(lambda *_: self.enforce())]
        return self

    def detach(self) -> MaskEnforcer:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self

    def __enter__(self) -> MaskEnforcer:
        if not self._handles:
            self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


def _check_optimizer_holds(optimizer: torch.optim.Optimizer, refs: list[TensorRef]) -> None:
    """``ValueError`` unless ``optimizer`` holds every masked tensor that requires a gradient."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trained = [ref for ref in refs if ref.param.requires_grad]
    missing = [ref.name for ref in trained if id(ref.param) not in held]
    if missing:
        which = "none" if len(missing) == len(trained) else "not all"
        raise ValueError(
            f"MaskEnforcer: optimizer= holds {which} of the masked tensors of this model (missing "
            f"{missing}); it was built for another model or another set of parameters. Pass the "
            f"optimizer that trains this model, e.g. torch.optim.SGD(model.parameters(), ...), "
            f"or restrict masks= to the tensors it holds")


# --------------------------------------------------------------------------- permanence
def make_permanent(model: nn.Module) -> dict[str, torch.Tensor]:
    """Remove every mask reparametrization, keeping the masked values; return the masks.

    Works for ``torch.nn.utils.prune`` (any method) and ``MaskParametrization``. Afterwards each
    tensor is a plain parameter whose pruned entries are checked to be exactly zero
    (``RuntimeError`` otherwise). Nothing stops those zeros from regrowing in later training:
    pass the returned masks to ``MaskEnforcer(model, optimizer, masks)``.
    """
    masks = current_masks(model)
    table = _lookup(tensor_refs(model))
    for name, mask in masks.items():
        ref = table[name]
        for module, attr in ref.owners:
            state = owner_state(module, attr)
            if state == PRUNED:
                keys = list(module._parameters)
                prune.remove(module, attr)
                _take_place(module, attr + "_orig", attr, keys)
            elif state == PARAMETRIZED:
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        survivors = int(torch.count_nonzero(ref.param.detach()[~mask]))
        if survivors:
            raise RuntimeError(f"make_permanent: {survivors} pruned entries of {name!r} are not "
                               f"zero after removing the mask (non-finite weights?)")
    return masks


# --------------------------------------------------------------------------- checkpoints
_PARAMETRIZED_KEY = re.compile(
    r"^(?:(?P<prefix>.*)\.)?parametrizations\.(?P<attr>[^.]+)\.(?P<rest>.+)$")


def _parse_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """Canonical raw values, masks and the mode each mask was saved in.

    ``x_orig`` + ``x_mask`` → ``x`` (prune); ``p.parametrizations.x.original`` +
    ``p.parametrizations.x.0.mask`` → ``p.x`` (parametrize); every other key as it is.
    """
    raw: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    modes: dict[str, str] = {}
    for key, value in state_dict.items():
        if key.endswith("_orig") and key[:-5] + "_mask" in state_dict:
            raw[key[:-5]] = value
            masks[key[:-5]] = state_dict[key[:-5] + "_mask"]
            modes[key[:-5]] = "prune"
            continue
        if key.endswith("_mask") and key[:-5] + "_orig" in state_dict:
            continue
        match = _PARAMETRIZED_KEY.match(key)
        if match:
            prefix, attr, rest = match["prefix"], match["attr"], match["rest"]
            name = f"{prefix}.{attr}" if prefix else attr
            base = key[: -len(rest)]
            if rest == "original" and base + "0.mask" in state_dict \
                    and not any(k.startswith(base + "1.") for k in state_dict):
                raw[name] = value
                masks[name] = state_dict[base + "0.mask"]
                modes[name] = "parametrize"
                continue
            if rest == "0.mask" and base + "original" in state_dict:
                continue
            raise ValueError(f"state_dict key {key!r} belongs to a parametrization that is not "
                             f"a kooplearn_prune mask; load it with model.load_state_dict")
        raw[key] = value
    return raw, masks, modes


def load_pruned_state_dict(model: nn.Module, state_dict: Mapping[str, Any], mode: str | None = None,
                           strict: bool = True) -> dict[str, torch.Tensor]:
    """Load a checkpoint saved in any mode (prune, parametrize, bake) into ``model``.

    The masks found in the checkpoint are applied again, in the mode they were saved in or in
    ``mode`` when given; the raw trainable values (``weight_orig``, ``...original``) are
    restored too. ``model`` may be fresh (dense) or carry masks already (they are replaced).
    Missing or unexpected keys raise ``ValueError`` (with ``strict``) before ``model`` changes.
    Returns the masks (empty for a ``"bake"`` checkpoint, whose zeros are in the weights).
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be None (as saved) or one of {MODES}, got {mode!r}")
    raw, masks, modes = _parse_state_dict(state_dict)
    target_raw, _, _ = _parse_state_dict(model.state_dict())
    missing = sorted(set(target_raw) - set(raw))
    unexpected = sorted(set(raw) - set(target_raw))
    if strict and (missing or unexpected):
        raise ValueError(f"the checkpoint does not fit the model: missing {missing}, unexpected "
                         f"{unexpected} (canonical names, pruning suffixes removed)")
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target_raw[k].shape)}"
             for k, v in raw.items() if k in target_raw and hasattr(v, "shape")
             and tuple(v.shape) != tuple(target_raw[k].shape)]
    if wrong:
        raise ValueError(f"the checkpoint does not fit the model: shape mismatches {wrong}")
    table = _lookup(tensor_refs(model))
    for name, mask in masks.items():  # validate before any change
        _as_mask(mask, table[name], name)
    for ref in tensor_refs(model):
        for module, attr in ref.owners:
            if owner_state(module, attr) in (PRUNED, PARAMETRIZED):
                _restore_raw(module, attr)
    model.load_state_dict(raw, strict=strict)
    by_mode: dict[str, dict[str, Any]] = {}
    for name, mask in masks.items():
        by_mode.setdefault(mode or modes[name], {})[name] = mask
    for how, group in by_mode.items():
        apply_masks(model, group, mode=how)
    return {table[name].name: _as_mask(mask, table[name], name) for name, mask in masks.items()}


# --------------------------------------------------------------------------- inspection
def model_sparsity(model: nn.Module, prunable: Any = None,
                   non_prunable: str = "record") -> dict[str, Any]:
    """Zeros of the *effective* weights (masks applied), which ``model.parameters()`` hides.

    docs/theory.md §13. Returns ``sparsity`` (zero fraction of the prunable set), ``sparsity_all``,
    ``compression_prunable`` and ``compression_all`` (ShrinkBench's all / nonzero) over the
    selected tensors, and ``table`` (the
    per-tensor rows of ``pruning.mask_table`` for the nonzero pattern).
    """
    layout, refs = select_parameters(model, prunable, non_prunable, warn_tied=False)
    nonzero = np.concatenate([(effective_value(r) != 0).cpu().numpy().reshape(-1) for r in refs])
    return {
        "sparsity": sparsity(nonzero, layout),
        "sparsity_all": 1.0 - float(nonzero.sum()) / max(layout.size, 1),
        "compression_prunable": compression(nonzero, layout, over="prunable"),
        "compression_all": compression(nonzero, layout, over="all"),
        "table": mask_table(nonzero, layout),
    }


@contextlib.contextmanager
def _detached_prune_attributes(model: nn.Module) -> Iterator[None]:
    """Temporarily replace the computed ``weight`` attributes of pruned modules by leaves."""
    saved = []
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name in module.__dict__:
                name = hook._tensor_name
                saved.append((module, name, module.__dict__[name]))
                module.__dict__[name] = module.__dict__[name].detach()
    try:
        yield
    finally:
        for module, name, value in saved:
            module.__dict__[name] = value


def deepcopy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works in ``"prune"`` mode (plain deepcopy fails there).

    The pruned modules' computed ``weight`` tensors are not graph leaves, which deepcopy
    refuses; they are detached for the copy (the copy recomputes them at its first forward).
    """
    with _detached_prune_attributes(model):
        return copy.deepcopy(model)

