"""PyTorch adapter: record any ``torch.nn.Module``'s training, prune it with Koopman masks.

Importing this package does not import PyTorch: each name below is loaded from its module on first
use, and a missing PyTorch then raises an ``ImportError`` naming the ``torch`` extra
(``pip install 'kooplearn-prune[torch]'``). The modules:

* ``params``: which tensors form θ, under canonical ``state_dict`` names, and their effective
  (masked) values — ``select_parameters``, ``check_layout``;
* ``record``: ``TorchRecorder`` (optimizer hook or explicit ``step()``) → ``Trajectory``;
* ``masks``: ``koopman_masks`` (every method of ``kooplearn_prune.methods``) → masks + report,
  ``gradient_scores`` over several batches, ``importance_scores`` for
  ``torch.nn.utils.prune.global_unstructured``;
* ``apply``: ``apply_masks`` (``"prune"``, ``"parametrize"``, ``"bake"``), ``MaskEnforcer``
  for fine-tuning, ``make_permanent``, ``load_pruned_state_dict``, ``model_sparsity``,
  ``deepcopy_model``;
* ``models``: the paper's networks (``mnistnet``, CIFAR ``resnet20`` ... ``resnet110``) in
  ``MODELS``, and ``build_model`` (a built-in name or ``"package.module:function"``);
* ``iterative``: ``iterative_pruning`` (lottery-ticket levels, rewinding to a recorded step),
  ``default_train_fn``, ``accuracy_on``;
* ``conventions``: ``select_parameters(model, conventions="shrinkbench")`` prunes what ShrinkBench
  prunes; ``compression_over`` says which set its compression counts;
* ``distributed``: ``DistributedRecorder`` (each DDP / FSDP2 rank records its own columns of θ),
  ``fit_distributed`` and ``distributed_masks`` (docs/distributed.md).

A typical session::

    recorder = TorchRecorder(model, every=1, stop=200)
    with recorder.attach(optimizer):
        train(model, optimizer)              # your loop, unchanged
    masks, report = koopman_masks(recorder.trajectory(), "kmp", sparsity=0.9, model=model)
    apply_masks(model, masks)                # weight_orig / weight_mask, as torch users expect
    with MaskEnforcer(model, optimizer):     # pruned weights and momentum stay at zero
        train(model, optimizer)
    make_permanent(model)
"""

from __future__ import annotations

import importlib
from typing import Any

#: Every public name of the adapter and the module that defines it (the one export list).
EXPORTS = {
    "select_parameters": "params",
    "check_layout": "params",
    "to_backend": "params",
    "MaskParametrization": "params",
    "TorchRecorder": "record",
    "koopman_masks": "masks",
    "masks_from_scores": "masks",
    "MaskReport": "masks",
    "gradient_scores": "masks",
    "importance_scores": "masks",
    "apply_masks": "apply",
    "current_masks": "apply",
    "MaskEnforcer": "apply",
    "make_permanent": "apply",
    "load_pruned_state_dict": "apply",
    "model_sparsity": "apply",
    "deepcopy_model": "apply",
    "MODELS": "models",
    "build_model": "models",
    "iterative_pruning": "iterative",
    "default_train_fn": "iterative",
    "accuracy_on": "iterative",
    "CONVENTIONS": "conventions",
    "compression_over": "conventions",
    "DistributedRecorder": "distributed",
    "fit_distributed": "distributed",
    "distributed_masks": "distributed",
    "ProcessGroupComm": "distributed",
    "RankFailure": "distributed",
}

__all__ = list(EXPORTS)


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        value = getattr(importlib.import_module(f".{EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
