"""Which tensors of a ``torch.nn.Module`` make up θ, and under which names (docs/theory.md §2).

A model that was pruned with ``torch.nn.utils.prune`` stores ``conv.weight_orig`` and a
``conv.weight_mask`` buffer; one reparametrized with ``torch.nn.utils.parametrize`` stores
``conv.parametrizations.weight.original``. Both still *mean* ``conv.weight``. Everything in the
adapter therefore speaks of **canonical names** (the names of the unpruned model's
``state_dict``) and of **effective values** (the tensor the forward pass uses, mask applied).

The order of θ is fixed and does not depend on how a model is currently pruned: modules in
definition order, and within a module its tensors in alphabetical order (``bias`` before
``weight``), because pruning re-registers a parameter and so changes the order of
``named_parameters()``.

A tensor shared by several modules (tied weights) appears once, under the first name met in
that order, with a warning; masks for it are applied to every owner.

A weight computed by a reparametrization that is not a mask (``weight_norm``, old or new style,
``spectral_norm``, ``orthogonal``, any other ``torch.nn.utils.parametrize`` parametrization) is
refused as a prunable tensor, by name: masking its raw tensors (``weight_g``/``weight_v``,
``original0``/``original1``) is not pruning the weight. Its raw tensors may still be recorded
unpruned; remove the reparametrization first, or leave that layer out with ``prunable=``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn.utils import parametrize, prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "kooplearn_prune.adapters.torch needs PyTorch, which is not installed. Install the "
        "'torch' extra: pip install 'kooplearn-prune[torch]'"
    ) from _err

from ...backend import asarray, backend_namespace, is_numpy_namespace
from ...layout import ParamLayout
from .conventions import check_conventions, shrinkbench_can_prune, warn_without_classifier

__all__ = [
    "TensorRef",
    "MaskParametrization",
    "tensor_refs",
    "select_parameters",
    "check_layout",
    "effective_value",
    "to_backend",
    "as_torch",
]

PLAIN, PRUNED, PARAMETRIZED = "plain", "pruned", "parametrized"
_PRUNABLE_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
#: Old-style reparametrizations (forward pre-hooks with a ``name``) that are not masks.
_REPARAM_HOOKS = (WeightNorm, SpectralNorm)


class MaskParametrization(nn.Module):
    """``torch.nn.utils.parametrize`` parametrization ``w ↦ w ⊙ mask`` (deepcopy- and pickle-safe).

    ``mask``: a buffer of the weight's shape and dtype, 1 = kept, 0 = pruned. It is saved in the
    ``state_dict`` as ``<module>.parametrizations.<name>.0.mask``.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@dataclass
