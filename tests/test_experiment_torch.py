"""``kooplearn-prune experiment`` on PyTorch models: the native runner's outputs, resuming, KMP
equal to magnitude on a frozen window, the new config keys, and bad input found before anything
is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_experiment import TINY, metrics_files, read_csv, run_cli, write_config  # noqa: E402

import kooplearn_prune.app.torch_study as torch_study  # noqa: E402
from kooplearn_prune.app.experiment_config import (  # noqa: E402
    ConfigError,
    load_config,
    parse_config,
    result_fingerprint,
)
from kooplearn_prune.app.experiment_kmd import fit_window_kmd  # noqa: E402
from kooplearn_prune.app.experiment_runs import SUMMARY_COLUMNS  # noqa: E402
from kooplearn_prune.app.torch_inputs import weight_uses  # noqa: E402
from kooplearn_prune.methods import METHODS, method_mask, method_scores  # noqa: E402
from kooplearn_prune.pruning.metrics import overlap  # noqa: E402
from kooplearn_prune.trajectory import Trajectory  # noqa: E402

pytestmark = pytest.mark.torch

N_TRAIN, BATCH, WINDOW_STEPS = 160, 32, 4
SPE = N_TRAIN // BATCH  # 5 optimizer steps per epoch
FACTORY = "test_experiment_torch:tiny_cnn"


# ---------------------------------------------------------------------- factories of the tests
def tiny_cnn(num_classes: int = 10, in_channels: int = 1) -> torch.nn.Module:
    """Conv 3x3 (4 maps) on 8x8 images, then a Linear classifier: 442 parameters."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, num_classes))


def not_a_module() -> str:
    return "a string"


class _ScaleOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.scale


def no_prunable() -> torch.nn.Module:
    """Trainable, but no Linear or Conv weight."""
    return _ScaleOnly()


TORCH_TINY = f"""
[experiment]
name = "torch_tiny"
seeds = [0]

[data]
dataset = "digits"
n_train = {N_TRAIN}
n_test = 100

[model]
framework = "torch"
name = "{FACTORY}"

[training]
epochs = 2
batch_size = {BATCH}
lr = 0.05
momentum = 0.9

[koopman]
window_epochs = [1, 2]
window_steps = {WINDOW_STEPS}
every = 1

[pruning]
methods = ["kmp", "magnitude"]
compressions = [2, 4]
finetune_epochs = 1
finetune_lr = 0.01
"""
N_RUNS = 1 * 2 * 2 * 2


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: these models are tiny, and the CI's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torch_exp")
    out = tmp / "out"
    assert run_cli(write_config(tmp, TORCH_TINY), out) == 0
    return out


# ---------------------------------------------------------------------- the native runner's outputs
def test_runs_have_the_shrinkbench_files_and_consistent_sizes(finished):
    runs = sorted((finished / "runs").iterdir())
    assert len(runs) == N_RUNS
    size = 4 * 9 + 4 + 144 * 10 + 10
    for run in runs:
        assert {p.name for p in run.iterdir()} == {"params.json", "metrics.json", "logs.csv",
                                                   "masks_summary.csv"}
        params = json.loads((run / "params.json").read_text())
        assert eval(params["model"]) == "test_experiment_torch.tiny_cnn"  # noqa: S307
        assert eval(params["framework"]) == "torch"  # noqa: S307
        m = json.loads((run / "metrics.json").read_text())
        tensors = read_csv(run / "masks_summary.csv")
        assert [t["module"] + "." + t["param"] for t in tensors] == \
            ["0.bias", "0.weight", "3.bias", "3.weight"]
        nnz = {t["module"] + "." + t["param"]: int(t["nnz"]) for t in tensors}
        # the 3x3 conv's 36 weights are each used at its 6 x 6 output positions; Linear once
        assert m["size"] == size and m["flops"] == 4 * 9 * 36 + 144 * 10
        assert m["flops_nz"] == nnz["0.weight"] * 36 + nnz["3.weight"]
        assert m["size_nz"] == sum(int(t["nnz"]) for t in tensors)
        prunable = 4 * 9 + 144 * 10
        kept = sum(int(t["nnz"]) for t in tensors if t["param"] == "weight")
        assert kept == round(prunable / m["compression"])
        assert [int(r["epoch"]) for r in read_csv(run / "logs.csv")] == [1]
        assert 0.0 <= m["post"]["val_acc1"] <= 1.0 and m["device"] == "cpu"
    summary = read_csv(finished / "summary.csv")
    assert len(summary) == N_RUNS and tuple(summary[0]) == SUMMARY_COLUMNS
    for name in ("accuracy_vs_compression.png", "overlap_vs_window.png", "overlap_bands.png",
                 "paired_difference.png"):
        assert (finished / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_csv(finished / "paired.csv")) > 0


