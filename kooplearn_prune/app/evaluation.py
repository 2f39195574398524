"""Score, mask and evaluate: what the demo and the experiments do for every pruning method.

``window_scores`` turns a recorded window (and its KMD) into flat scores for one method of the
registry (``kooplearn_prune.methods``); for gradient pruning it averages the native model's
gradient over fresh mini-batches. ``evaluate_mask`` measures test accuracy of the masked model,
before and after a short masked fine-tune, and restores the model afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backend import namespace_of
from ..data import BatchIterator, Dataset
from ..koopman import KMD
from ..methods import get_method, method_scores
from ..nn import apply_masks, remove_masks
from ..optim import SGD
from ..pruning.gradient import mean_gradient
from ..training import Callback, Trainer
from ..trajectory import Trajectory

__all__ = ["window_scores", "evaluate_mask", "FinetuneConfig"]


def window_scores(method: str, trajectory: Trajectory, *, kmd: KMD | None = None,
                  model: Any = None, data: Dataset | None = None, n_batches: int = 10,
                  batch_size: int = 64, seed: int = 0, converged: Any = None) -> Any:
    """Flat scores of ``method`` for the network at the window's last snapshot.

    Methods that need a gradient get ``ḡ`` averaged over ``n_batches`` fresh mini-batches of
    ``data`` on ``model`` (which must hold the last snapshot's weights); ``converged`` (the
    converged network's θ) is what the ``oracle`` scores.
    """
    gradient = None
    if get_method(method).needs_gradient:
        if model is None or data is None:
            raise ValueError(f"method={method!r} needs model= and data= to compute gradients")
        batches = BatchIterator(data.x_train, data.y_train, batch_size, seed=seed)
        gradient = mean_gradient(model, batches, n_batches=n_batches, layout=trajectory.layout)
    return method_scores(method, trajectory, kmd=kmd, gradient=gradient, seed=seed,
                         converged=converged)


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
