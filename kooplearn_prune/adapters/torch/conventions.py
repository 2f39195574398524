"""Which tensors are prunable, and how compression is counted: the library's rule or ShrinkBench's.

docs/theory.md §8 (masks over the prunable set) and §13 (compression over a set). Two conventions,
chosen with ``select_parameters(model, conventions=...)``:

* ``"library"`` (the default): the **weights** of every ``Linear`` and ``Conv`` layer (1-, 2- and
  3-d), the classifier included; biases and normalization parameters are recorded, unpruned.
  Compression counts the prunable set (``pruning.COMPRESSION_OVER``, ``"prunable"``).
* ``"shrinkbench"``: what ShrinkBench's ``VisionPruning`` scores and masks (Blalock et al. 2020,
  used by Redman et al. 2022): every parameter a module owns directly, **weight and bias**, of
  each ``nn.Linear`` and ``nn.Conv2d`` (not ``Conv1d``/``Conv3d``), except a module marked
  ``is_classifier = True``. A module that carries an ``is_classifier`` attribute is decided by it
  alone (``False`` makes even a normalization layer prunable), as in ShrinkBench. Compression is
  ShrinkBench's ``all parameters / nonzero parameters`` over the whole model (``over="all"``,
  the one implementation in ``pruning.masks.resolve_sparsity``): give
  ``over=compression_over("shrinkbench")`` to ``koopman_masks``/``masks_from_scores`` with
  ``model=`` so that parameters outside the layout are counted too.

On the paper's networks (``adapters.torch.models``): MnistNet's prunable set is ``conv1``,
``conv2``, ``fc1`` weights under "library" plus ``fc2.weight`` (the classifier); under
"shrinkbench" the same three layers' weights **and biases**, never ``fc2``. ResNet-20's convs
have no bias, so the two differ by the classifier ``linear.weight`` only.

One difference stays by design: ShrinkBench keeps the entries whose score is at least a
``numpy.quantile`` threshold (ties kept, interpolated), the library removes exactly
``k = round(p · n_prunable)`` entries (ties by index, as ``torch.nn.utils.prune``).
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    from torch import nn
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "kooplearn_prune.adapters.torch needs PyTorch, which is not installed. Install the "
        "'torch' extra: pip install 'kooplearn-prune[torch]'"
    ) from _err

from ...pruning.masks import COMPRESSION_OVER

__all__ = ["CONVENTIONS", "check_conventions", "compression_over", "shrinkbench_can_prune",
           "classifier_names"]

#: ``{convention: the set a compression ratio counts}`` (see ``pruning.masks.resolve_sparsity``).
CONVENTIONS: dict[str, str] = {"library": COMPRESSION_OVER, "shrinkbench": "all"}


def check_conventions(conventions: Any) -> str:
    """``conventions`` if it names one of ``CONVENTIONS``, else a ``ValueError`` naming them."""
    if not isinstance(conventions, str) or conventions not in CONVENTIONS:
        raise ValueError(f"conventions={conventions!r} must be 'library' (Linear/Conv weights, "
                         f"classifier included) or 'shrinkbench' (Linear/Conv2d weights and "
                         f"biases, classifier excluded)")
    return conventions


def compression_over(conventions: str) -> str:
    """The set a compression ratio counts under ``conventions``: ``"prunable"`` or ``"all"``."""
    return CONVENTIONS[check_conventions(conventions)]


def shrinkbench_can_prune(module: nn.Module) -> bool:
    """ShrinkBench's rule for one module (``VisionPruning.can_prune``)."""
    if hasattr(module, "is_classifier"):
        return not module.is_classifier
    return isinstance(module, (nn.Linear, nn.Conv2d))


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the modules marked ``is_classifier = True`` (ShrinkBench's marker)."""
    return [name for name, module in model.named_modules()
            if getattr(module, "is_classifier", False)]


def warn_without_classifier(model: nn.Module) -> None:
    """Warn, as ShrinkBench does, when no module is marked as the classifier."""
    if not classifier_names(model):
        warnings.warn(
            "conventions='shrinkbench' found no module marked is_classifier = True, so the "
            "classifier is pruned too (pruning it can silence whole classes); mark it with "
            "model.<classifier layer>.is_classifier = True", UserWarning, stacklevel=4)