def test_windows_end_at_their_epoch_and_kmp_comes_from_the_window(finished):
    seed_dir = finished / "seed_0"
    with np.load(seed_dir / "training.npz") as f:
        thetas = {e: f[f"theta_epoch{e}"] for e in (1, 2)}
        np.testing.assert_array_equal(f["theta_final"], thetas[2])
    config = load_config(finished.parent / "tiny.toml")
    for e in (1, 2):
        window = Trajectory.load(seed_dir / f"window_epoch{e}.npz")
        assert list(window.steps) == list(range(e * SPE - WINDOW_STEPS, e * SPE + 1))
        np.testing.assert_array_equal(window.last, thetas[e])
    window = Trajectory.load(seed_dir / "window_epoch1.npz")
    scores = method_scores("kmp", window, kmd=fit_window_kmd(config, window))
    mask = method_mask("kmp", scores, 0.75, window)
    run = next((finished / "runs").glob("*_kmp_E1_Z4_R0"))
    assert [int(t["nnz"]) for t in read_csv(run / "masks_summary.csv")] == \
        [int(mask[window.layout.slice_of(n)].sum()) for n in window.layout.names]
    # the last window's GMP is the converged network's mask
    for run in (finished / "runs").glob("*_magnitude_E2_*"):
        assert json.loads((run / "metrics.json").read_text())["overlap_with_converged"] == 1.0


@pytest.mark.filterwarnings("ignore::kooplearn_prune.koopman.FixedPointWarning")
def test_every_run_records_its_overlap_with_the_same_windows_magnitude_mask(finished):
    config = load_config(finished.parent / "tiny.toml")
    for e in (1, 2):
        window = Trajectory.load(finished / "seed_0" / f"window_epoch{e}.npz")
        kmp = method_scores("kmp", window, kmd=fit_window_kmd(config, window))
        gmp = method_scores("magnitude", window)
        for z in (2, 4):
            sparsity = 1 - 1 / z
            want = overlap(method_mask("kmp", kmp, sparsity, window),
                           method_mask("magnitude", gmp, sparsity, window), window.layout)
            kmp_run, gmp_run = (json.loads(next((finished / "runs").glob(
                f"*_{m}_E{e}_Z{z}_R0")).joinpath("metrics.json").read_text())
                for m in ("kmp", "magnitude"))
            assert kmp_run["overlap_with_window_magnitude"] == pytest.approx(want)
            assert 0.0 <= kmp_run["jaccard_with_window_magnitude"] <= want
            assert gmp_run["overlap_with_window_magnitude"] == 1.0
            assert gmp_run["jaccard_with_window_magnitude"] == 1.0


def test_weight_uses_count_mnistnet_flops_by_hand():
    from kooplearn_prune.adapters.torch.models import MnistNet

    model = MnistNet()
    uses = weight_uses(model, torch.zeros(3, 1, 28, 28))
    # conv1: 28 -> 24 (24x24 outputs), pool 12, conv2: 12 -> 8 (8x8 outputs), pool 4: fc1 800
    assert uses == {"conv1.weight": 24 * 24, "conv2.weight": 8 * 8, "fc1.weight": 1,
                    "fc2.weight": 1}
    macs = sum(dict(model.named_parameters())[n].numel() * k for n, k in uses.items())
    assert macs == 20 * 1 * 25 * 576 + 50 * 20 * 25 * 64 + 800 * 500 + 500 * 10  # 2,293,000
    assert model.training  # the mode is restored
    grouped = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
    n = weight_uses(torch.nn.Sequential(grouped), torch.zeros(2, 4, 9, 9))["0.weight"]
    assert grouped.weight.numel() * n == 8 * (4 // 2) * 9 * (5 * 5)  # 5 x 5 outputs


def test_resuming_redoes_nothing_and_an_interrupt_keeps_finished_runs(tmp_path, capsys,
                                                                      monkeypatch):
    config, out = write_config(tmp_path, TORCH_TINY), tmp_path / "out"
    real, calls = torch_study.evaluate_torch_mask, []

    def interrupt_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_study, "evaluate_torch_mask", interrupt_fourth)
    assert run_cli(config, out) == 130
    done = {p: p.stat().st_mtime_ns for p in metrics_files(out)}
    assert len(done) == 3
    monkeypatch.setattr(torch_study, "evaluate_torch_mask", real)
    trained = []
    monkeypatch.setattr(torch_study, "train_torch_seed", lambda *a, **k: trained.append(a))
    assert run_cli(config, out) == 0
    assert trained == [] and len(metrics_files(out)) == N_RUNS
    assert {p: p.stat().st_mtime_ns for p in done} == done
    capsys.readouterr()
    assert run_cli(config, out) == 0
    assert f"{N_RUNS} already complete" in capsys.readouterr().out
    # a damaged saved model state retrains the seed instead of failing
    (out / "seed_0" / "model_states.pt").write_bytes(b"not a torch file")
    other = write_config(tmp_path, TORCH_TINY.replace("[2, 4]", "[2, 4, 8]"), "more.toml")
    monkeypatch.undo()
    assert run_cli(other, out) == 0
    assert "model_states.pt is missing or damaged" in capsys.readouterr().err
    assert len(metrics_files(out)) == N_RUNS + 4


