"""The command line: ``kooplearn-prune train`` and ``kooplearn-prune demo``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kooplearn_prune.app.cli import main


def test_train_prints_every_epoch_and_saves(tmp_path, capsys):
    weights = tmp_path / "mlp.npz"
    assert main(["train", "--epochs", "3", "--no-progress", "--save", str(weights)]) == 0
    out = capsys.readouterr().out
    assert out.count("epoch ") == 3 and "test acc" in out and "final test accuracy" in out
    with np.load(weights) as saved:
        assert set(saved.files) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_bad_arguments_give_clear_errors(capsys):
    assert main(["train", "--dataset", "cifar", "--epochs", "1", "--no-progress"]) == 2
    assert "cifar" in capsys.readouterr().err
    assert main(["train", "--backend", "tpu", "--epochs", "1", "--no-progress"]) == 2
    assert "backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--batch-size", "0"])


def test_demo_writes_results_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Step 3." in printed and str(out.resolve()) in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["epochs"] == 3
    methods = {row["method"] for row in results["methods"]}
    # every registered method but the oracle (the last window ends at the converged network)
    assert methods == {"kmp", "kgp", "magnitude", "magnitude_layerwise", "gradient",
                       "trend_two_point", "trend_lstsq", "window_mean", "random"}
    assert "oracle" in printed and "is not in the table" in printed
    assert {row["compression"] for row in results["methods"]} == {2, 4, 8, 16, 32}
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 * 5 and {"pre_accuracy", "post_accuracy"} <= set(rows[0])
    for row in rows:  # compression is over the prunable set: exactly 1/(1 - sparsity) kept
        assert float(row["sparsity"]) == pytest.approx(1 - 1 / float(row["compression"]))
    for name in ("spectrum.png", "accuracy_vs_compression.png", "overlap_vs_window.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_demo_numbers(results, epochs=3)


def _check_demo_numbers(results: dict, epochs: int) -> None:
    """Values, not just keys: the trained network is good, pruning ranks as expected."""
    assert results["unpruned_accuracy"] >= 0.9  # digits MLP, a few epochs
    rows = {(r["method"], r["compression"]): r for r in results["methods"]}
    # magnitude pruning at 2x barely hurts after the fine-tune; random at 8x is far worse
    assert rows["magnitude", 2]["post_accuracy"] >= 0.9
    assert rows["random", 8]["pre_accuracy"] < rows["magnitude", 8]["pre_accuracy"] - 0.2
    for row in rows.values():  # both compressions are reported, over the two sets
        assert row["compression_prunable"] == pytest.approx(row["compression"], rel=1e-3)
        assert row["compression_all"] <= row["compression_prunable"]
    windows = results["overlap_by_window"]
    assert windows["epoch"] == list(range(1, epochs + 1))
    assert windows["magnitude"][-1] == 1.0  # the last window ends at the converged network
    for control in ("trend_two_point", "trend_lstsq", "window_mean"):  # shown next to KMP
        assert len(windows[control]) == epochs and 0.0 <= min(windows[control]) <= 1.0
    assert 0.0 <= min(windows["kmp"]) and max(windows["kmp"]) <= 1.0
    # on the last epoch's window KMP and magnitude pruning keep nearly the same weights
    assert results["equivalence"]["kmp_vs_magnitude"]["0.5"] >= 0.9


def test_demo_refuses_a_file_as_output_directory(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert main(["demo", "--out", str(target), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_demo_refuses_a_directory_it_cannot_create(tmp_path, capsys):
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub"), "--no-progress"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    script = shutil.which("kooplearn-prune", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert script is not None, "the kooplearn-prune console script is not installed"
    as_module = [sys.executable, "-m", "kooplearn_prune.app.cli", "--help"]
    for command in ([script, "--help"], as_module):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        assert "demo" in result.stdout and "experiment" in result.stdout


def test_demo_runs_end_to_end_on_array_api_strict(tmp_path):
    """The whole pipeline uses only the array API: the strict namespace runs it unchanged."""
    from kooplearn_prune.backend import get_backend, use_backend

    with use_backend("numpy"):  # restores the backend that the demo switches
        assert main(["demo", "--backend", "array_api_strict", "--epochs", "2",
                     "--out", str(tmp_path), "--no-progress"]) == 0
        assert get_backend() == "array_api_strict"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["backend"] == "array_api_strict"
    assert len(results["methods"]) == 9 * 5
    _check_demo_numbers(results, epochs=2)


def test_help_shows_the_defaults(capsys):
    for command, defaults in ((["demo"], ["(default: 20)", "(default: demo_out)",
                                          "(default: digits)"]),
                              (["train"], ["(default: 10)", "(default: 0.05)", "(default: 32)"])):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        printed = capsys.readouterr().out
        assert all(text in printed for text in defaults), (command, printed)
        assert "(default: False)" not in printed  # on/off flags say what they do instead


def test_experiment_help_and_list_name_every_bundled_config(capsys):
    from kooplearn_prune.app.experiment_config import bundled_configs

    names = list(bundled_configs())
    assert {"quick", "paper_mnist"} <= set(names)
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    helped = capsys.readouterr().out
    assert main(["experiment", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in names:
        assert f"  {name} " in helped and f"  {name} " in listed
    assert "quick                    MLP, hidden 128-64 on digits, 2 seed(s)" in listed
    with pytest.raises(SystemExit):  # no config and no --list: a usage error naming the fix
        main(["experiment"])
    assert "--list" in capsys.readouterr().err


def test_readme_names_the_bundled_configs_and_the_list_option():
    from kooplearn_prune.app.experiment_config import bundled_configs

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "kooplearn-prune experiment --list" in readme  # which prints every one of them
    assert "kooplearn_prune/app/configs/" in readme
    assert "quick.toml" in readme and "quick" in bundled_configs()


def test_progress_bars_only_on_a_terminal():
    from kooplearn_prune.app.cli import progress_wanted

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert progress_wanted(False, Stream(True))
    assert not progress_wanted(True, Stream(True))
    assert not progress_wanted(False, Stream(False))
    assert not progress_wanted(False, object())  # no isatty at all: a log, not a terminal


def test_logs_get_epoch_lines_and_no_progress_bar():
    """Output sent to files (stdout and stderr both redirected): no bar, one line per epoch."""
    result = subprocess.run([sys.executable, "-m", "kooplearn_prune.app.cli", "train",
                             "--epochs", "2", "--hidden", "16"],
                            capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "epoch/s" not in \
        result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()
            if line.startswith("epoch")] == [["epoch", "1"], ["epoch", "2"]]


def test_demo_table_and_spectrum_lines_say_what_their_numbers_are(tmp_path, capsys):
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.strip().startswith("method"))
    assert header.count("pruned / tuned") == 5 and "32x" in header
    assert "'pruned' right after pruning, 'tuned' after a 1-epoch masked fine-tune" in printed
    noise = json.loads((tmp_path / "results.json").read_text())["spectrum_noise"]
    if noise["n_complex"]:
        line = next(line for line in printed.splitlines() if "spectrum:" in line)
        assert f"{noise['amplitude_share']:.2%}" in line and f"{noise['median_move']:.3f}" in line
        assert noise["noise"] == (noise["amplitude_share"] < 0.05
                                  and noise["median_move"] > 100 * noise["star_move"])
        assert ("mini-batch noise" in line) == noise["noise"]
