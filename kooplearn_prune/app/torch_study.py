"""``kooplearn-prune experiment`` on a PyTorch model (``[model] framework = "torch"``).

The study design, the output directory and its guarantees are those of ``experiment`` (the
native MLP): for every seed, train once with a plain loop, recording one ``TorchRecorder``
window per window epoch ``e`` (the last ``window_steps`` optimizer steps of epoch ``e``, one row
every ``every`` steps, docs/theory.md §2) and keeping θ and the model's whole ``state_dict``
(BatchNorm statistics included) at the end of every window epoch and of training; then, for
every window, fit the KMD once (docs/theory.md §5), score every method of the registry, and for
every compression prune the model at the window's end (baked masks), measure test accuracy,
fine-tune under a ``MaskEnforcer`` (pruned weights and their momentum stay zero) and measure
again. Runs, summary, study tables and figures are written by the shared code.

``TorchStudy.prepare`` checks everything that can be wrong with the model and data before any
file is written: the device, the factory, the prunable tensors under ``[pruning] conventions``,
and one forward pass of the first training batch. FLOPs in ``metrics.json`` count the Linear
layers and the convolutions (``torch_inputs.weight_uses``: each weight entry's uses per sample,
measured with forward hooks on that batch). Every run also records the overlap and Jaccard index
of its mask with the magnitude (GMP) mask of the same window at the same sparsity
(``overlap_with_window_magnitude``, docs/theory.md §13), next to the overlap with the converged
network's mask.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import save_npz_atomic
from ..adapters.torch.apply import MaskEnforcer, apply_masks
from ..adapters.torch.masks import gradient_scores
from ..adapters.torch.params import effective_value, nn, select_parameters
from ..adapters.torch.record import TorchRecorder
from ..backend import asarray, get_backend, to_numpy
from ..data import Dataset
from ..koopman import FixedPointWarning
from ..layout import ParamLayout
from ..methods import get_method, method_mask, method_scores
from ..pruning.masks import global_mask, masks_by_name
from ..pruning.metrics import jaccard, overlap
from ..pruning.scores import magnitude_scores
from ..trajectory import Trajectory
from .config_checks import ConfigError
from .experiment_config import ExperimentConfig, load_data
from .experiment_kmd import fit_window_kmd, kmd_info, window_magnitude_masks
from .experiment_runs import RunSpec, write_run
from .experiment_store import SeedArtifacts, load_seed, result_hash, warn
from .torch_inputs import (
    as_images,
    build,
    check_first_batch,
    torch_device,
    weight_uses,
)

__all__ = ["TorchStudy", "train_torch_seed", "evaluate_torch_mask"]

_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
_GRADIENT_BATCHES, _GRADIENT_BATCH_SIZE = 10, 64


@dataclass
class TorchStudy:
    """A checked torch experiment: the data as tensors on the device, and the model's layout."""

    config: ExperimentConfig
    data: Dataset
    device: torch.device
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    layout: ParamLayout
    model_name: str
    weight_uses: dict[str, int]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.n_train / self.config.batch_size)

    # ------------------------------------------------------------------ checks
    @classmethod
    def prepare(cls, config: ExperimentConfig, progress: bool = False) -> TorchStudy:
        """Load the data; check device, model and data (see the module doc).

        Raises ``ConfigError`` naming the key and the fix; writes nothing.
        """
        device = torch_device(config.device)
        data = load_data(config, progress)  # on the host; torch moves it to the device
        x_train, x_test = (as_images(config, data, x).to(device) for x in (data.x_train,
                                                                            data.x_test))
        y_train, y_test = (torch.from_numpy(to_numpy(y).astype(np.int64)).to(device)
                           for y in (data.y_train, data.y_test))
        name = config.model_name
        model = build(config, tuple(x_train.shape[1:]), int(data.n_classes), 0, device)
        try:
            layout, _ = select_parameters(model, warn_tied=False, conventions=config.conventions)
        except ValueError as err:
            raise ConfigError(f"[model] name = {name!r} under [pruning] conventions = "
                              f"{config.conventions!r}: {err}") from None
        if layout.n_prunable == 0:
            raise ConfigError(
                f"[model] name = {name!r} has no prunable tensor under [pruning] conventions = "
                f"{config.conventions!r} (it has {list(layout.names)}, none the weight of a "
                f"Linear or Conv layer): use a model with Linear or Conv layers, or "
                f"conventions = 'library'")
        check_first_batch(config, model, x_train[:config.batch_size], int(data.n_classes))
        uses = weight_uses(model, x_train[:config.batch_size])
        label = name.replace(":", ".")
        return cls(config, data, device, x_train, y_train, x_test, y_test, layout, label, uses)

    # ------------------------------------------------------------------ pieces
    def build(self, seed: int) -> nn.Module:
        """The model of ``seed``, initialized by ``torch.manual_seed(seed)``, on the device."""
        return build(self.config, tuple(self.x_train.shape[1:]), int(self.data.n_classes), seed,
                     self.device)

    def batches(self, seed: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled training batches (the last one may be smaller)."""
        order = torch.randperm(self.x_train.shape[0],
                               generator=torch.Generator().manual_seed(seed)).to(self.device)
        for i in range(0, order.shape[0], batch_size):
            idx = order[i:i + batch_size]
            yield self.x_train[idx], self.y_train[idx]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Test loss and accuracy (eval mode; the mode is restored)."""
        was_training = model.training
        model.eval()
        loss = correct = 0.0
        for i in range(0, self.x_test.shape[0], 512):
            out = model(self.x_test[i:i + 512])
            target = self.y_test[i:i + 512]
            loss += float(F.cross_entropy(out, target, reduction="sum"))
            correct += float((out.argmax(1) == target).sum())
        model.train(was_training)
        n = self.x_test.shape[0]
        return {"loss": loss / n, "accuracy": correct / n}

    def train_epoch(self, model: nn.Module, optimizer: Any, seed: int, batch_size: int) -> float:
        """One epoch of cross-entropy training; the mean batch loss."""
        model.train()
        total, count = 0.0, 0
        for x, y in self.batches(seed, batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        return total / count

    # ------------------------------------------------------------------ the runs of one seed
    def run_seed(self, seed: int, todo: list[RunSpec], dirs: dict[RunSpec, Path], out: Path,
                 progress: bool, run_saved: Callable[[RunSpec, dict[str, Any]], None]) -> None:
        """Train (or reuse) seed ``seed`` and run every run of ``todo``."""
        config, seed_dir = self.config, out / f"seed_{seed}"
        artifacts = load_seed(config, seed_dir, {s.window_epoch for s in todo},
                              self.steps_per_epoch)
        states = None if artifacts is None else _load_states(config, seed_dir)
        if artifacts is None or states is None:
            tqdm_write(f"seed {seed}: training {self.model_name} for {config.epochs} epochs on "
                       f"{self.device}, recording windows ending at epochs "
                       f"{list(config.window_epochs)}")
            artifacts, states = train_torch_seed(self, seed, seed_dir)
        else:
            tqdm_write(f"seed {seed}: reusing the saved training in {seed_dir}")
        model = self.build(seed)
        layout = artifacts.layout
        final = asarray(artifacts.final)
        final_scores = magnitude_scores(final)
        converged: dict[float, Any] = {}

        def converged_mask(sparsity: float) -> Any:
            if sparsity not in converged:
                converged[sparsity] = global_mask(final_scores, sparsity, layout=layout)
            return converged[sparsity]

        for epoch in config.window_epochs:
            window_todo = [s for s in todo if s.window_epoch == epoch]
            if not window_todo:
                continue
            window = Trajectory.load(artifacts.windows[epoch])
            model.load_state_dict(states[epoch])
            window_gmp = window_magnitude_masks(window)
            kmd = None
            for method in config.methods:
                specs = [s for s in window_todo if s.method == method]
                if not specs:
                    continue
                if get_method(method).needs_kmd and kmd is None:
                    kmd = fit_window_kmd(config, window)
                gradient = None
                if get_method(method).needs_gradient:
                    gradient = gradient_scores(
                        model, self.batches(seed, _GRADIENT_BATCH_SIZE),
                        n_batches=_GRADIENT_BATCHES, kind="gradient", layout=layout)
                with warnings.catch_warnings():
                    # early windows are far from a fixed point: recorded in metrics["kmd"]
                    warnings.simplefilter("ignore", FixedPointWarning)
                    scores = method_scores(method, window, kmd=kmd, gradient=gradient,
                                           seed=seed, converged=final)
                info = kmd_info(kmd, method)
                for spec in specs:
                    metrics = self._one_run(spec, dirs[spec], window, model, scores,
                                            (converged_mask, window_gmp), artifacts.history,
                                            info)
                    run_saved(spec, metrics)

    def _one_run(self, spec: RunSpec, run_dir: Path, window: Trajectory, model: nn.Module,
                 scores: Any, references: tuple[Callable[[float], Any], Callable[[float], Any]],
                 history: list[dict[str, float]], info: dict | None) -> dict[str, Any]:
        """One run; ``references``: the converged and the window's magnitude mask by sparsity."""
        config, started, layout = self.config, time.perf_counter(), window.layout
        converged_mask, window_gmp = references
        mask = method_mask(spec.method, scores, spec.sparsity, window)
        evaluation, logs = evaluate_torch_mask(self, model, mask, layout, seed=spec.seed)
        ov_sparsity = spec.sparsity if config.overlap_sparsity is None else \
            config.overlap_sparsity
        ov_mask = mask if config.overlap_sparsity is None else \
            method_mask(spec.method, scores, ov_sparsity, window)
        reference, same_window = converged_mask(ov_sparsity), window_gmp(ov_sparsity)
        uses = {name: n for name, n in self.weight_uses.items() if name in layout.names}
        params = {"dataset": config.dataset, "model": self.model_name, "strategy": spec.method,
                  "compression": spec.compression, "seed": spec.seed,
                  "window_epoch": spec.window_epoch, "sparsity": spec.sparsity,
                  "framework": "torch", "conventions": config.conventions,
                  "device": str(self.device), "resume": None,
                  "dl_kwargs": {"batch_size": config.batch_size},
                  "train_kwargs": {"optim": "SGD", "epochs": config.finetune_epochs,
                                   "lr": config.finetune_lr,
                                   "momentum": config.finetune_momentum},
                  "training": {"optim": _OPTIMIZERS[config.optimizer], "epochs": config.epochs,
                               "lr": config.lr, "momentum": config.momentum,
                               "weight_decay": config.weight_decay,
                               "schedule": config.schedule,
                               "milestones": list(config.milestones), "gamma": config.gamma,
                               "batch_size": config.batch_size,
                               "window_steps": config.window_steps, "every": config.every}}
        extras = {"window_epoch": spec.window_epoch, "compression": spec.compression,
                  "sparsity": spec.sparsity,
                  "overlap_with_converged": overlap(ov_mask, reference, layout),
                  "jaccard_with_converged": jaccard(ov_mask, reference, layout),
                  "overlap_with_window_magnitude": overlap(ov_mask, same_window, layout),
                  "jaccard_with_window_magnitude": jaccard(ov_mask, same_window, layout),
                  "overlap_sparsity": ov_sparsity,
                  "unpruned_val_acc1": history[spec.window_epoch - 1].get("test_accuracy"),
                  "converged_val_acc1": history[-1].get("test_accuracy"),
                  "kmd": info, "backend": get_backend(), "device": str(self.device),
                  "seconds": time.perf_counter() - started}
        return write_run(run_dir, params=params, mask=mask, layout=layout,
                         linear_weights=uses, evaluation=evaluation, logs=logs,
                         extras=extras, result_hash=result_hash(config))


# ----------------------------------------------------------------------------------- helpers
def tqdm_write(message: str) -> None:
    """A line that keeps an active progress bar intact."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def _optimizer(config: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def _schedule(config: ExperimentConfig, optimizer: torch.optim.Optimizer) -> Any:
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones),
                                                    gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def _flat(refs: list[Any]) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([effective_value(r).reshape(-1) for r in refs]).cpu().numpy()


def _host_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _states_path(seed_dir: Path) -> Path:
    return seed_dir / "model_states.pt"


def _load_states(config: ExperimentConfig, seed_dir: Path) -> dict[int, dict] | None:
    """The saved ``state_dict`` of every window epoch, or None (named in a warning) to retrain."""
    path = _states_path(seed_dir)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("result_hash") != result_hash(config):
            raise ValueError("it was made under another configuration")
        return {e: saved["states"][e] for e in config.window_epochs}
    except Exception as err:  # noqa: BLE001 - any unreadable file means: retrain this seed
        warn(f"{path} is missing or damaged ({type(err).__name__}: {err}); {seed_dir.name} is "
             f"retrained and its artifacts rewritten")
        return None


# ----------------------------------------------------------------------------------- training
def train_torch_seed(study: TorchStudy, seed: int, seed_dir: Path
                     ) -> tuple[SeedArtifacts, dict[int, dict]]:
    """Train one seed, recording every window; save the artifacts (``training.npz`` last)."""
    config, spe = study.config, study.steps_per_epoch
    model = study.build(seed)
    layout, refs = select_parameters(model, warn_tied=False, conventions=config.conventions)
    optimizer = _optimizer(config, model)
    schedule = _schedule(config, optimizer)
    recorders = {e: TorchRecorder(model, every=config.every, start=e * spe - config.window_steps,
                                  stop=e * spe, layout=layout) for e in config.window_epochs}
    for recorder in recorders.values():
        recorder.attach(optimizer)
    thetas, states, history = {}, {}, []
    try:
        for epoch in range(1, config.epochs + 1):
            loss = study.train_epoch(model, optimizer, seed * 100_003 + epoch, config.batch_size)
            if schedule is not None:
                schedule.step()
            test = study.evaluate(model)
            history.append({"epoch": epoch, "train_loss": loss, "test_loss": test["loss"],
                            "test_accuracy": test["accuracy"]})
            if epoch in recorders:
                thetas[epoch], states[epoch] = _flat(refs), _host_state(model)
    finally:
        for recorder in recorders.values():
            recorder.detach()
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "training.npz").unlink(missing_ok=True)  # the seed's marker, rewritten last
    windows = {e: r.trajectory(xp=np).save(seed_dir / f"window_epoch{e}.npz")
               for e, r in recorders.items()}
    torch.save({"result_hash": result_hash(config), "states": states}, _states_path(seed_dir))
    final = _flat(refs)
    arrays = {f"theta_epoch{e}": theta for e, theta in thetas.items()}
    arrays.update({"theta_final": final,
                   "window_epochs": np.asarray(config.window_epochs, dtype=np.int64),
                   "layout": np.array(json.dumps(layout.to_dict())),
                   "history": np.array(json.dumps(history)),
                   "result_hash": np.array(result_hash(config))})
    save_npz_atomic(seed_dir / "training.npz", arrays)
    return SeedArtifacts(layout, thetas, final, windows, history), states


def evaluate_torch_mask(study: TorchStudy, model: nn.Module, mask: Any, layout: ParamLayout, *,
                        seed: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Test accuracy with ``mask`` baked in, and after a masked fine-tune; the model is restored.

    Returns ``evaluate_mask``'s dictionary and one ``logs.csv`` row per fine-tune epoch.
    """
    config = study.config
    saved = _host_state(model)
    flat = to_numpy(mask).astype(bool)
    per_tensor = masks_by_name(flat, layout)
    masks = {name: per_tensor[name] for name, prunable in zip(layout.names, layout.prunable)
             if prunable}
    try:
        apply_masks(model, masks, mode="bake")
        pre = study.evaluate(model)
        result = {"pre_accuracy": pre["accuracy"], "pre_loss": pre["loss"],
                  "nonzero": int(flat.sum())}
        logs: list[dict[str, float]] = []
        if config.finetune_epochs > 0:
            optimizer = torch.optim.SGD(model.parameters(), lr=config.finetune_lr,
                                        momentum=config.finetune_momentum)
            start = time.perf_counter()
            with MaskEnforcer(model, optimizer, masks=masks):
                for epoch in range(1, config.finetune_epochs + 1):
                    loss = study.train_epoch(model, optimizer, seed * 100_003 + 50_000 + epoch,
                                             config.batch_size)
                    val = study.evaluate(model)
                    logs.append({"epoch": epoch, "train_loss": loss, "val_loss": val["loss"],
                                 "val_acc1": val["accuracy"],
                                 "timestamp": time.perf_counter() - start})
            result["post_accuracy"], result["post_loss"] = val["accuracy"], val["loss"]
        return result, logs
    finally:
        model.load_state_dict(saved)