def test_kmp_on_a_frozen_window_is_magnitude_and_every_method_runs(tmp_path):
    """lr = 1e-12 leaves float32 weights unchanged: every snapshot of the window is equal, the
    KMD's fixed point is θ itself, and KMP prunes exactly what GMP prunes (docs/theory.md §9)."""
    methods = ", ".join(f'"{m}"' for m in METHODS)
    text = (TORCH_TINY.replace("lr = 0.05", "lr = 1e-12")
            .replace('methods = ["kmp", "magnitude"]', f"methods = [{methods}]")
            .replace("window_epochs = [1, 2]", "window_epochs = [2]")
            .replace("compressions = [2, 4]", "compressions = [4]")
            .replace("finetune_epochs = 1", "finetune_epochs = 0"))
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, text), out) == 0
    window = Trajectory.load(out / "seed_0" / "window_epoch2.npz")
    assert np.array_equal(window.snapshots[0], window.snapshots[-1])  # frozen
    rows = {r["method"]: r for r in read_csv(out / "runs.csv")}
    assert set(rows) == set(METHODS)
    masks = {m: read_csv(next((out / "runs").glob(f"*_{m}_E2_Z4_R0")) / "masks_summary.csv")
             for m in ("kmp", "magnitude", "oracle")}
    assert masks["kmp"] == masks["magnitude"] == masks["oracle"]
    assert float(rows["kmp"]["overlap_with_converged"]) == 1.0


# ---------------------------------------------------------------------- config keys
def test_torch_keys_and_defaults():
    config = parse_config({"experiment": {"device": "cpu"},
                           "model": {"framework": "torch", "name": "resnet20",
                                     "kwargs": {"num_classes": 10}},
                           "data": {"dataset": "cifar10", "n_train": 100},
                           "training": {"optimizer": "sgd", "weight_decay": 1e-4,
                                        "schedule": "step", "milestones": [6, 3],
                                        "gamma": 0.5},
                           "koopman": {"rank": "optimal", "window_epochs": [1]},
                           "pruning": {"conventions": "shrinkbench"}}, source="x.toml")
    assert (config.framework, config.model_name, config.model_kwargs) == \
        ("torch", "resnet20", {"num_classes": 10})
    assert (config.milestones, config.gamma, config.kmd_rank) == ((3, 6), 0.5, "optimal")
    assert config.to_dict()["pruning"]["conventions"] == "shrinkbench"
    # keys at their defaults stay out of the fingerprint: older results keep their hash
    plain = result_fingerprint(parse_config({}, source="x.toml"))
    assert plain["model"] == {"hidden": [128, 64], "activation": "relu"}
    assert plain["training"] == {"epochs": 10, "batch_size": 32, "lr": 0.05, "momentum": 0.9}
    assert "rank" not in plain["koopman"] and "device" not in plain["experiment"]
    assert result_fingerprint(config)["koopman"]["rank"] == "optimal"
    assert parse_config({}, source="x.toml").kmd_rank == "full"     # KMD()'s default


BAD_KEYS = [
    ({"model": {"name": "resnet20"}}, "[model] name applies to [model] framework = 'torch'"),
    ({"model": {"framework": "torch"}}, "[model] name must name the torch model"),
    ({"model": {"framework": "torch", "name": "x", "hidden": [3]}}, "[model] hidden describes"),
    ({"model": {"framework": "jax"}}, "[model] framework = 'jax' is unknown"),
    ({"training": {"schedule": "cosine"}}, "[training] schedule = 'cosine' applies to"),
    ({"model": {"framework": "torch", "name": "x"}, "training": {"schedule": "step"}},
     "needs milestones"),
    ({"training": {"optimizer": "adam", "momentum": 0.9}}, "[training] momentum applies to"),
    ({"koopman": {"rank": 0}}, "[koopman] rank = 0 is unknown"),
    ({"koopman": {"rank": "all"}}, "[koopman] rank = 'all' is unknown"),
    ({"experiment": {"device": "cuda"}}, "[experiment] device = 'cuda' applies to"),
    ({"data": {"resize": 28}}, "[data] resize applies to"),
    ({"pruning": {"conventions": "shrinkbench"}}, "[pruning] conventions = 'shrinkbench'"),
    ({"pruning": {"conventions": "keras"}}, "[pruning] conventions = 'keras' is unknown"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_KEYS)
def test_bad_torch_keys_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw, source="x.toml")
    assert message in str(err.value)


