"""``kooplearn-prune experiment``: the run layout ShrinkBench reads, the numbers in it, resuming,
and a clear exit code 2 for every kind of bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kooplearn_prune.app.experiment as experiment
from kooplearn_prune.app.cli import main
from kooplearn_prune.app.experiment_config import (
    ConfigError,
    ExperimentConfig,
    bundled_configs,
    load_config,
    parse_config,
)
from kooplearn_prune.app.experiment_runs import SUMMARY_COLUMNS
from kooplearn_prune.koopman import KMD
from kooplearn_prune.methods import method_mask, method_scores
from kooplearn_prune.trajectory import Trajectory

N_TRAIN, BATCH = 240, 32
SPE = -(-N_TRAIN // BATCH)  # 8 optimizer steps per epoch
WINDOW_STEPS = 6

TINY = f"""
[experiment]
name = "tiny"
seeds = [0]

[data]
dataset = "digits"
n_train = {N_TRAIN}
n_test = 120

[model]
hidden = [16]

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
N_RUNS = 1 * 2 * 2 * 2  # seeds x windows x methods x compressions


def write_config(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(config: Path, out: Path) -> int:
    return main(["experiment", str(config), "--out", str(out), "--no-progress"])


def metrics_files(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*/metrics.json"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete tiny experiment, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("exp")
    out = tmp / "out"
    assert run_cli(write_config(tmp), out) == 0
    return out


# ------------------------------------------------------------------------------ layout
def test_every_run_has_the_shrinkbench_files(finished):
    runs = sorted(p for p in (finished / "runs").iterdir())
    assert len(runs) == N_RUNS
    for run in runs:
        assert {p.name for p in run.iterdir()} == {"params.json", "metrics.json", "logs.csv",
                                                   "masks_summary.csv"}
        params = json.loads((run / "params.json").read_text())
        # ShrinkBench's analysis eval()s these strings; they must round-trip
        assert eval(params["dataset"]) == "digits"  # noqa: S307 - exactly what ShrinkBench does
        assert eval(params["model"]) == "MLP-64-16-10"
        assert eval(params["strategy"]) in ("kmp", "magnitude")
        assert eval(params["compression"]) in (2, 4)
        assert eval(params["seed"]) == 0
        assert params["dl_kwargs"]["batch_size"] == BATCH
        assert params["train_kwargs"] == {"optim": "SGD", "epochs": 1, "lr": 0.01,
                                          "momentum": 0.9}
        metrics = json.loads((run / "metrics.json").read_text())
        for key in ("size", "size_nz", "compression_ratio", "flops", "flops_nz",
                    "theoretical_speedup", "loss", "val_acc1"):
            assert key in metrics and key in metrics["post"]
        assert run.name == (f"digits_MLP-64-16-10_{eval(params['strategy'])}_E"
                            f"{metrics['window_epoch']}_Z{metrics['compression']}_R0")


def test_sizes_flops_and_compressions_are_consistent(finished):
    size = 64 * 16 + 16 + 16 * 10 + 10
    flops = 64 * 16 + 16 * 10  # MACs per sample of the two Linear layers
    for run in (finished / "runs").iterdir():
        m = json.loads((run / "metrics.json").read_text())
        tensors = read_csv(run / "masks_summary.csv")
        assert [t["module"] + "." + t["param"] for t in tensors] == \
            ["0.weight", "0.bias", "2.weight", "2.bias"]
        nnz = sum(int(t["nnz"]) for t in tensors)
        kept_weights = sum(int(t["nnz"]) for t in tensors if t["param"] == "weight")
        assert (m["size"], m["flops"]) == (size, flops)
        assert sum(int(t["size"]) for t in tensors) == size
        assert m["size_nz"] == nnz and m["flops_nz"] == kept_weights
        assert m["compression_ratio"] == pytest.approx(size / nnz)
        # every weight is prunable, so the theoretical speedup is the prunable compression
        assert m["theoretical_speedup"] == pytest.approx(m["compression"], rel=1e-2)
        assert m["sparsity"] == pytest.approx(1 - 1 / m["compression"])
        assert all(t["comp"] == "1.0" for t in tensors if t["param"] == "bias")
        logs = read_csv(run / "logs.csv")
        assert [int(r["epoch"]) for r in logs] == [1]
        assert float(logs[-1]["val_acc1"]) == pytest.approx(m["post"]["val_acc1"])


def test_gmp_of_the_last_window_is_the_converged_mask(finished):
    for run in (finished / "runs").glob("*_magnitude_E2_*"):
        m = json.loads((run / "metrics.json").read_text())
        assert m["overlap_with_converged"] == 1.0 and m["jaccard_with_converged"] == 1.0
    early = [json.loads((r / "metrics.json").read_text())["overlap_with_converged"]
             for r in (finished / "runs").glob("*_E1_*")]
    assert all(0.0 < v <= 1.0 for v in early)


def test_windows_end_at_their_epoch_and_states_match(finished):
    seed_dir = finished / "seed_0"
    with np.load(seed_dir / "training.npz") as f:
        thetas = {e: f[f"theta_epoch{e}"] for e in (1, 2)}
        final = f["theta_final"]
    for e in (1, 2):
        window = Trajectory.load(seed_dir / f"window_epoch{e}.npz")
        assert list(window.steps) == list(range(e * SPE - WINDOW_STEPS, e * SPE + 1))
        np.testing.assert_array_equal(window.last, thetas[e])
    np.testing.assert_array_equal(final, thetas[2])
    assert not np.array_equal(thetas[1], thetas[2])


@pytest.mark.filterwarnings("ignore::kooplearn_prune.koopman.FixedPointWarning")
def test_kmp_mask_comes_from_the_window_kmd(finished):
    window = Trajectory.load(finished / "seed_0" / "window_epoch1.npz")
    scores = method_scores("kmp", window, kmd=KMD().fit(window))
    mask = method_mask("kmp", scores, 0.75, window)
    per_tensor = [int(mask[window.layout.slice_of(n)].sum()) for n in window.layout.names]
    run = next((finished / "runs").glob("*_kmp_E1_Z4_R0"))
    assert [int(t["nnz"]) for t in read_csv(run / "masks_summary.csv")] == per_tensor


def test_summary_runs_csv_and_figures(finished, capsys):
    summary = read_csv(finished / "summary.csv")
    assert len(summary) == N_RUNS
    assert tuple(summary[0]) == SUMMARY_COLUMNS
    assert {(r["method"], r["compression"], r["window_epoch"]) for r in summary} == \
        {(s, c, e) for s in ("kmp", "magnitude") for c in ("2", "4") for e in ("1", "2")}
    assert len(read_csv(finished / "runs.csv")) == N_RUNS
    for name in ("accuracy_vs_compression.png", "overlap_vs_window.png"):
        assert (finished / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (finished / "summary_table.txt").read_text()
    assert table.count("±") == 3 * 2 * 2 * 2  # three statistics per group


def test_no_finetune_and_a_fixed_overlap_sparsity(tmp_path):
    text = (TINY.replace("finetune_epochs = 1", "finetune_epochs = 0\noverlap_sparsity = 0.5")
            .replace('methods = ["kmp", "magnitude"]', 'methods = ["kmp"]')
            .replace("window_epochs = [1, 2]", "window_epochs = [1]"))
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, text), out) == 0
    runs = sorted((out / "runs").iterdir())
    assert [r.name[-5:] for r in runs] == ["Z2_R0", "Z4_R0"]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    for r, m in zip(runs, metrics):
        assert read_csv(r / "logs.csv") == []  # header only: nothing was fine-tuned
        assert m["post"]["val_acc1"] == m["val_acc1"] and m["post"]["loss"] == m["loss"]
        assert m["overlap_sparsity"] == 0.5
    # both overlaps are measured at sparsity 0.5, whatever the run's own compression
    assert metrics[0]["overlap_with_converged"] == metrics[1]["overlap_with_converged"]
    assert metrics[0]["size_nz"] > metrics[1]["size_nz"]


# ------------------------------------------------------------------------------ resuming
def test_second_invocation_redoes_nothing(tmp_path, capsys, monkeypatch):
    config, out = write_config(tmp_path), tmp_path / "out"
    assert run_cli(config, out) == 0
    before = {p: p.stat().st_mtime_ns for p in [*metrics_files(out),
                                                 out / "seed_0" / "training.npz"]}
    trained = []
    monkeypatch.setattr(experiment, "train_seed", lambda *a, **k: trained.append(a))
    capsys.readouterr()
    assert run_cli(config, out) == 0
    assert f"{N_RUNS} already complete" in capsys.readouterr().out
    assert trained == []
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(read_csv(out / "runs.csv")) == N_RUNS


def test_interrupted_runs_lose_nothing_and_resume(tmp_path, capsys, monkeypatch):
    config, out = write_config(tmp_path), tmp_path / "out"
    real, calls = experiment.evaluate_mask, []

    def interrupt_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate_mask", interrupt_fourth)
    assert run_cli(config, out) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "3 complete runs" in err
    done = {p: p.stat().st_mtime_ns for p in metrics_files(out)}
    assert len(done) == 3 and len(read_csv(out / "runs.csv")) == 3
    training = (out / "seed_0" / "training.npz").stat().st_mtime_ns

    monkeypatch.setattr(experiment, "evaluate_mask", real)
    trained = []
    monkeypatch.setattr(experiment, "train_seed", lambda *a, **k: trained.append(a))
    assert run_cli(config, out) == 0
    assert trained == []  # the finished seed was not retrained
    assert (out / "seed_0" / "training.npz").stat().st_mtime_ns == training
    assert len(metrics_files(out)) == N_RUNS
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished runs untouched
    rows = read_csv(out / "runs.csv")
    assert len(rows) == N_RUNS and len({r["path"] for r in rows}) == N_RUNS
    assert len(read_csv(out / "summary.csv")) == N_RUNS


def test_interrupt_during_training_keeps_finished_seeds(tmp_path, monkeypatch):
    config = write_config(tmp_path, TINY.replace("seeds = [0]", "seeds = [0, 1]"))
    out = tmp_path / "out"
    real = experiment.train_seed
    trained = []

    def train(cfg, data, seed, *args, **kwargs):
        trained.append(seed)
        if seed == 1 and trained.count(1) == 1:
            raise KeyboardInterrupt
        return real(cfg, data, seed, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_seed", train)
    assert run_cli(config, out) == 130
    assert len(metrics_files(out)) == N_RUNS and not (out / "seed_1").exists()
    assert run_cli(config, out) == 0
    assert trained == [0, 1, 1]
    assert len(metrics_files(out)) == 2 * N_RUNS


def test_resuming_with_other_training_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path), out) == 0
    other = write_config(tmp_path, TINY.replace("lr = 0.05", "lr = 0.1"), "other.toml")
    capsys.readouterr()
    assert run_cli(other, out) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "[training] lr" in err
    # more seeds, methods or compressions are new independent runs: allowed
    more = write_config(tmp_path, TINY.replace("[2, 4]", "[2, 4, 8]"), "more.toml")
    assert run_cli(more, out) == 0
    assert len(metrics_files(out)) == N_RUNS + 4


