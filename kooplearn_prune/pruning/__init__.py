"""Pruning: scores → exact-k masks → metrics, on flat arrays (docs/theory.md §8, §13).

* ``scores``: baseline scores that need only the parameters (magnitude, random);
* ``masks``: the one selection engine (global and layer-wise, exact counts, ties by index);
* ``metrics``: sparsity, both compressions, overlap and Jaccard of masks, a per-tensor table;
* ``gradient``: gradient-pruning scores of a native model, averaged over mini-batches;
"""

from .gradient import gradient_scores, gradient_scores_from, mean_gradient
from .masks import (
    COMPRESSION_OVER,
    global_mask,
    layerwise_mask,
    masks_by_name,
    n_to_prune,
    resolve_sparsity,
)
from .metrics import compression, format_mask_table, jaccard, mask_table, overlap, sparsity
from .scores import magnitude_scores, random_scores

__all__ = [
    # scores
    "magnitude_scores",
    "random_scores",
    "gradient_scores",
    "gradient_scores_from",
    "mean_gradient",
    # masks
    "COMPRESSION_OVER",
    "resolve_sparsity",
    "n_to_prune",
    "global_mask",
    "layerwise_mask",
    "masks_by_name",
    # metrics
    "sparsity",
    "compression",
    "overlap",
    "jaccard",
    "mask_table",
    "format_mask_table",
]