def test_the_native_runner_passes_the_kmd_rank(tmp_path):
    text = TINY.replace("every = 1", "every = 1\nrank = 2").replace("[2, 4]", "[2]")
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, text), out) == 0
    for run in (out / "runs").glob("*_kmp_*"):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["kmd"]["rank"] == 2
        assert 0.0 < metrics["overlap_with_window_magnitude"] <= 1.0
    for run in (out / "runs").glob("*_magnitude_*"):
        assert json.loads((run / "metrics.json").read_text())[
            "overlap_with_window_magnitude"] == 1.0


# ---------------------------------------------------------------------- bad input, before output
BAD_INPUT = [
    ('name = "test_experiment_torch:tiny_cnn"', 'name = "no_such_module_here:f"',
     "[model] name = 'no_such_module_here:f'"),
    ('name = "test_experiment_torch:tiny_cnn"', 'name = "test_experiment_torch:not_a_module"',
     "not a"),
    ('name = "test_experiment_torch:tiny_cnn"', 'name = "test_experiment_torch:no_prunable"',
     "has no prunable tensor under [pruning] conventions = 'library'"),
    ('n_test = 100', 'n_test = 100\nresize = 12', "[data] dataset 'digits' gives batches of "
                                                    "shape (32, 1, 12, 12)"),
    (f'name = "{FACTORY}"', f'name = "{FACTORY}"\nkwargs = {{ in_channels = 3 }}',
     "cannot take"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_INPUT)
def test_bad_model_or_data_is_refused_before_anything_is_written(tmp_path, capsys, old, new,
                                                                 message):
    assert old in TORCH_TINY
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, TORCH_TINY.replace(old, new)), out) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("kooplearn-prune experiment: error:")
    assert not out.exists()


def test_cuda_without_a_device_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    text = TORCH_TINY.replace('seeds = [0]', 'seeds = [0]\ndevice = "cuda"')
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, text), out) == 2
    err = capsys.readouterr().err
    assert "[experiment] device = 'cuda'" in err and "set device = 'cpu'" in err
    assert not out.exists()


# ---------------------------------------------------------------------- the bundled torch configs
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnistnet_cpu", "resnet20_cpu"])
def test_cpu_twins_run_reduced(tmp_path, name):
    """Each CPU twin, cut to two epochs of two steps, one seed and two methods, runs end to end
    through the same code paths (resize, channels, step schedule, shrinkbench conventions)."""
    from dataclasses import replace

    from kooplearn_prune.app.experiment import run_experiment

    twin = load_config(name, out=tmp_path / "out")
    config = replace(twin, seeds=(0,), data_options={**twin.data_options, "n_train": 64,
                                                     "n_test": 40},
                     epochs=2, milestones=(1,) if twin.milestones else (),
                     window_epochs=(1, 2), window_steps=2, methods=("kmp", "magnitude"),
                     compressions=(4,))
    result = run_experiment(config, progress=False)
    assert result.runs_total == result.runs_done == 4
    assert {r["method"] for r in result.rows} == {"kmp", "magnitude"}
    for row in result.rows:
        assert 0.0 <= row["post_acc1"] <= 1.0 and 0.0 < row["overlap_with_converged"] <= 1.0
    # the classifier is outside ShrinkBench's prunable set: its weights are all kept
    run = tmp_path / "out" / result.rows[0]["path"]
    classifier = [t for t in read_csv(run / "masks_summary.csv")
                  if t["module"] in ("fc2", "fc", "linear")]
    assert classifier and all(t["nnz"] == t["size"] for t in classifier)


def test_paper_configs_load():
    mnist, resnet = load_config("paper_mnistnet"), load_config("paper_resnet20")
    assert (mnist.model_name, mnist.dataset, mnist.device) == ("mnistnet", "mnist", "cuda")
    assert (resnet.model_name, resnet.dataset, resnet.schedule) == ("resnet20", "cifar10", "step")
    assert mnist.conventions == resnet.conventions == "shrinkbench"
