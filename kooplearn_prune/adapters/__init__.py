"""Adapters that bring models from other frameworks into the Koopman pipeline.

``kooplearn_prune.adapters.torch`` records a ``torch.nn.Module``'s training as a ``Trajectory``
and applies the resulting masks back to the model. Importing this package does not import
PyTorch: the names below are loaded on first use, and a missing PyTorch then raises an
``ImportError`` naming the ``torch`` extra (``pip install 'kooplearn-prune[torch]'``).
"""

from __future__ import annotations

import importlib
from typing import Any

_TORCH_NAMES = (
    "TorchRecorder",
    "select_parameters",
    "check_layout",
    "koopman_masks",
    "masks_from_scores",
    "MaskReport",
    "gradient_scores",
    "importance_scores",
    "apply_masks",
    "MaskParametrization",
    "MaskEnforcer",
    "make_permanent",
    "load_pruned_state_dict",
    "model_sparsity",
    "deepcopy_model",
    "current_masks",
    "to_backend",
    "METHODS",
)

__all__ = list(_TORCH_NAMES)


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        module = importlib.import_module(".torch", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_TORCH_NAMES))
