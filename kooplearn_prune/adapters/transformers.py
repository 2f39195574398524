"""Hugging Face ``transformers`` callback: record a window, prune with Koopman masks, stay pruned.

Needs the ``transformers`` extra (``pip install 'kooplearn-prune[transformers]'``); nothing
imports this module unless asked. A typical run::

    from kooplearn_prune.adapters.transformers import KoopmanPruningCallback
    pruning = KoopmanPruningCallback(sparsity=0.9, method="kmp", every=1, stop=200)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[pruning])
    trainer.train()
    print(pruning.report)                    # MaskReport; pruning.metrics were logged

The window and the pruning step are those of ``WindowPruner`` (docs/theory.md §2, §8-§11),
counted in optimizer steps (``state.global_step``) or epochs. At the pruning step the masks are
applied in torch's format (``weight_orig`` / ``weight_mask``); the pruned weights, their
gradients and their optimizer state stay at zero for the rest of training. The numbers
(sparsity, compression, overlap with magnitude pruning, KMD rank and fixed-point flags,
docs/theory.md §7, §13) are appended to ``state.log_history`` under ``log_prefix``, saved with
every checkpoint's ``trainer_state.json``, and added to the next ``logs`` every later callback's
``on_log`` receives.

Checkpoints (``save_model``, ``checkpoint-N/``) hold ``weight_orig`` and ``weight_mask``. The
Trainer loads a checkpoint into the model leniently, so a dense model would silently drop them:
load it with ``load_pruned_checkpoint(model, directory)`` first (before
``trainer.train(resume_from_checkpoint=directory)``); the callback refuses to resume after the
pruning step on a model without masks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

try:
    import transformers
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("kooplearn_prune.adapters.transformers needs Hugging Face transformers: "
                      "pip install 'kooplearn-prune[transformers]'") from err

from ..koopman import KMD
from ..pruning.masks import COMPRESSION_OVER
from ._window_pruner import PrunerResults, WindowPruner
from .torch import load_pruned_state_dict
from .torch.params import torch

__all__ = ["KoopmanPruningCallback", "load_pruned_checkpoint"]

FIX = ("build the optimizer from this model's parameters, e.g. Trainer(..., optimizers="
       "(torch.optim.SGD(model.parameters(), lr=...), None)), or let the Trainer create it")

#: The weight files a ``Trainer`` writes for a model, in the order they are looked for.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class KoopmanPruningCallback(PrunerResults, transformers.TrainerCallback):
    """``TrainerCallback``: Koopman (or any registered) pruning once, at ``prune_at``.

    Arguments as ``kooplearn_prune.adapters.lightning.KoopmanPruning``: ``sparsity`` /
    ``compression`` / ``scope`` / ``over`` (the mask request), ``method`` (any name of
    ``kooplearn_prune.methods``, default ``"kmp"``), ``every``, ``start``, ``stop``, ``unit``
    (the recording window; ``unit="epoch"`` counts ``start``, ``stop`` and ``prune_at`` in
    epochs), ``prune_at`` (default ``stop``), ``prunable``/``non_prunable``, ``kmd`` and
    ``mask_options``. After pruning: ``masks``, ``report``, ``metrics``, ``trajectory()``.
    """

    def __init__(self, sparsity: float | None = None, compression: float | None = None,
                 method: str = "kmp", *, every: int = 1, start: int = 0,
                 stop: int | None = None, prune_at: int | None = None, unit: str = "step",
                 scope: str | None = None, over: str = COMPRESSION_OVER, prunable: Any = None,
                 non_prunable: str = "record", kmd: KMD | None = None,
                 mask_options: Mapping[str, Any] | None = None,
                 log_prefix: str = "koopman/") -> None:
        self.pruner = WindowPruner(sparsity, compression, method, every=every, start=start,
                                   stop=stop, prune_at=prune_at, unit=unit, scope=scope,
                                   over=over, prunable=prunable, non_prunable=non_prunable,
                                   kmd=kmd, mask_options=mask_options)
        self.log_prefix = str(log_prefix)
        self._pending: dict[str, float] | None = None

    # ------------------------------------------------------------------ events
    # (masks, report, metrics, trajectory() and compute_masks() come from PrunerResults)
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, train_dataloader: Any = None,
                       **kwargs: Any) -> None:
        steps_per_epoch = None
        try:
            batches = len(train_dataloader)
        except TypeError:  # an iterable dataset has no length
            batches = 0
        if batches:
            steps_per_epoch = math.ceil(batches / max(int(args.gradient_accumulation_steps), 1))
        last = float(state.max_steps) if state.max_steps and state.max_steps > 0 else None
        self.pruner.begin(model, optimizer, int(state.global_step), steps_per_epoch, FIX,
                          last_step=last)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        metrics = self.pruner.after_step(int(state.global_step))
        if metrics:
            named = {self.log_prefix + key: value for key, value in metrics.items()}
            state.log_history.append({**named, "step": int(state.global_step)})
            self._pending = named
            control.should_log = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
               **kwargs: Any) -> None:
        if self._pending and isinstance(logs, dict):
            logs.update(self._pending)
            self._pending = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pruner.end()


def load_pruned_checkpoint(model: torch.nn.Module, directory: Any,
                           strict: bool = True) -> dict[str, Any]:
    """Load the weights a ``Trainer`` saved in ``directory`` into ``model``, masks included.

    ``directory``: ``save_model``'s output or a ``checkpoint-N`` folder (``model.safetensors``
    or ``pytorch_model.bin``). ``model.parameters()`` keeps its order, so the checkpoint's
    optimizer state fits the optimizer the Trainer builds afterwards. Returns the masks.
    """
    directory = os.fspath(directory)
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            break
    else:
        raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {directory!r}: pass the "
                                f"folder Trainer.save_model or a checkpoint-N save wrote")
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return load_pruned_state_dict(model, state_dict, strict=strict)
