"""The paper's networks (MnistNet, CIFAR ResNets), build_model, and the ShrinkBench conventions.

The equivalence test is Claim A of docs/theory.md §9 at the paper's scale: over a converged window
KMP keeps exactly the weights ``torch.nn.utils.prune.global_unstructured`` with
``L1Unstructured`` keeps, on the same tensors, at sparsities 0.5, 0.8, 0.9 and 0.95.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from kooplearn_prune.adapters.torch import (  # noqa: E402
    CONVENTIONS,
    MODELS,
    TorchRecorder,
    apply_masks,
    build_model,
    compression_over,
    koopman_masks,
    make_permanent,
    masks_from_scores,
    select_parameters,
)

pytestmark = pytest.mark.torch
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
INPUTS = {"mnistnet": (2, 1, 28, 28), "resnet20": (2, 3, 32, 32)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def prunable_names(model, conventions):
    layout, _ = select_parameters(model, conventions=conventions)
    return [n for n, f in zip(layout.names, layout.prunable) if f]


# --------------------------------------------------------------------------- the networks
def test_builtin_models_have_the_published_sizes_and_outputs():
    counts = {name: sum(p.numel() for p in build_model(name).parameters()) for name in MODELS}
    # He et al. 2016 Table 6: 0.27 M, 0.46 M, 0.66 M, 0.85 M, 1.7 M; MnistNet: 800 -> 500 -> 10
    assert counts == {"mnistnet": 431_080, "resnet20": 269_722, "resnet32": 464_154,
                      "resnet44": 658_586, "resnet56": 853_018, "resnet110": 1_727_962}
    torch.manual_seed(0)
    for name, shape in INPUTS.items():
        model = build_model(name, num_classes=7)
        out = model(torch.randn(shape))
        assert out.shape == (2, 7)
        assert getattr(model.classifier, "is_classifier", False) is True
    # MnistNet returns log-probabilities, as ShrinkBench's
    out = build_model("mnistnet")(torch.randn(3, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(3))
    assert build_model("resnet20", in_channels=1).conv1.in_channels == 1


def test_resnet_option_a_shortcut_has_no_parameters_and_pads_channels():
    model = build_model("resnet20")
    names = [n for n, _ in model.named_parameters()]
    assert not any("shortcut" in n for n in names)
    block = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_build_model_from_a_module_function(monkeypatch):
    fake = types.ModuleType("my_models_for_test")

    def small(num_classes=3):
        return nn.Linear(4, num_classes)

    fake.small = small
    fake.no_args = lambda: nn.Linear(2, 2)
    fake.not_a_model = lambda: "model"
    fake.constant = 3
    monkeypatch.setitem(sys.modules, "my_models_for_test", fake)
    # only the keywords the function names are passed
    assert build_model("my_models_for_test:small", num_classes=5, in_channels=1).out_features == 5
    assert isinstance(build_model("my_models_for_test:no_args", num_classes=5), nn.Linear)
    with pytest.raises(TypeError, match="returned a str, not a torch.nn.Module"):
        build_model("my_models_for_test:not_a_model")
    with pytest.raises(TypeError, match="not a function"):
        build_model("my_models_for_test:constant")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        build_model("my_models_for_test:missing")
    with pytest.raises(ValueError, match="cannot be imported"):
        build_model("no_such_package_xyz.models:make")
    with pytest.raises(ValueError, match="not a built-in model.*resnet20.*package.module:function"):
        build_model("resnet21")
    with pytest.raises(TypeError, match="built-in name"):
        build_model(None)


# --------------------------------------------------------------------------- conventions
def test_conventions_choose_the_tensors_shrinkbench_prunes():
    mnist = build_model("mnistnet")
    assert prunable_names(mnist, "library") == [
        "conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert prunable_names(mnist, "shrinkbench") == [
        "conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "fc1.bias", "fc1.weight"]
    resnet = build_model("resnet20")
    library, shrinkbench = prunable_names(resnet, "library"), prunable_names(resnet, "shrinkbench")
    convs = [n + ".weight" for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 1 + 3 stages x 3 blocks x 2
    assert library == convs + ["linear.weight"]
    assert shrinkbench == convs  # bias-free convs; the classifier and batch norm stay unpruned
    layout, _ = select_parameters(resnet, conventions="shrinkbench")
    assert "bn1.weight" in layout.names and "linear.bias" in layout.names  # recorded, unpruned
    assert CONVENTIONS == {"library": "prunable", "shrinkbench": "all"}
    assert compression_over("shrinkbench") == "all"


def test_shrinkbench_conventions_follow_its_classifier_marker_and_refuse_bad_input():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="no module marked is_classifier"):
        assert prunable_names(model, "shrinkbench") == ["3.bias", "3.weight"]  # no Conv1d
    model[1].is_classifier = False  # ShrinkBench decides by the marker alone
    model[3].is_classifier = True
    assert prunable_names(model, "shrinkbench") == ["1.bias", "1.weight"]
    model[1].is_classifier = True
    with pytest.raises(ValueError, match="conventions='shrinkbench' finds no prunable tensor"):
        select_parameters(model, conventions="shrinkbench")
    with pytest.raises(ValueError, match="either prunable= or conventions"):
        select_parameters(model, ["3.weight"], conventions="shrinkbench")
    with pytest.raises(ValueError, match="conventions='torch' must be 'library'"):
        select_parameters(model, conventions="torch")


def test_shrinkbench_compression_counts_every_parameter():
    # ShrinkBench's metrics.model_size: all parameters / nonzero parameters of the whole model
    model = build_model("mnistnet")
    layout, _ = select_parameters(model, conventions="shrinkbench")
    scores = np.random.default_rng(0).random(layout.size)
    masks, report = masks_from_scores(scores, layout, compression=10.0, model=model,
                                      over=compression_over("shrinkbench"))
    apply_masks(model, masks)
    make_permanent(model)
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    assert total / nonzero == pytest.approx(10.0, rel=1e-4)
    assert report.compression_all == pytest.approx(total / nonzero)
    assert not masks["fc1.bias"].all()  # biases are pruned under these conventions
    assert "fc2.weight" not in masks and "fc2.bias" not in masks


# --------------------------------------------------------------------------- equivalence
def _window(model, layout, shape, train_steps):
    """``train_steps`` SGD steps on one batch, then the last snapshot repeated three times."""
    torch.manual_seed(1)
    x, y = torch.randn(shape), torch.tensor([1, 7])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    recorder = TorchRecorder(model, layout=layout)
    recorder.attach()
    recorder.step()
    for _ in range(train_steps):
        opt.zero_grad()
        functional.cross_entropy(model(x), y).backward()
        opt.step()
        recorder.step()
    for _ in range(3):
        recorder.step()
    recorder.detach()
    return recorder.trajectory()


def _torch_l1_masks(model, layout, p):
    reference = copy.deepcopy(model)
    modules = dict(reference.named_modules())
    targets = {n: (modules[n.rpartition(".")[0]], n.rpartition(".")[2])
               for n, f in zip(layout.names, layout.prunable) if f}
    prune.global_unstructured(list(targets.values()), pruning_method=prune.L1Unstructured,
                              amount=p)
    return {n: getattr(m, a + "_mask").bool() for n, (m, a) in targets.items()}


@pytest.mark.parametrize("conventions", ["library", "shrinkbench"])
@pytest.mark.parametrize("name", ["mnistnet", "resnet20"])
def test_kmp_from_a_converged_window_equals_torch_global_l1(name, conventions):
    torch.manual_seed(0)
    model = build_model(name)
    layout, _ = select_parameters(model, conventions=conventions)
    untrained = copy.deepcopy(model)
    frozen = _window(untrained, layout, INPUTS[name], train_steps=0)  # every snapshot equal
    stopped = _window(model, layout, INPUTS[name], train_steps=3)  # moves, then stands still
    last = np.abs(stopped.snapshots[-1])
    for p in SPARSITIES:
        reference = _torch_l1_masks(untrained, layout, p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a frozen window warns that nothing moves
            frozen_kmp, _ = koopman_masks(frozen, "kmp", sparsity=p, model=untrained)
        assert set(frozen_kmp) == set(reference)
        for tensor in reference:
            assert torch.equal(frozen_kmp[tensor], reference[tensor]), (tensor, p)
        reference = _torch_l1_masks(model, layout, p)
        # a trained window that stops: bit-for-bit up to entries at the threshold's float32 ulp
        stopped_kmp, report = koopman_masks(stopped, "kmp", sparsity=p, model=model)
        ours = np.concatenate([stopped_kmp[n].numpy().ravel() for n in reference])
        theirs = np.concatenate([reference[n].numpy().ravel() for n in reference])
        values = np.concatenate([last[layout.slice_of(n)] for n in reference])
        threshold = np.sort(values)[int(round(p * values.size))]
        assert np.all(np.abs(values[ours != theirs] - threshold) <= 1e-6 * threshold), p
        print(f"{name} {conventions} p={p}: frozen window equal; stopped window "
              f"{int((ours != theirs).sum())} of {ours.size} entries differ")
        assert report.n_pruned == round(p * layout.n_prunable)