def test_fixing_a_bad_config_in_the_same_directory_is_not_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, TINY.replace("every = 1", "every = 1\nmethod = 'x'"),
                                "bad.toml"), out) == 2
    # a valid config whose windows do not fit leaves no results either
    assert run_cli(write_config(tmp_path, TINY.replace(f"window_steps = {WINDOW_STEPS}",
                                                       "window_steps = 20"), "long.toml"),
                   out) == 2
    assert run_cli(write_config(tmp_path), out) == 0
    assert len(metrics_files(out)) == N_RUNS


def test_unreachable_dataset_is_a_one_line_error(tmp_path, capsys):
    text = TINY.replace('dataset = "digits"', f'dataset = "mnist"\ncache_dir = "{tmp_path}"\n'
                                              f'base_url = "http://127.0.0.1:9/"')
    assert run_cli(write_config(tmp_path, text), tmp_path / "out") == 2
    last = capsys.readouterr().err.splitlines()[-1]  # pooch logs the attempt before it
    assert last.startswith("kooplearn-prune experiment: error:") and "could not download" in last


# ------------------------------------------------------------------------------ bad input
BAD = [
    ('lr = 0.05', 'lr = "fast"', "[training] lr must be a number"),
    ('epochs = 2', 'epochs = 2.5', "[training] epochs must be an integer"),
    ('epochs = 2', 'epochs = true', "[training] epochs must be an integer"),
    ('epochs = 2', 'epoch = 2', "unknown key(s) epoch in [training]"),
    ('[model]', '[modle]', "unknown section(s) [modle]"),
    ('methods = ["kmp", "magnitude"]', 'methods = ["kmp", "magnitde"]',
     "[pruning] methods = 'magnitde' is unknown"),
    ('dataset = "digits"', 'dataset = "cifar"', "[data] dataset = 'cifar' is unknown"),
    ('n_test = 120', 'n_tset = 120', "unknown key(s) n_tset in [data]"),
    ('compressions = [2, 4]', 'compressions = [0.5]', "[pruning] compressions must lie in"),
    ('compressions = [2, 4]', 'compressions = 4', "[pruning] compressions must be a list"),
    ('seeds = [0]', 'seeds = [0, 0]', "[experiment] seeds lists a value twice"),
    ('hidden = [16]', 'hidden = [0]', "[model] hidden must be >= 1"),
    ('window_epochs = [1, 2]', 'window_epochs = [1, 3]', "go beyond [training] epochs"),
    ('every = 1', 'every = 4', "must be a multiple of every"),
    (f'window_steps = {WINDOW_STEPS}', 'window_steps = 9',
     "longer than the 8 optimizer steps up to the end of epoch 1"),
    ('n_test = 120', 'n_test = -3', "[data]"),
    ('seeds = [0]', 'seeds = [0]\nbackend = "tpu"', "[experiment] backend = 'tpu' is unknown"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD)
def test_bad_config_exits_2_with_a_one_line_message(tmp_path, capsys, old, new, message):
    assert old in TINY
    config = write_config(tmp_path, TINY.replace(old, new))
    assert run_cli(config, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("kooplearn-prune experiment: error:")
    assert not metrics_files(tmp_path / "out")


def test_missing_and_malformed_config_files(tmp_path, capsys):
    assert run_cli(tmp_path / "nope.toml", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err
    broken = write_config(tmp_path, "[training]\nepochs = = 3\n")
    assert run_cli(broken, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "is not valid TOML" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_output_directory_that_is_a_file_or_not_writable(tmp_path, capsys):
    config = write_config(tmp_path)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert run_cli(config, a_file) == 2
    assert "is a file" in capsys.readouterr().err
    assert run_cli(config, a_file / "below") == 2  # a directory cannot be made under a file
    assert "not writable" in capsys.readouterr().err
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert run_cli(config, locked) == 2
        assert "not writable" in capsys.readouterr().err


@settings(max_examples=40, deadline=None)
@given(section=st.sampled_from(["experiment", "data", "model", "training", "koopman",
                                "pruning"]),
       key=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_any_unknown_key_is_rejected_by_name(section, key):
    config = parse_config({}, source="x.toml")
    if key in config.to_dict()[section] or key in ("dataset", "seed", "n_train", "n_test",
                                                   "scale", "dtype", "test_size"):
        return
    with pytest.raises(ConfigError, match=f"unknown key\\(s\\) {key} in \\[{section}\\]"):
        parse_config({section: {key: 1}}, source="x.toml")


def test_defaults_and_bundled_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config({}, source="my_exp.toml")
    assert config.name == "my_exp" and config.out == Path("results/my_exp")
    assert config.seeds == (0, 1, 2) and config.window_epochs == (1, 2, 4, 8)
    assert config.sparsities == pytest.approx([0.5, 0.75, 0.875, 0.9375, 0.96875])
    assert set(bundled_configs()) >= {"quick", "paper_mnist"}
    quick = load_config("quick")  # by name, from the package
    assert quick.dataset == "digits" and len(quick.seeds) == 2 and quick.window_epochs[-1] == 10
    paper = load_config("paper_mnist.toml", out=tmp_path / "o")
    assert (paper.dataset, paper.hidden, paper.backend) == ("mnist", (300, 100), "cupy")
    assert paper.out == tmp_path / "o" and len(paper.seeds) == 3
    assert isinstance(paper, ExperimentConfig)


@pytest.mark.gpu
def test_cupy_backend_gives_the_numpy_masks(tmp_path):
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no usable CUDA device")
    cpu = write_config(tmp_path, TINY, "cpu.toml")
    gpu = write_config(tmp_path, TINY.replace("seeds = [0]", 'seeds = [0]\nbackend = "cupy"'),
                       "gpu.toml")
    assert run_cli(cpu, tmp_path / "cpu") == 0 and run_cli(gpu, tmp_path / "gpu") == 0
    for run in (tmp_path / "cpu" / "runs").glob("*_magnitude_*"):
        twin = tmp_path / "gpu" / "runs" / run.name
        a = read_csv(run / "masks_summary.csv")
        b = read_csv(twin / "masks_summary.csv")
        # the same training up to float rounding: per-tensor counts agree to within a few
        assert all(abs(int(x["nnz"]) - int(y["nnz"])) <= 3 for x, y in zip(a, b))
        assert json.loads((twin / "metrics.json").read_text())["backend"] == "cupy"


def test_controls_and_the_oracle_run_in_the_experiment(tmp_path):
    """Every role of the registry runs through the runner; the oracle scores the converged θ."""
    text = TINY.replace('methods = ["kmp", "magnitude"]',
                        'methods = ["trend_two_point", "window_mean", "oracle"]')
    assert text != TINY
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, text), out) == 0
    rows = read_csv(out / "runs.csv")
    assert {r["method"] for r in rows} == {"trend_two_point", "window_mean", "oracle"}
    for row in rows:  # the oracle's mask is the converged network's: full overlap
        if row["method"] == "oracle":
            assert float(row["overlap_with_converged"]) == 1.0
