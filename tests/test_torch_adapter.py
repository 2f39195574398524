"""The PyTorch adapter: recording, Koopman masks, applying them, and torch's pruning pitfalls.

A small CNN (conv, ReLU, max-pool, strided conv, linear) is trained on the digits as 1x8x8
images. Every pitfall of ``torch.nn.utils.prune`` named in the issue has a test that shows the
adapter gets it right.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from kooplearn_prune.adapters.torch import (  # noqa: E402
    MaskEnforcer,
    MaskParametrization,
    TorchRecorder,
    apply_masks,
    current_masks,
    deepcopy_model,
    gradient_scores,
    importance_scores,
    koopman_masks,
    load_pruned_state_dict,
    make_permanent,
    masks_from_scores,
    model_sparsity,
    select_parameters,
)
from kooplearn_prune.data import load_dataset  # noqa: E402
from kooplearn_prune.pruning import jaccard, overlap  # noqa: E402

pytestmark = pytest.mark.torch
MODES = ("prune", "parametrize", "bake")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads on a shared 2-core machine make a 1 ms step take 50 ms.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_cnn(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8)] if batchnorm else []
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
               nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    x = torch.from_numpy(np.asarray(ds.x_train)).reshape(-1, *ds.input_shape)
    return x, torch.from_numpy(np.asarray(ds.y_train))


def batches(digits, n, seed=0, size=64):
    x, y = digits
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, x.shape[0], (size,), generator=g)
        yield x[idx], y[idx]


LOSS = nn.CrossEntropyLoss()


def train(model, optimizer, digits, steps, seed=0, recorder=None):
    for xb, yb in batches(digits, steps, seed):
        optimizer.zero_grad()
        LOSS(model(xb), yb).backward()
        optimizer.step()
        if recorder is not None:
            recorder.step()


@pytest.fixture(scope="module")
def trained_state(digits):
    model = small_cnn()
    train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), digits, 150)
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def trained(trained_state):
    model = small_cnn()
    model.load_state_dict(trained_state)
    return model


def weight_masks(model, seed=1, keep=0.5):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=g) < keep
            for name, p in model.named_parameters() if name.endswith("weight")}


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------- import
def test_package_import_is_light_and_missing_torch_names_the_extra():
    code = (
        "import sys\n"
        "import kooplearn_prune.adapters\n"
        "assert 'torch' not in sys.modules, 'adapters imported torch'\n"
        "sys.modules['torch'] = None\n"
        "try:\n"
        "    from kooplearn_prune.adapters import TorchRecorder\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "kooplearn-prune[torch]" in out.stdout


# --------------------------------------------------------------------------- selection
def test_layout_uses_canonical_names_in_an_order_pruning_does_not_change():
    model = small_cnn(batchnorm=True)
    layout, _ = select_parameters(model)
    assert layout.names == ("0.bias", "0.weight", "1.bias", "1.weight", "4.bias", "4.weight",
                            "7.bias", "7.weight")
    prunable = dict(zip(layout.names, layout.prunable))
    # conv and linear weights are prunable; biases and BatchNorm are recorded, not prunable
    assert [n for n, p in prunable.items() if p] == ["0.weight", "4.weight", "7.weight"]
    assert "1.running_mean" not in layout.names  # buffers are not parameters
    for mode in ("prune", "parametrize"):
        pruned = small_cnn(batchnorm=True)
        apply_masks(pruned, {"0.weight": torch.ones(8, 1, 3, 3, dtype=torch.bool)}, mode=mode)
        assert any("_orig" in k or "parametrizations" in k for k in pruned.state_dict())
        assert select_parameters(pruned)[0] == layout
    excluded, _ = select_parameters(model, non_prunable="exclude")
    assert excluded.names == ("0.weight", "4.weight", "7.weight")
    chosen, _ = select_parameters(model, prunable=["7.weight", "1.weight"])
    assert [n for n, p in zip(chosen.names, chosen.prunable) if p] == ["1.weight", "7.weight"]
    with pytest.raises(ValueError, match="not tensors of the model"):
        select_parameters(model, prunable=["8.weight"])


def test_frozen_parameters_are_not_recorded():
    model = small_cnn()
    model[0].weight.requires_grad_(False)
    layout, _ = select_parameters(model)
    assert "0.weight" not in layout.names and "0.bias" in layout.names
    with pytest.raises(ValueError, match="requires_grad=False"):
        select_parameters(model, prunable=["0.weight"])


# --------------------------------------------------------------------------- recording
def test_hook_and_explicit_step_record_the_same_trajectory(digits):
    runs = []
    for hooked in (True, False):
        model = small_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        rec = TorchRecorder(model, every=3, start=2, stop=14, record_gradients=True)
        seen = {}
        if hooked:
            with rec.attach(opt):
                for t, (xb, yb) in enumerate(batches(digits, 15), start=1):
                    opt.zero_grad()
                    LOSS(model(xb), yb).backward()
                    opt.step()
                    seen[t] = (flat(model).clone(),
                               torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        else:
            rec.attach()
            train(model, opt, digits, 15, recorder=rec)
        runs.append((rec, seen))
    (hooked, seen), (manual, _) = runs
    assert hooked.steps == manual.steps == [2, 5, 8, 11, 14]
    traj = hooked.trajectory()
    np.testing.assert_array_equal(traj.snapshots, manual.trajectory().snapshots)
    layout = traj.layout
    # rows are θ_t in layout order; gradients[j] is the gradient used by step t
    order = [name for name, _ in small_cnn().named_parameters()]
    for j, t in enumerate(traj.steps):
        by_name = layout.unflatten(traj.snapshots[j])
        grads = layout.unflatten(traj.gradients[j])
        theta, grad = seen[int(t)]
        offset = 0
        for name in order:
            size = by_name[name].size
            np.testing.assert_array_equal(by_name[name].reshape(-1), theta[offset:offset + size])
            np.testing.assert_array_equal(grads[name].reshape(-1), grad[offset:offset + size])
            offset += size
    meta = traj.metadata
    assert meta.optimizer == "sgd" and meta.momentum == 0.9 and meta.betas is None
    assert meta.lr == 0.05 and meta.every == 3 and meta.framework == "torch"
    assert meta.first_gradient_row == 0 and meta.steps_per_epoch is None  # t = 0 not in window
    # the Trajectory is a zero-copy view of the recorder's CPU buffer
    assert np.shares_memory(traj.snapshots, hooked.buffer().numpy())


def test_initial_snapshot_and_a_buffer_that_outgrows_its_capacity(digits, tmp_path):
    model = small_cnn()
    theta0 = flat(model).clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TorchRecorder(model, capacity=4, record_gradients=True)
    assert rec.capacity == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no row is dropped, nothing to warn about
        with rec.attach(opt):
            train(model, opt, digits, 6)
    assert rec.steps == [0, 1, 2, 3, 4, 5, 6] and rec.capacity == 8
    np.testing.assert_array_equal(rec.trajectory().snapshots[-1],
                                  torch.cat([r.param.detach().reshape(-1)
                                             for r in rec.refs]).numpy())
    traj = rec.trajectory()
    assert traj.metadata.first_gradient_row == 1
    assert float(np.abs(traj.gradients[0]).max()) == 0.0  # no step produced θ_0
    assert sorted(traj.snapshots[0].tolist()) == sorted(theta0.tolist())
    # a float64 buffer in host memory, saved and loaded like any native trajectory
    wide = TorchRecorder(model, stop=0, device="host", dtype=torch.float64).attach()
    assert wide.buffer().dtype == torch.float64 and wide.buffer().device.type == "cpu"
    now = torch.cat([r.param.detach().reshape(-1) for r in wide.refs]).double()
    np.testing.assert_array_equal(wide.trajectory().snapshots[0], now.numpy())
    from kooplearn_prune.trajectory import Trajectory

    traj.save(tmp_path / "traj.npz")
    back = Trajectory.load(tmp_path / "traj.npz")
    assert back.layout == traj.layout and back.metadata == traj.metadata
    assert back.metadata.optimizer == "sgd"
    np.testing.assert_array_equal(back.snapshots, traj.snapshots)
    with pytest.raises(RuntimeError, match="attach"):
        TorchRecorder(model, stop=3).step()


def test_recording_reads_effective_weights_of_masked_models(digits):
    for mode in ("prune", "parametrize"):
        model = small_cnn()
        masks = weight_masks(model)
        apply_masks(model, masks, mode=mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        rec = TorchRecorder(model, stop=5)
        with rec.attach(opt):
            train(model, opt, digits, 5)
        traj = rec.trajectory()
        assert "0.weight" in traj.layout.names
        rows = traj.layout.unflatten(traj.snapshots)
        for name, mask in masks.items():
            assert np.all(rows[name][:, ~mask.numpy()] == 0), (mode, name)
        # model.parameters() sees the dense trainable tensor; the adapter sees the zeros
        dense = sum(int((p == 0).sum()) for p in model.parameters())
        assert dense == 0
        assert model_sparsity(model)["sparsity"] == pytest.approx(
            1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))


def test_detaching_leaves_model_and_optimizer_untouched(digits):
    results = []
    for record in (True, False):
        model = small_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if record:
            rec = TorchRecorder(model, stop=4).attach(opt)
            train(model, opt, digits, 4, seed=1)
            rec.detach()
            assert not opt._optimizer_step_post_hooks and not opt._optimizer_step_pre_hooks
            assert len(rec) == 5
        else:
            train(model, opt, digits, 4, seed=1)
        train(model, opt, digits, 3, seed=2)
        results.append((model.state_dict(), opt.state_dict()))
    (m1, o1), (m2, o2) = results
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
    for pid, state in o1["state"].items():
        assert torch.equal(state["momentum_buffer"], o2["state"][pid]["momentum_buffer"])
    assert o1["param_groups"] == o2["param_groups"]


def test_layout_that_does_not_match_the_model_raises(digits):
    model = small_cnn()
    rec = TorchRecorder(model, stop=2)
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ValueError, match="does not match the model"):
        TorchRecorder(other, stop=2, layout=rec.layout)
    rec.attach()
    masks, _ = koopman_masks(rec.trajectory(), "magnitude", sparsity=0.5)
    with pytest.raises(ValueError, match="does not match the model"):
        koopman_masks(rec.trajectory(), "magnitude", sparsity=0.5, model=other)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="shape"):
        apply_masks(other, {"0.weight": torch.ones(4, 1, 3, 3, dtype=torch.bool),
                            "2.weight": masks["6.weight"]})
    assert list(other.state_dict()) == list(before)  # nothing was applied


# --------------------------------------------------------------------------- masks
def test_kmp_mask_from_a_converged_window_equals_torch_global_l1(trained, digits):
    # Claim A: over a converged window (a tiny learning rate) KMP ranks by |θ| like GMP.
    opt = torch.optim.SGD(trained.parameters(), lr=1e-6)
    rec = TorchRecorder(trained, stop=8)
    with rec.attach(opt):
        train(trained, opt, digits, 8, seed=3)
    p = 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fixed point must be reliable here
        kmp, report = koopman_masks(rec.trajectory(), "kmp", sparsity=p, model=trained)
    reference = copy.deepcopy(trained)
    targets = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=p)
    torch_masks = {"0.weight": reference[0].weight_mask, "3.weight": reference[3].weight_mask,
                   "6.weight": reference[6].weight_mask}
    assert set(kmp) == {"0.weight", "3.weight", "6.weight"}  # prunable tensors only
    for name, mask in torch_masks.items():
        assert torch.equal(kmp[name], mask.bool()), name
    # the magnitude method and torch fed with the exported KMP scores agree too
    gmp, _ = koopman_masks(rec.trajectory(), "magnitude", sparsity=p)
    assert all(torch.equal(gmp[n], kmp[n]) for n in kmp)
    exported = copy.deepcopy(trained)
    params, scores = importance_scores(report, exported)
    prune.global_unstructured(params, prune.L1Unstructured, importance_scores=scores, amount=p)
    for (module, attr), name in zip(params, ("0.weight", "3.weight", "6.weight")):
        assert torch.equal(getattr(module, attr + "_mask").bool(), kmp[name])
    assert report.sparsity == pytest.approx(round(p * report.n_prunable) / report.n_prunable)
    assert abs(report.info["distance_from_one"]) < 1e-6


def test_kgp_and_gradient_masks_reported_against_each_other(trained, digits):
    opt = torch.optim.SGD(trained.parameters(), lr=0.02)  # plain SGD: ĝ tracks the gradient
    rec = TorchRecorder(trained, stop=12, record_gradients=True)
    with rec.attach(opt):
        train(trained, opt, digits, 12, seed=4)
    traj = rec.trajectory()
    j, p = traj.n_snapshots - 2, 0.7
    kgp, kgp_report = koopman_masks(traj, "kgp", sparsity=p, at=j)
    grad, grad_report = koopman_masks(traj, "gradient", sparsity=p, at=j, n_batches=6)
    assert grad_report.info["gradient_rows"] == [7, 8, 9, 10, 11, 12]  # up to j + 1
    a, b = kgp_report.flat_mask, grad_report.flat_mask
    agree, jac = overlap(a, b, traj.layout), jaccard(a, b, traj.layout)
    print(f"KGP vs gradient (|θ·g|, 6 batches) at sparsity {p}: overlap {agree:.3f}, "
          f"jaccard {jac:.3f}")
    # far above the 1 − p = 0.3 a random mask would share, but not claimed identical (Claim D)
    assert agree > 0.6
    assert kgp_report.sparsity == grad_report.sparsity


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.0, 0.97), seed=st.integers(0, 2**16))
def test_global_mask_equals_torch_global_unstructured_at_any_sparsity(p, seed):
    # continuous random scores (no ties): the exact-k engine and torch pick the same entries
    model = small_cnn()
    layout, _ = select_parameters(model)
    scores = np.random.default_rng(seed).random(layout.size)
    masks, report = masks_from_scores(scores, layout, sparsity=p, model=model)
    params, importance = importance_scores(report, model)
    prune.global_unstructured(params, prune.L1Unstructured, importance_scores=importance,
                              amount=p)
    for (module, attr), name in zip(params, ("0.weight", "3.weight", "6.weight")):
        assert torch.equal(getattr(module, attr + "_mask").bool(), masks[name])
    assert report.n_pruned == round(p * layout.n_prunable)


def test_gradient_scores_average_several_batches(trained, digits):
    data = list(batches(digits, 4, seed=5))
    running = trained[0].weight.grad
    one = gradient_scores(trained, data, loss=LOSS, n_batches=1)
    four = gradient_scores(trained, data, loss=LOSS, n_batches=4)
    layout, refs = select_parameters(trained)
    grads = [torch.autograd.grad(LOSS(trained(x), y), [r.param for r in refs]) for x, y in data]
    mean = [sum(g[i] for g in grads) / 4 for i in range(len(refs))]
    expected = torch.cat([(r.param.detach().double() * m.double()).abs().reshape(-1)
                          for r, m in zip(refs, mean)])
    np.testing.assert_allclose(four, expected.numpy(), rtol=1e-5, atol=1e-12)
    assert not np.allclose(one, four)
    assert trained[0].weight.grad is running  # .grad untouched
    per_batch = gradient_scores(trained, data, loss=LOSS, n_batches=4, average="score")
    assert np.all(per_batch >= four - 1e-12)  # mean |w g| >= |w mean g| (triangle inequality)
    masks, report = masks_from_scores(four, layout, sparsity=0.5, model=trained)
    assert report.method == "custom" and report.n_pruned == round(0.5 * layout.n_prunable)


def test_gradient_scores_restore_batchnorm_statistics(digits):
    model = small_cnn(batchnorm=True).train()
    before = model[1].running_mean.clone()
    gradient_scores(model, batches(digits, 2), loss=LOSS, n_batches=2)
    assert torch.equal(model[1].running_mean, before)


def test_mask_report_compression_scope_and_validation(trained):
    rec = TorchRecorder(trained, stop=0).attach()
    traj = rec.trajectory()
    _, default = koopman_masks(traj, "random", compression=4.0, model=trained, seed=2)
    assert default.requested_over == "prunable"
    assert default.compression_prunable == pytest.approx(4.0, rel=1e-3)
    assert default.compression_all < 4.0  # biases are kept, so fewer of all are removed
    masks, report = koopman_masks(traj, "random", compression=4.0, model=trained, seed=2,
                                  over="all")
    assert report.requested_compression == 4.0 and report.requested_over == "all"
    kept = report.n_total / report.compression_all  # ShrinkBench: all / nonzero
    assert abs(kept - report.n_total / 4.0) <= 1.0  # exact up to rounding to whole entries
    assert report.n_total == sum(p.numel() for p in trained.parameters())
    prunable = {n for n, p in zip(traj.layout.names, traj.layout.prunable) if p}
    assert set(masks) == prunable  # biases are never pruned, so they get no mask
    for name, shape in zip(traj.layout.names, traj.layout.shapes):
        if name in prunable:
            assert masks[name].dtype == torch.bool and tuple(masks[name].shape) == shape
            assert masks[name].device == trained[0].weight.device
    assert "ShrinkBench" in str(report) and report.to_dict()["n_pruned"] == report.n_pruned
    lw, lw_report = koopman_masks(traj, "magnitude", sparsity=0.5, scope="layerwise")
    for row in lw_report.table:
        if row["prunable"] and row["name"].endswith("weight"):
            assert abs(row["sparsity"] - 0.5) <= 1 / row["size"]
    with pytest.raises(ValueError, match="recorded gradients"):
        koopman_masks(traj, "gradient", sparsity=0.5)
    with pytest.raises(ValueError, match="method"):
        koopman_masks(traj, "snip", sparsity=0.5)
    with pytest.raises(ValueError, match="sparsity"):
        koopman_masks(traj, "magnitude", sparsity=1.5)
    with pytest.raises(ValueError, match="not binary"):
        apply_masks(trained, {"0.weight": torch.full((8, 1, 3, 3), 0.5)})
    with pytest.raises(ValueError, match="mode"):
        apply_masks(trained, lw, mode="zero")


# --------------------------------------------------------------------------- applying masks
def test_prune_mode_replaces_an_existing_mask_instead_of_intersecting():
    model = small_cnn()
    first, second = weight_masks(model, seed=1), weight_masks(model, seed=2)
    apply_masks(model, first)
    apply_masks(model, second)
    for name, mask in second.items():
        module = model.get_submodule(name.split(".")[0])
        assert torch.equal(module.weight_mask.bool(), mask)
        assert torch.equal(module.weight != 0, mask & (module.weight_orig != 0))
    # torch's own custom_from_mask would have intersected the two
    plain = small_cnn()
    prune.custom_from_mask(plain[0], "weight", first["0.weight"])
    prune.custom_from_mask(plain[0], "weight", second["0.weight"])
    assert torch.equal(plain[0].weight_mask.bool(), first["0.weight"] & second["0.weight"])
    # and a mask made by torch itself is replaced as well
    prune.l1_unstructured(model[3], "weight", amount=0.9)
    apply_masks(model, {"3.weight": second["3.weight"]})
    assert torch.equal(model[3].weight_mask.bool(), second["3.weight"])


@pytest.mark.parametrize("mode", MODES)
def test_masks_survive_save_and_load(mode, trained, digits):
    masks = weight_masks(trained)
    apply_masks(trained, masks, mode=mode)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    fresh = small_cnn(seed=7)
    if mode != "bake":  # the pitfall: a pruned state_dict does not load into a fresh model
        with pytest.raises(RuntimeError):
            small_cnn(seed=7).load_state_dict(state)
    loaded = load_pruned_state_dict(fresh, state)
    x = next(batches(digits, 1))[0]
    torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)
    if mode == "bake":
        assert loaded == {}
        for name, mask in masks.items():
            module = fresh.get_submodule(name.split(".")[0])
            assert torch.equal(module.weight != 0, mask & (module.weight != 0))
            assert not bool(module.weight[~mask].any())
    else:
        assert set(loaded) == set(masks)
        assert all(torch.equal(loaded[n], masks[n]) for n in masks)
        assert all(torch.equal(current_masks(fresh)[n], masks[n]) for n in masks)
        assert list(fresh.state_dict()) == list(state)  # same mode as saved
        # loading into another mode works too
        other = "parametrize" if mode == "prune" else "prune"
        again = small_cnn(seed=8)
        load_pruned_state_dict(again, state, mode=other)
        torch.testing.assert_close(again(x), trained(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not fit"):
        load_pruned_state_dict(nn.Sequential(nn.Linear(2, 2)), state)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("mode", MODES)
def test_enforcer_keeps_pruned_weights_and_optimizer_state_at_zero(optimizer, mode, trained,
                                                                    digits):
    def make_opt(model):
        if optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    opt = make_opt(trained)
    train(trained, opt, digits, 3)  # optimizer state is dense before pruning
    masks = weight_masks(trained)
    apply_masks(trained, masks, mode=mode)
    with MaskEnforcer(trained, opt, masks=masks if mode == "bake" else None):
        train(trained, opt, digits, 5, seed=6)
    layout, found = select_parameters(trained)
    refs = dict(zip(layout.names, found))
    for name, mask in masks.items():
        param = refs[name].param
        assert not bool(param[~mask].any()), name
        state = opt.state[param]
        keys = ["exp_avg", "exp_avg_sq"] if optimizer == "adam" else ["momentum_buffer"]
        for key in keys:
            assert not bool(state[key][~mask].any()), (name, key)
            assert bool(state[key][mask].any())
    assert not opt._optimizer_step_post_hooks  # detached on exit
    # without the enforcer, momentum moves the zeroed entries again (the pitfall)
    train(trained, opt, digits, 2, seed=7)
    name = "3.weight"
    moved = refs[name].param.detach()[~masks[name]]
    assert bool(moved.any()) == (mode == "bake")


def test_make_permanent_keeps_zeros_and_returns_masks_for_fine_tuning(trained, digits):
    masks = weight_masks(trained)
    apply_masks(trained, masks, mode="parametrize")
    apply_masks(trained, {"6.weight": masks["6.weight"]}, mode="prune")
    removed = make_permanent(trained)
    assert set(removed) == set(masks)
    assert not any("_orig" in k or "parametrizations" in k for k in trained.state_dict())
    for name, mask in masks.items():
        assert not bool(trained.get_parameter(name)[~mask].any())
    opt = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9)
    with MaskEnforcer(trained, opt, masks=removed):
        train(trained, opt, digits, 3)
    assert not bool(trained.get_parameter("3.weight")[~masks["3.weight"]].any())
    train(trained, opt, digits, 2)  # after prune.remove nothing protects the zeros
    assert bool(trained.get_parameter("3.weight")[~masks["3.weight"]].any())


def test_deepcopy_in_each_mode(trained, digits):
    x = next(batches(digits, 1))[0]
    for mode in MODES:
        model = small_cnn()
        model.load_state_dict(trained.state_dict())
        apply_masks(model, weight_masks(model), mode=mode)
        if mode == "prune":
            with pytest.raises(RuntimeError, match="deepcopy"):
                copy.deepcopy(model)  # the pitfall
            clone = deepcopy_model(model)
        else:
            clone = copy.deepcopy(model)
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
        if mode == "parametrize":
            assert isinstance(clone[0].parametrizations.weight[0], MaskParametrization)


# --------------------------------------------------------------------------- odd parameters
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x)))


@pytest.mark.parametrize("mode", MODES)
def test_tied_weight_is_recorded_once_and_masked_in_every_owner(mode):
    model = Tied()
    with pytest.warns(UserWarning, match="tied"):
        rec = TorchRecorder(model, stop=0)
    assert rec.layout.names == ("enc.bias", "enc.weight", "dec.bias")
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    apply_masks(model, {"enc.weight": mask}, mode=mode)
    assert torch.equal(model.enc.weight != 0, mask) and torch.equal(model.dec.weight != 0, mask)
    assert model_sparsity(model)["sparsity"] == pytest.approx(1 - float(mask.float().mean()))
    rec = TorchRecorder(model, stop=0, layout=rec.layout).attach()
    assert int((rec.trajectory().snapshots == 0).sum()) == int((~mask).sum())
    clone = deepcopy_model(model) if mode == "prune" else copy.deepcopy(model)
    x = torch.randn(3, 6)
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert select_parameters(clone, warn_tied=False)[1][1].aliases == ["dec.weight"]  # still tied
    fresh = Tied()
    load_pruned_state_dict(fresh, model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert select_parameters(fresh, warn_tied=False)[1][1].aliases == ["dec.weight"]
    # the pitfall: torch's prune masks only the owner it is given
    plain = Tied()
    prune.custom_from_mask(plain.enc, "weight", mask)
    assert bool((plain.dec.weight[~mask] != 0).all())


def test_non_contiguous_parameter_is_recorded_and_masked_in_c_order():
    model = nn.Sequential(nn.Linear(3, 5))
    model[0].weight = nn.Parameter(torch.randn(3, 5).t())  # (5, 3), not contiguous
    assert not model[0].weight.is_contiguous()
    rec = TorchRecorder(model, stop=0).attach()
    w = rec.trajectory().layout.unflatten(rec.trajectory().snapshots[0])["0.weight"]
    np.testing.assert_array_equal(w, model[0].weight.detach().numpy())
    masks, _ = koopman_masks(rec.trajectory(), "magnitude", sparsity=0.4, model=model)
    for mode in MODES:
        m = nn.Sequential(nn.Linear(3, 5))
        m[0].weight = nn.Parameter(model[0].weight.detach().clone().t().contiguous().t())
        apply_masks(m, masks, mode=mode)
        assert torch.equal(m[0].weight != 0, masks["0.weight"])
        state = m.state_dict()
        fresh = nn.Sequential(nn.Linear(3, 5))
        load_pruned_state_dict(fresh, state)
        assert torch.equal(fresh[0].weight != 0, masks["0.weight"])


# --------------------------------------------------------------------------- GPU
def test_cuda_buffer_hands_off_to_cupy_without_a_copy():
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device visible to torch")
    from kooplearn_prune.backend import use_backend

    model = small_cnn().cuda()
    rec = TorchRecorder(model, stop=0).attach()
    with use_backend("cupy"):
        traj = rec.trajectory()
    assert isinstance(traj.snapshots, cupy.ndarray)
    assert traj.snapshots.data.ptr == rec.buffer().data_ptr()


def test_recorder_conventions_is_the_layout_shortcut():
    from kooplearn_prune.adapters.torch.models import MnistNet

    model = MnistNet()
    want, _ = select_parameters(model, conventions="shrinkbench")
    rec = TorchRecorder(model, conventions="shrinkbench")
    assert rec.layout.names == want.names and rec.layout.prunable == want.prunable
    assert "fc2.weight" in rec.layout.names and not rec.layout.prunable[
        rec.layout.names.index("fc2.weight")]
    with pytest.raises(ValueError, match="either layout= or conventions="):
        TorchRecorder(model, layout=want, conventions="shrinkbench")


def test_pruning_keeps_the_parameter_order_so_optimizer_state_follows_its_tensor():
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import apply_masks, make_permanent

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    shapes = [tuple(p.shape) for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    apply_masks(model, {"0.weight": torch.rand(3, 4) > 0.5})
    # torch alone appends weight_orig at the end: (bias, weight_orig); the adapter keeps weight's
    assert [name for name, _ in model[0].named_parameters()] == ["weight_orig", "bias"]
    assert [tuple(p.shape) for p in model.parameters()] == shapes
    fresh = torch.optim.Adam(model.parameters())
    fresh.load_state_dict(saved)                      # state i belongs to parameter i
    for p, state in zip(model.parameters(), fresh.state_dict()["state"].values()):
        assert state["exp_avg"].shape == p.shape
    make_permanent(model)
    assert [name for name, _ in model[0].named_parameters()] == ["weight", "bias"]
