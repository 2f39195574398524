"""The transformers TrainerCallback end to end on a tiny MLP: record, prune, enforce, log, save."""

from __future__ import annotations

import copy
import json
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from kooplearn_prune.adapters.torch import (  # noqa: E402
    current_masks,
    koopman_masks,
    model_sparsity,
)
from kooplearn_prune.adapters.transformers import (  # noqa: E402
    KoopmanPruningCallback,
    load_pruned_checkpoint,
)

pytestmark = pytest.mark.torch

STEPS_PER_EPOCH = 8  # 64 samples, batch 8
SPARSITY = 0.7
N_PRUNABLE = 10 * 16 + 16 * 3


class TinyMLP(torch.nn.Module):
    # A PreTrainedModel's attribute, which the Trainer reads after its lenient checkpoint load;
    # with it the Trainer only warns about the pruned keys a dense model cannot take.
    _keys_to_ignore_on_save = None

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(10, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x, labels=None):
        logits = self.out(torch.tanh(self.hidden(x)))
        if labels is None:
            return {"logits": logits}
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class Blobs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 10, generator=g)
        self.y = torch.randint(0, 3, (64,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class ZeroWatch(transformers.TrainerCallback):
    """After every optimizer step once pruned: pruned weights and their state stay zero."""

    def __init__(self) -> None:
        self.checked = 0

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        masks = current_masks(model)
        if not masks:
            return
        raw_opt = getattr(optimizer, "optimizer", optimizer)
        for name, mask in masks.items():
            raw = model.get_submodule(name.rsplit(".", 1)[0]).weight_orig
            assert torch.all(raw[~mask] == 0), name
            for value in raw_opt.state[raw].values():
                if isinstance(value, torch.Tensor) and value.shape == raw.shape:
                    assert torch.all(value[~mask] == 0), name
        copy.deepcopy(model)  # the pitfall: deepcopy of a pruned module mid-training
        self.checked += 1


def train(tmp_path, model, callback, epochs=2, sgd=False, save_steps=None, resume=None):
    watch = ZeroWatch()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8,
        learning_rate=5e-2, logging_steps=4, report_to="none", use_cpu=True,
        disable_tqdm=True, save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, seed=0, dataloader_num_workers=0)
    optimizers = (torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9), None) \
        if sgd else (None, None)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Blobs(),
                                   callbacks=[callback, watch], optimizers=optimizers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedPointWarning on a short window
        trainer.train(resume_from_checkpoint=resume)
    return trainer, watch


@pytest.mark.parametrize("sgd", [True, False], ids=["sgd-momentum", "adamw"])
def test_prunes_at_the_step_keeps_zeros_and_logs(tmp_path, sgd):
    callback = KoopmanPruningCallback(sparsity=SPARSITY, every=1, stop=6)
    model = TinyMLP()
    trainer, watch = train(tmp_path, model, callback, sgd=sgd)
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    assert callback.metrics["prune_step"] == 6
    assert watch.checked == 2 * STEPS_PER_EPOCH - 6 + 1
    stats = model_sparsity(model)
    assert stats["sparsity"] == round(SPARSITY * N_PRUNABLE) / N_PRUNABLE
    traj = callback.trajectory()
    assert list(traj.steps) == list(range(0, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedPointWarning on a short window
        expected, _ = koopman_masks(traj, "kmp", SPARSITY, model=model)
    for name, mask in expected.items():
        assert torch.equal(callback.masks[name], mask)
    ours = [row for row in trainer.state.log_history if "koopman/sparsity" in row]
    assert len(ours) >= 1 and ours[0]["step"] == 6
    assert ours[0]["koopman/sparsity"] == callback.report.sparsity
    assert 0.0 <= ours[0]["koopman/overlap_magnitude"] <= 1.0
    assert ours[0]["koopman/fixed_point_reliable"] in (0.0, 1.0)
    assert ours[0]["koopman/rank"] >= 1


def test_masks_survive_save_model_checkpoint_and_resume(tmp_path):
    callback = KoopmanPruningCallback(sparsity=SPARSITY, stop=4)
    model = TinyMLP()
    trainer, _ = train(tmp_path, model, callback, epochs=1, sgd=True, save_steps=6)
    trainer.save_model(str(tmp_path / "final"))
    fresh = TinyMLP()
    masks = load_pruned_checkpoint(fresh, tmp_path / "final")
    x = torch.randn(5, 10)
    assert torch.equal(fresh(x)["logits"], model(x)["logits"])
    for name, mask in callback.masks.items():
        assert torch.equal(masks[name], mask)
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert any("koopman/sparsity" in row for row in state["log_history"])
    # Resuming on a dense model would silently lose the masks: refused, with the fix.
    with pytest.raises(RuntimeError, match="carries no masks.*load_pruned_checkpoint"):
        train(tmp_path, TinyMLP(), KoopmanPruningCallback(sparsity=SPARSITY, stop=4), epochs=2,
              sgd=True, resume=str(tmp_path / "checkpoint-6"))
    resumed = TinyMLP()
    load_pruned_checkpoint(resumed, tmp_path / "checkpoint-6")
    again = KoopmanPruningCallback(sparsity=SPARSITY, stop=4)
    trainer2, watch = train(tmp_path, resumed, again, epochs=2, sgd=True,
                            resume=str(tmp_path / "checkpoint-6"))
    assert trainer2.state.global_step == 2 * STEPS_PER_EPOCH
    assert watch.checked == 2 * STEPS_PER_EPOCH - 6
    for name, mask in callback.masks.items():
        assert torch.equal(current_masks(resumed)[name], mask)
    assert model_sparsity(resumed)["sparsity"] == callback.report.sparsity


def test_bad_input_is_refused_with_the_fix(tmp_path):
    model = TinyMLP()
    foreign = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4,
                                          report_to="none", use_cpu=True, disable_tqdm=True,
                                          save_strategy="no", per_device_train_batch_size=8)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Blobs(),
                                   callbacks=[KoopmanPruningCallback(sparsity=0.5, stop=2)],
                                   optimizers=(foreign, None))
    with pytest.raises(ValueError, match="does not own the model's parameters.*optimizers="):
        trainer.train()
    assert not current_masks(model)
    with pytest.raises(RuntimeError, match="before the window is recorded"):
        KoopmanPruningCallback(sparsity=0.5, stop=2).compute_masks()
    with pytest.raises(ValueError, match="after the last training step"):
        train(tmp_path, TinyMLP(), KoopmanPruningCallback(sparsity=0.5, prune_at=3, unit="epoch"),
              epochs=1)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pruned_checkpoint(TinyMLP(), tmp_path / "nowhere")
