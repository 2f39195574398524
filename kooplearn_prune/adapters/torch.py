"""PyTorch adapter: record any ``torch.nn.Module``'s training, prune it with Koopman masks.

Importing this module imports PyTorch; a missing PyTorch raises an ``ImportError`` naming the
``torch`` extra (``pip install 'kooplearn-prune[torch]'``). The pieces live in small modules:

* ``torch_params``: which tensors form θ, under canonical ``state_dict`` names, and their
  effective (masked) values — ``select_parameters``, ``check_layout``;
* ``torch_record``: ``TorchRecorder`` (optimizer hook or explicit ``step()``) → ``Trajectory``;
* ``torch_masks``: ``koopman_masks`` (KMP, KGP, magnitude, gradient, random) → masks + report,
  ``gradient_scores`` over several batches, ``importance_scores`` for
  ``torch.nn.utils.prune.global_unstructured``;
* ``torch_apply``: ``apply_masks`` (``"prune"``, ``"parametrize"``, ``"bake"``), ``MaskEnforcer``
  for fine-tuning, ``make_permanent``, ``load_pruned_state_dict``, ``model_sparsity``,
  ``deepcopy_model``.

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

from .torch_apply import (
    MaskEnforcer,
    apply_masks,
    current_masks,
    deepcopy_model,
    load_pruned_state_dict,
    make_permanent,
    model_sparsity,
)
from .torch_masks import (
    METHODS,
    MaskReport,
    gradient_scores,
    importance_scores,
    koopman_masks,
    masks_from_scores,
)
from .torch_params import MaskParametrization, check_layout, select_parameters, to_backend
from .torch_record import TorchRecorder

__all__ = [
    "TorchRecorder",
    "select_parameters",
    "check_layout",
    "to_backend",
    "METHODS",
    "koopman_masks",
    "masks_from_scores",
    "MaskReport",
    "gradient_scores",
    "importance_scores",
    "apply_masks",
    "current_masks",
    "MaskParametrization",
    "MaskEnforcer",
    "make_permanent",
    "load_pruned_state_dict",
    "model_sparsity",
    "deepcopy_model",
]