class TensorRef:
    """One tensor of θ: its canonical name, where it lives, and how it is reparametrized.

    ``param`` is the trainable leaf tensor (``weight``, ``weight_orig`` or
    ``parametrizations.weight.original``); ``owners`` lists every ``(module, attribute)`` that
    uses it (more than one for tied weights), the canonical owner first; ``aliases`` their
    canonical names.
    """

    name: str
    param: torch.Tensor
    owners: list[tuple[nn.Module, str]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    #: ``(weight name, reparametrization)`` when this tensor is a raw input of a reparametrization
    #: that is not a mask (e.g. ``("fc.weight", "_WeightNorm")`` for ``fc.weight_g``), else None.
    reparam: tuple[str, str] | None = None

    @property
    def module(self) -> nn.Module:
        return self.owners[0][0]

    @property
    def attr(self) -> str:
        return self.owners[0][1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


def _prune_hook(module: nn.Module, attr: str) -> Any:
    """The ``torch.nn.utils.prune`` forward pre-hook that masks ``module.<attr>``, or None."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == attr:
            return hook
    return None


def owner_state(module: nn.Module, attr: str) -> str:
    """``"plain"``, ``"pruned"`` (torch prune), ``"parametrized"`` (ours) or ``"foreign"``."""
    if _prune_hook(module, attr) is not None:
        return PRUNED
    if parametrize.is_parametrized(module, attr):
        plist = module.parametrizations[attr]
        if len(plist) == 1 and isinstance(plist[0], MaskParametrization) \
                and hasattr(plist, "original"):
            return PARAMETRIZED
        return "foreign"
    return PLAIN


def _foreign_reparams(module: nn.Module) -> dict[str, str]:
    """``{attribute: kind}`` of a module's tensors computed by a reparametrization, not a mask.

    ``torch.nn.utils.parametrize`` parametrizations other than one ``MaskParametrization``, and
    the old hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm``.
    """
    found: dict[str, str] = {}
    if parametrize.is_parametrized(module):
        for attr, plist in module.parametrizations.items():
            if owner_state(module, attr) == "foreign":
                found[attr] = " + ".join(type(p).__name__ for p in plist)
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _REPARAM_HOOKS):
            found[hook.name] = type(hook).__name__
    return found


def _module_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, str | None]]:
    """``(attribute, trainable leaf, reparametrized attribute)`` for the tensors a module owns
    directly, sorted by name; the last item names the attribute a non-mask reparametrization
    computes from that leaf (``"weight"`` for ``weight_g``), else None."""
    found: dict[str, torch.Tensor] = {}
    reparam: dict[str, str] = {}
    foreign = _foreign_reparams(module)
    for key, value in module._parameters.items():
        if value is None:
            continue
        if key.endswith("_orig") and _prune_hook(module, key[:-5]) is not None:
            found[key[:-5]] = value
        else:
            found[key] = value
            for attr in foreign:  # old hooks: weight_g / weight_v, spectral norm's weight_orig
                if key.startswith(attr + "_"):
                    reparam[key] = attr
    if parametrize.is_parametrized(module):
        for attr, plist in module.parametrizations.items():
            if hasattr(plist, "original"):
                found[attr] = plist.original
                if attr in foreign:
                    reparam[attr] = attr
            else:  # a parametrization of several tensors (e.g. weight norm): keep the raw ones
                k = 0
                while hasattr(plist, f"original{k}"):
                    key = f"parametrizations.{attr}.original{k}"
                    found[key] = getattr(plist, f"original{k}")
                    reparam[key] = attr
                    k += 1
    for key in sorted(found):
        yield key, found[key], reparam.get(key)


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Modules in definition order, repeats included, without parametrization internals."""
    yield prefix, module
    for child_name, child in module._modules.items():
        if child is None:
            continue
        if child_name == "parametrizations" and parametrize.is_parametrized(module):
            continue
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


def tensor_refs(model: nn.Module) -> list[TensorRef]:
    """Every distinct tensor of ``model`` once, in the fixed order (frozen ones included)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refs: list[TensorRef] = []
    by_id: dict[int, TensorRef] = {}
    for prefix, module in _walk(model):
        kinds = _foreign_reparams(module)
        for attr, leaf, computed in _module_tensors(module):
            name = f"{prefix}.{attr}" if prefix else attr
            ref = by_id.get(id(leaf))
            if ref is None:
                ref = TensorRef(name, leaf)
                if computed is not None:
                    ref.reparam = (f"{prefix}.{computed}" if prefix else computed,
                                   kinds[computed])
                by_id[id(leaf)] = ref
                refs.append(ref)
            elif name not in ref.aliases and name != ref.name:
                ref.aliases.append(name)
            if not any(m is module and a == attr for m, a in ref.owners) and "." not in attr:
                ref.owners.append((module, attr))
    return refs


def _is_default_prunable(ref: TensorRef) -> bool:
    return any(attr == "weight" and isinstance(m, _PRUNABLE_TYPES) for m, attr in ref.owners)


def _reparametrized_weights(model: nn.Module) -> dict[str, str]:
    """``{weight name: kind}``: Linear / Conv weights a non-mask reparametrization computes."""
    found = {}
    for prefix, module in _walk(model):
        if isinstance(module, _PRUNABLE_TYPES):
            kind = _foreign_reparams(module).get("weight")
            if kind is not None:
                found[f"{prefix}.weight" if prefix else "weight"] = kind
    return found


def _refuse_reparametrized(found: dict[str, str], how: str, others: Iterable[str] = ()) -> None:
    """``ValueError`` naming the weights a non-mask reparametrization computes, and the fixes."""
    if not found:
        return
    listed = ", ".join(f"{name!r} ({kind})" for name, kind in found.items())
    others = [n for n in others if n not in found]
    raise ValueError(
        f"{how} {listed}, which a reparametrization that is not a mask computes from raw tensors "
        f"(weight_g/weight_v, original0/original1, original, ...): masking those would not prune "
        f"the weight. Remove the reparametrization first (torch.nn.utils.parametrize."
        f"remove_parametrizations(layer, 'weight'), or torch.nn.utils.remove_weight_norm / "
        f"remove_spectral_norm for the old hooks), or leave these layers out with "
        f"prunable={others if others else '[...]'} (their raw tensors are then recorded "
        f"unpruned)")


def _lookup(refs: Iterable[TensorRef]) -> dict[str, TensorRef]:
    """Canonical names and aliases → their ``TensorRef``."""
    table: dict[str, TensorRef] = {}
    for ref in refs:
        table[ref.name] = ref
        for alias in ref.aliases:
            table[alias] = ref
    return table


def select_parameters(
    model: nn.Module,
    prunable: Iterable[str] | Callable[[str, torch.Tensor], bool] | None = None,
    non_prunable: str = "record",
    *,
    warn_tied: bool = True,
    conventions: str = "library",
) -> tuple[ParamLayout, list[TensorRef]]:
    """The ``ParamLayout`` of the tensors to record, and where each one lives.

    ``prunable``: ``None`` (the weights of ``Linear`` and ``Conv`` layers), a collection of
    state_dict names, or a callable ``(name, tensor) -> bool``. ``non_prunable="record"`` keeps
    the other trainable tensors (biases, normalization) in θ without pruning them;
    ``"exclude"`` leaves them out. Tensors with ``requires_grad=False`` are never recorded.
    A tied tensor is recorded once, under its first name, with a warning.

    ``conventions`` (module ``conventions``): ``"library"`` is the rule above;
    ``"shrinkbench"`` selects what ShrinkBench prunes (weights and biases of ``Linear`` and
    ``Conv2d`` layers, not the one marked ``is_classifier = True``) and cannot be combined
    with ``prunable=``.
    """
    if non_prunable not in ("record", "exclude"):
        raise ValueError(f"non_prunable must be 'record' (keep biases and normalization "
                         f"parameters in θ, unpruned) or 'exclude', got {non_prunable!r}")
    if check_conventions(conventions) != "library" and prunable is not None:
        raise ValueError(f"give either prunable= or conventions={conventions!r}, not both (the "
                         f"conventions already say which tensors are prunable)")
    refs = tensor_refs(model)
    trainable = [r for r in refs if r.param.requires_grad]
    if conventions == "shrinkbench":
        flags = [any(shrinkbench_can_prune(m) for m, _ in r.owners) for r in trainable]
        if not any(flags):
            raise ValueError("conventions='shrinkbench' finds no prunable tensor: the model has "
                             "no trainable nn.Linear or nn.Conv2d layer outside the one marked "
                             "is_classifier = True; use conventions='library' or prunable=[...]")
        warn_without_classifier(model)
    elif prunable is None:
        flags = [_is_default_prunable(r) for r in trainable]
        _refuse_reparametrized(_reparametrized_weights(model),
                               "prunable=None selects the Linear and Conv weights, including",
                               [r.name for r, f in zip(trainable, flags) if f])
    elif callable(prunable):
        flags = [bool(prunable(r.name, r.param)) for r in trainable]
    else:
        if isinstance(prunable, str):
            raise TypeError("prunable must be a collection of names, e.g. ['fc.weight'], not a "
                            "single string")
        table = _lookup(refs)
        chosen = list(prunable)
        unknown = [n for n in chosen if n not in table]
        if unknown:
            raise ValueError(f"prunable names {unknown} are not tensors of the model; its "
                             f"state_dict names are {[r.name for r in refs]}")
        frozen = [n for n in chosen if not table[n].param.requires_grad]
        if frozen:
            raise ValueError(f"prunable names {frozen} have requires_grad=False and are not "
                             f"recorded; unfreeze them or leave them out")
        ids = {id(table[n]) for n in chosen}
        flags = [id(r) in ids for r in trainable]
    _refuse_reparametrized(dict(r.reparam for r, f in zip(trainable, flags) if f and r.reparam),
                           "prunable= selects tensors of")
    pairs = [(r, f) for r, f in zip(trainable, flags) if f or non_prunable == "record"]
    if not pairs:
        raise ValueError("no tensor selected: the model has no trainable tensor matching "
                         "prunable= (and non_prunable='exclude' drops the rest)")
    if warn_tied:
        for ref, _ in pairs:
            if ref.aliases:
                warnings.warn(
                    f"{ref.name!r} is the same tensor as {ref.aliases} (tied weights): it is "
                    f"recorded once as {ref.name!r}, and its mask applies to every owner",
                    UserWarning, stacklevel=3)
    layout = ParamLayout(tuple(r.name for r, _ in pairs), tuple(r.shape for r, _ in pairs),
                         tuple(f for _, f in pairs))
    return layout, [r for r, _ in pairs]


def check_layout(model: nn.Module, layout: ParamLayout) -> list[TensorRef]:
    """The model's tensors in ``layout`` order; ``ValueError`` listing every mismatch otherwise."""
    if not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    refs = tensor_refs(model)
    table = _lookup(refs)
    missing = [n for n in layout.names if n not in table]
    wrong = [f"{n}: layout {s}, model {table[n].shape}"
             for n, s in zip(layout.names, layout.shapes) if n in table and table[n].shape != s]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"names not in the model: {missing}")
        if wrong:
            parts.append(f"shape mismatches: {wrong}")
        raise ValueError(
            "the layout does not match the model (" + "; ".join(parts) + f"). The model's "
            f"tensors are {[(r.name, r.shape) for r in refs]}; record, score and mask with the "
            f"same model architecture")
    chosen = [table[n] for n in layout.names]
    _refuse_reparametrized(dict(r.reparam for r, f in zip(chosen, layout.prunable)
                                if f and r.reparam), "the layout marks as prunable tensors of")
    return chosen


def effective_value(ref: TensorRef) -> torch.Tensor:
    """The value the forward pass uses for ``ref`` (mask applied), without autograd history."""
    module, attr = ref.owners[0] if ref.owners else (None, None)
    with torch.no_grad():
        if module is None:
            return ref.param.detach()
        state = owner_state(module, attr)
        if state == PRUNED:
            return ref.param.detach() * module._buffers[attr + "_mask"]
        if state == PLAIN:
            return ref.param.detach()
        return getattr(module, attr).detach()


def write_effective(ref: TensorRef, out: torch.Tensor) -> None:
    """Write the effective value of ``ref`` into ``out`` (a view of the tensor's shape)."""
    module, attr = ref.owners[0] if ref.owners else (None, None)
    state = PLAIN if module is None else owner_state(module, attr)
    if state == PLAIN:
        out.copy_(ref.param)
    elif state == PRUNED:
        out.copy_(ref.param)
        out.mul_(module._buffers[attr + "_mask"])
    else:
        out.copy_(getattr(module, attr))


# --------------------------------------------------------------------------- array hand-off
def to_backend(tensor: torch.Tensor, xp: Any = None) -> Any:
    """A torch tensor as an array of ``xp`` (default: the current backend), zero-copy if possible.

    CPU tensor → NumPy: ``tensor.numpy()`` shares memory. CUDA tensor → CuPy: DLPack, shares
    memory. Otherwise the values are copied (CUDA → host NumPy, or → array_api_strict); a
    ``bfloat16`` tensor, which NumPy lacks, is copied to ``float32``.
    """
    xp = backend_namespace() if xp is None else xp
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    if is_numpy_namespace(xp):
        return tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()
    if "cupy" in xp.__name__ and tensor.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(tensor)
    host = tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()
    return asarray(host, xp=xp)


def as_torch(array: Any, device: Any = None) -> torch.Tensor:
    """A backend array (NumPy, CuPy, array_api_strict) or tensor as a torch tensor on ``device``."""
    if isinstance(array, torch.Tensor):
        t = array
    elif isinstance(array, (np.ndarray, np.generic)):
        t = torch.from_numpy(np.ascontiguousarray(array))
    elif type(array).__module__.split(".")[0] == "cupy":
        t = torch.from_dlpack(array)
    elif hasattr(array, "__dlpack__"):
        t = torch.from_numpy(np.from_dlpack(array))
    else:
        t = torch.as_tensor(np.asarray(array))
    return t if device is None else t.to(device)
