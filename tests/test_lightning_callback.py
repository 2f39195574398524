"""The Lightning callback end to end on a tiny CNN: record, prune, enforce, log, checkpoint."""

from __future__ import annotations

import copy
import csv
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from kooplearn_prune.adapters.lightning import (  # noqa: E402
    KoopmanPruning,
    load_pruned_checkpoint,
)
from kooplearn_prune.adapters.torch import (  # noqa: E402
    current_masks,
    koopman_masks,
    model_sparsity,
)

pytestmark = pytest.mark.torch

STEPS_PER_EPOCH = 8  # 64 samples, batch 8
SPARSITY = 0.6


class TinyCNN(pl.LightningModule):
    def __init__(self, optimizer: str = "sgd", foreign: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)
        self.optimizer_kind, self.foreign = optimizer, foreign

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        params = torch.nn.Linear(2, 2).parameters() if self.foreign else self.parameters()
        if self.optimizer_kind == "adam":
            return torch.optim.Adam(params, lr=1e-2)
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


class ListLogger(pl.loggers.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "list"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


class ZeroWatch(pl.Callback):
    """After every optimizer step once pruned: are the pruned weights and their state zero?"""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        masks = current_masks(pl_module)
        if not masks:
            return
        opt = trainer.optimizers[0]
        for name, mask in masks.items():
            module = pl_module.get_submodule(name.rsplit(".", 1)[0])
            raw = module.weight_orig
            assert torch.all(raw[~mask] == 0), name
            for value in opt.state[raw].values():
                if isinstance(value, torch.Tensor) and value.shape == raw.shape:
                    assert torch.all(value[~mask] == 0), name
        self.checked += 1


def fit(module, callback, epochs=3, logger=None, ckpt_path=None):
    watch = ZeroWatch()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=logger or False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[callback, watch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few workers, small log interval, FixedPointWarning
        trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer, watch


def test_prunes_at_the_step_keeps_zeros_and_logs():
    logger = ListLogger()
    callback = KoopmanPruning(sparsity=SPARSITY, every=1, stop=10)
    module = TinyCNN("sgd")  # momentum 0.9: the watch checks the buffers stay zero
    trainer, watch = fit(module, callback, logger=logger)
    assert trainer.global_step == 3 * STEPS_PER_EPOCH
    assert callback.metrics["prune_step"] == 10
    assert watch.checked == 3 * STEPS_PER_EPOCH - 10 + 1  # the step that pruned, and every later
    # Sparsity exact: k = round(p n) of the prunable tensors, zero at the end of training.
    stats = model_sparsity(module)
    n_prunable = 4 * 9 + 144 * 3
    assert stats["sparsity"] == round(SPARSITY * n_prunable) / n_prunable
    assert callback.report.sparsity == stats["sparsity"]
    # The callback's masks are koopman_masks of the same recorded window.
    traj = callback.trajectory()
    assert list(traj.steps) == list(range(0, 11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedPointWarning on a short window
        expected, _ = koopman_masks(traj, "kmp", SPARSITY, model=module)
    for name, mask in expected.items():
        assert torch.equal(callback.masks[name], mask)
    # The numbers reached the logger, at the pruning step.
    logged = [(step, row) for step, row in logger.rows if "koopman/sparsity" in row]
    assert len(logged) == 1 and logged[0][0] == 10
    row = logged[0][1]
    assert row["koopman/sparsity"] == callback.report.sparsity
    assert 0.0 <= row["koopman/overlap_magnitude"] <= 1.0
    assert row["koopman/rank"] >= 1
    assert row["koopman/fixed_point_reliable"] in (0.0, 1.0)
    assert trainer.callback_metrics["koopman/compression_prunable"] > 1


class DeepcopyWatch(pl.Callback):
    """Deep-copies the pruned layers after every step, before the pruning callback runs."""

    copies = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if current_masks(pl_module):
            for layer in (pl_module.conv, pl_module.fc):
                twin = copy.deepcopy(layer)
                assert torch.equal(twin.weight, layer.weight)
            DeepcopyWatch.copies += 1


def test_deepcopy_of_the_pruned_module_works():
    callback = KoopmanPruning(sparsity=SPARSITY, stop=4)
    module = TinyCNN()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[DeepcopyWatch(), callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader())
    assert DeepcopyWatch.copies == STEPS_PER_EPOCH - 4
    twin = copy.deepcopy(module)  # after fit, the whole module
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(twin(x), module(x))
    for name, mask in current_masks(twin).items():
        assert torch.equal(mask, callback.masks[name])


def test_masks_survive_checkpoint_save_load_and_resume(tmp_path):
    callback = KoopmanPruning(sparsity=SPARSITY, stop=6)
    module = TinyCNN("adam")  # the watch checks exp_avg / exp_avg_sq stay zero
    trainer, watch = fit(module, callback, epochs=1)
    assert watch.checked == STEPS_PER_EPOCH - 6 + 1
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    # By hand into a fresh, dense module.
    fresh = TinyCNN("adam")
    masks = load_pruned_checkpoint(fresh, path)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(fresh(x), module(x))
    for name, mask in callback.masks.items():
        assert torch.equal(masks[name], mask)
    # Resume training from it on a fresh dense module: masks come back and stay enforced.
    resumed = TinyCNN("adam")
    again = KoopmanPruning(sparsity=SPARSITY, stop=6)
    trainer2, watch = fit(resumed, again, epochs=2, ckpt_path=str(path))
    assert trainer2.global_step == 2 * STEPS_PER_EPOCH
    assert watch.checked == STEPS_PER_EPOCH
    for name, mask in callback.masks.items():
        assert torch.equal(current_masks(resumed)[name], mask)
    assert model_sparsity(resumed)["sparsity"] == callback.report.sparsity


def test_epoch_unit_and_csv_logger(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path)
    callback = KoopmanPruning(sparsity=0.5, method="magnitude", every=2, stop=1,
                              prune_at=2, unit="epoch")
    trainer, _ = fit(TinyCNN(), callback, logger=logger)
    assert list(callback.trajectory().steps) == list(range(0, STEPS_PER_EPOCH + 1, 2))
    assert callback.metrics["prune_step"] == 2 * STEPS_PER_EPOCH
    assert callback.metrics["overlap_magnitude"] == 1.0  # magnitude against itself
    logger.save()
    with open(f"{logger.log_dir}/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("koopman/sparsity")]
    assert len(rows) == 1 and float(rows[0]["koopman/sparsity"]) == callback.report.sparsity


def test_bad_input_is_refused_with_the_fix():
    module = TinyCNN(foreign=True)
    with pytest.raises(ValueError, match="does not own the model's parameters.*configure_optim"):
        fit(module, KoopmanPruning(sparsity=0.5, stop=4), epochs=1)
    assert not current_masks(module)
    early = KoopmanPruning(sparsity=0.5, stop=4)
    with pytest.raises(RuntimeError, match="before the window is recorded.*training has not"):
        early.compute_masks()
    with pytest.raises(ValueError, match="after the last training step"):
        fit(TinyCNN(), KoopmanPruning(sparsity=0.5, prune_at=99), epochs=1)
    with pytest.raises(ValueError, match="prune_at must be an integer >= stop"):
        KoopmanPruning(sparsity=0.5, stop=5, prune_at=3)
    with pytest.raises(ValueError, match="sparsity="):
        KoopmanPruning(stop=5)


def test_masks_asked_mid_window_raise():
    class Ask(pl.Callback):
        error = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with pytest.raises(RuntimeError, match="ends at step 6, training is at step 3"):
                    callback.compute_masks()
                Ask.error = True

    callback = KoopmanPruning(sparsity=0.5, stop=6)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[callback, Ask()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyCNN(), loader())
    assert Ask.error and np.isfinite(callback.metrics["sparsity"])


def test_frameworks_are_imported_lazily_and_missing_ones_name_the_extra():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import kooplearn_prune, kooplearn_prune.adapters, kooplearn_prune.adapters.torch\n"
        "from kooplearn_prune.adapters import TorchRecorder\n"
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules\n"
        "sys.modules['lightning'] = sys.modules['transformers'] = None  # not installed\n"
        "for name, extra in (('lightning', '[lightning]'), ('transformers', '[transformers]')):\n"
        "    try:\n"
        "        __import__('kooplearn_prune.adapters.' + name)\n"
        "    except ImportError as err:\n"
        "        assert extra in str(err), err\n"
        "    else:\n"
        "        raise AssertionError(name)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_training_that_stops_before_the_pruning_step_warns():
    class StopEarly(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.global_step >= 2

    module = TinyCNN()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False,
                         callbacks=[KoopmanPruning(sparsity=0.5, stop=6), StopEarly()])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(workers|log_every_n_steps|LeafSpec).*")
        with pytest.warns(RuntimeWarning, match="training ended at step 2.*was not pruned"):
            trainer.fit(module, loader())
    assert not current_masks(module)
