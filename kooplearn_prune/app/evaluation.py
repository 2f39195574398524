"""Score, mask and evaluate: what the demo and the experiments do for every pruning method.

``method_scores`` turns a recorded ``Trajectory`` (and its KMD) into flat scores for one method;
``evaluate_mask`` measures test accuracy of the masked model, before and after a short masked
fine-tune, and restores the model afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backend import namespace_of
from ..data import BatchIterator, Dataset
from ..koopman import KMD, kgp_scores, kmp_scores
from ..optim import SGD
from ..nn import apply_masks, remove_masks
from ..pruning.gradient import gradient_scores
from ..pruning.masks import global_mask, layerwise_mask
from ..pruning.scores import magnitude_scores, random_scores
from ..training import Callback, Trainer
from ..trajectory import Trajectory

__all__ = ["METHODS", "method_scores", "method_mask", "evaluate_mask", "FinetuneConfig"]

#: Every pruning method the demo and experiments compare. "magnitude" is global magnitude
#: pruning (GMP) of the last snapshot; "magnitude_layerwise" prunes each layer equally.
METHODS = ("kmp", "kgp", "magnitude", "magnitude_layerwise", "gradient", "random")


def method_scores(method: str, trajectory: Trajectory, *, kmd: KMD | None = None,
                  model: Any = None, data: Dataset | None = None, n_batches: int = 10,
                  batch_size: int = 64, seed: int = 0) -> Any:
    """Flat scores (length ``n``) of ``method`` for the network at the trajectory's last snapshot.

    ``kmp``/``kgp`` need the KMD of the trajectory (computed here if not given); ``gradient``
    needs the ``model`` (at the last snapshot's weights) and ``data`` to average
    ``|θ ⊙ g|`` over ``n_batches`` mini-batches.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose from {', '.join(METHODS)}")
    if method in ("kmp", "kgp"):
        kmd = KMD().fit(trajectory) if kmd is None else kmd
        return kmp_scores(kmd) if method == "kmp" else kgp_scores(kmd)
    if method in ("magnitude", "magnitude_layerwise"):
        return magnitude_scores(trajectory.last)
    if method == "random":
        return random_scores(trajectory.last, seed)
    if model is None or data is None:
        raise ValueError("method='gradient' needs model= and data= to compute gradients")
    batches = BatchIterator(data.x_train, data.y_train, batch_size, seed=seed)
    return gradient_scores(model, batches, n_batches=n_batches, layout=trajectory.layout)


def method_mask(method: str, scores: Any, sparsity: float, trajectory: Trajectory) -> Any:
    """Keep-mask of ``method`` at ``sparsity`` (layerwise for ``magnitude_layerwise``)."""
    if method == "magnitude_layerwise":
        return layerwise_mask(scores, sparsity, layout=trajectory.layout)
    return global_mask(scores, sparsity, layout=trajectory.layout)


@dataclass(frozen=True)
class FinetuneConfig:
    """A short masked fine-tune: SGD with momentum for ``epochs`` epochs."""

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 32


def evaluate_mask(model: Any, mask: Any, data: Dataset, trajectory: Trajectory, *,
                  finetune: FinetuneConfig | None = None, seed: int = 0,
                  callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Test accuracy and loss with ``mask`` applied (``pre``) and after a masked fine-tune (post).

    ``callbacks`` are handed to the fine-tune's ``Trainer`` (e.g. to log every fine-tune epoch).
    The model's weights are restored afterwards, so methods are compared from the same start.
    """
    saved = model.state_dict()
    try:
        xp = namespace_of(mask)
        kept = int(xp.sum(xp.astype(mask, xp.int64)))
        opt = SGD(model, lr=finetune.lr if finetune else 0.01,
                  momentum=finetune.momentum if finetune else 0.0)
        apply_masks(model, mask, layout=trajectory.layout, optimizer=opt)
        trainer = Trainer(model, opt, callbacks=callbacks, progress=False)
        pre = trainer.evaluate(data.x_test, data.y_test)
        result = {"pre_accuracy": pre["accuracy"], "pre_loss": pre["loss"], "nonzero": kept}
        if finetune is not None and finetune.epochs > 0:
            trainer.fit(data, epochs=finetune.epochs, batch_size=finetune.batch_size, seed=seed,
                        eval_data=None)
            post = trainer.evaluate(data.x_test, data.y_test)
            result["post_accuracy"], result["post_loss"] = post["accuracy"], post["loss"]
        return result
    finally:
        remove_masks(model)
        model.load_state_dict(saved)
