"""PyTorch Lightning callback: record a window, prune with Koopman masks, keep the model pruned.

Needs the ``lightning`` extra (``pip install 'kooplearn-prune[lightning]'``); nothing imports this
module unless asked. A typical run::

    from kooplearn_prune.adapters.lightning import KoopmanPruning
    pruning = KoopmanPruning(sparsity=0.9, method="kmp", every=1, stop=200)
    trainer = lightning.Trainer(max_steps=1000, callbacks=[pruning])
    trainer.fit(module, loader)
    print(pruning.report)                    # MaskReport; pruning.metrics were logged

The window and the pruning step are those of ``WindowPruner`` (docs/theory.md §2, §8-§11):
optimizer steps (``trainer.global_step``) or epochs. At the pruning step the masks are applied
in torch's format (``weight_orig`` / ``weight_mask``) and the pruned weights, their gradients and
their optimizer state (momentum, Adam moments) stay at zero for the rest of training. The
numbers (sparsity, compression, overlap with magnitude pruning, KMD rank and fixed-point flags,
docs/theory.md §7, §13) go to every logger of the trainer under ``log_prefix``.

Checkpoints keep the masks: ``trainer.fit(fresh_module, ckpt_path=...)`` with this callback puts
them back on a dense module, and ``load_pruned_checkpoint`` does it by hand (call it from
``LightningModule.on_load_checkpoint`` to make ``load_from_checkpoint`` work). A pruned module
can be ``copy.deepcopy``-ed at any time outside a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("kooplearn_prune.adapters.lightning needs PyTorch Lightning: "
                      "pip install 'kooplearn-prune[lightning]'") from err

from ..koopman import KMD
from ..pruning.masks import COMPRESSION_OVER
from ._window_pruner import PrunerResults, WindowPruner
from .torch import load_pruned_state_dict
from .torch.params import torch

__all__ = ["KoopmanPruning", "load_pruned_checkpoint"]

FIX = ("return an optimizer over this module's parameters from configure_optimizers(), e.g. "
       "torch.optim.SGD(self.parameters(), lr=...)")


class KoopmanPruning(PrunerResults, pl.Callback):
    """Lightning callback: Koopman (or any registered) pruning once, at ``prune_at``.

    ``sparsity``/``compression``/``scope``/``over``: the mask request of ``koopman_masks``;
    ``method``: any name of ``kooplearn_prune.methods`` (default ``"kmp"``); ``every``,
    ``start``, ``stop``, ``unit``: the recording window (``unit="epoch"`` counts ``start``,
    ``stop`` and ``prune_at`` in epochs); ``prune_at``: when to prune (default ``stop``);
    ``prunable``/``non_prunable``: which tensors (``select_parameters``); ``kmd``: an unfitted
    ``KMD`` (default ``KMD()``); ``mask_options``: more ``koopman_masks`` options.
    After pruning: ``masks``, ``report`` (``MaskReport``), ``metrics`` (the logged numbers) and
    ``trajectory()`` (the recorded window).
    """

    def __init__(self, sparsity: float | None = None, compression: float | None = None,
                 method: str = "kmp", *, every: int = 1, start: int = 0,
                 stop: int | None = None, prune_at: int | None = None, unit: str = "step",
                 scope: str | None = None, over: str = COMPRESSION_OVER, prunable: Any = None,
                 non_prunable: str = "record", kmd: KMD | None = None,
                 mask_options: Mapping[str, Any] | None = None,
                 log_prefix: str = "koopman/") -> None:
        super().__init__()
        self.pruner = WindowPruner(sparsity, compression, method, every=every, start=start,
                                   stop=stop, prune_at=prune_at, unit=unit, scope=scope,
                                   over=over, prunable=prunable, non_prunable=non_prunable,
                                   kmd=kmd, mask_options=mask_options)
        self.log_prefix = str(log_prefix)
        self._strict_loading: bool | None = None

    # ------------------------------------------------------------------ checkpoints
    # (masks, report, metrics, trajectory() and compute_masks() come from PrunerResults)
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning loads a checkpoint's weights before any callback sees it, strictly: a dense
        # module would refuse the weight_orig / weight_mask keys. Load leniently, then put the
        # masks back in on_load_checkpoint with load_pruned_state_dict (strict as asked).
        if stage == "fit" and self._strict_loading is None:
            self._strict_loading = bool(pl_module.strict_loading)
            pl_module.strict_loading = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        load_pruned_state_dict(pl_module, checkpoint["state_dict"],
                               strict=bool(self._strict_loading))

    def _restore_strict_loading(self, pl_module: pl.LightningModule) -> None:
        if self._strict_loading is not None:
            pl_module.strict_loading = self._strict_loading
            self._strict_loading = None

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.pruner.phase, "prune_step": self.pruner.prune_step,
                "metrics": dict(self.pruner.metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruner.metrics = dict(state_dict.get("metrics", {}))

    # ------------------------------------------------------------------ training
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_strict_loading(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_strict_loading(pl_module)
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise ValueError(f"KoopmanPruning needs exactly one optimizer, the trainer has "
                             f"{len(optimizers)}; {FIX}")
        batches = trainer.num_training_batches
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) \
            if math.isfinite(batches) and batches > 0 else None
        last = trainer.estimated_stepping_batches
        self.pruner.begin(pl_module, optimizers[0], trainer.global_step, steps_per_epoch, FIX,
                          last_step=float(last))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics = self.pruner.after_step(trainer.global_step)
        if metrics:
            named = {self.log_prefix + key: value for key, value in metrics.items()}
            for logger in trainer.loggers:
                logger.log_metrics(named, step=trainer.global_step)
            trainer.callback_metrics.update(
                {key: torch.tensor(value) for key, value in named.items()})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pruner.end()


def load_pruned_checkpoint(module: torch.nn.Module, checkpoint: Any,
                           strict: bool = True) -> dict[str, Any]:
    """Load a Lightning checkpoint (a path or the loaded dict) into ``module``, masks included.

    A dense ``module`` gets the checkpoint's masks back (``load_pruned_state_dict``). Inside a
    ``LightningModule``, ``def on_load_checkpoint(self, checkpoint):
    load_pruned_checkpoint(self, checkpoint)`` makes ``load_from_checkpoint`` work too.
    ``module.parameters()`` keeps its order (``weight_orig`` in ``weight``'s place), so the
    checkpoint's optimizer state fits an optimizer built over the module afterwards. Returns
    the masks.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise ValueError("checkpoint has no 'state_dict' entry: pass a Lightning checkpoint "
                         "(trainer.save_checkpoint) or use load_pruned_state_dict for a plain one")
    return load_pruned_state_dict(module, checkpoint["state_dict"], strict=strict)
