"""``kooplearn-prune experiment`` as a small database of runs: nothing lost, nothing mixed.

Two processes on one output directory, results without ``config.json``, damaged artifacts
(truncated JSON or ``.npz``, files of another configuration), a path-like experiment name, and
``runs.csv`` derived from the run directories. Uses the bundled ``quick`` config, made tiny.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_experiment import run_cli

import kooplearn_prune.app.experiment as experiment
from kooplearn_prune.app.cli import main
from kooplearn_prune.app.experiment_config import bundled_configs, load_config
from kooplearn_prune.app.experiment_runs import read_run
from kooplearn_prune.app.experiment_store import LOCK_FILE, result_hash


def _tiny_quick() -> str:
    text = bundled_configs()["quick"].read_text()
    for old, new in [("seeds = [0, 1]", "seeds = [0]"),
                     ("seed = 0  ", "seed = 0\nn_train = 240\nn_test = 120\n# "),
                     ("hidden = [128, 64]", "hidden = [16]"),
                     ("epochs = 10", "epochs = 2"),
                     ("window_epochs = [1, 3, 10]", "window_epochs = [1, 2]"),
                     ("window_steps = 40", "window_steps = 6"),
                     ("compressions = [2, 4, 8, 16, 32]", "compressions = [2, 4]"),
                     ('methods = ["kmp", "magnitude", "trend_two_point"]',
                      'methods = ["kmp", "magnitude"]')]:
        assert old in text, old
        text = text.replace(old, new)
    return text


TINY = _tiny_quick()
N_RUNS = 1 * 2 * 2 * 2  # seeds x windows x methods x compressions
VICTIM = "digits_MLP-64-16-10_kmp_E1_Z4_R0"  # the run these tests damage

# the first process: pauses inside its PAUSE_AT-th run (lock held, config.json written, seed
# trained) until the file RELEASE exists, after creating the file STARTED
HOLDER = """
import pathlib, sys, time
import kooplearn_prune.app.experiment as experiment
from kooplearn_prune.app.cli import main
config, out, started, release, pause_at = sys.argv[1:6]
real, calls = experiment.evaluate_mask, []
def paused(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(pause_at):
        pathlib.Path(started).touch()
        deadline = time.monotonic() + 120
        while not pathlib.Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return real(*args, **kwargs)
experiment.evaluate_mask = paused
sys.exit(main(["experiment", config, "--out", out, "--no-progress"]))
"""


def write_config(folder: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def stamps(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}


def assert_complete_and_consistent(out: Path, config: Path) -> None:
    """Every run of the grid is complete under the config's hash; runs.csv has one row each."""
    key = result_hash(load_config(config, out=out))
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == N_RUNS
    assert all(read_run(run, key) is not None for run in runs)  # raises if damaged or foreign
    rows = read_csv(out / "runs.csv")
    assert sorted(r["path"] for r in rows) == [f"runs/{run.name}" for run in runs]
    assert len(read_csv(out / "summary.csv")) == N_RUNS


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete tiny experiment; tests work on copies of it."""
    tmp = tmp_path_factory.mktemp("faults")
    config = write_config(tmp)
    assert run_cli(config, tmp / "out") == 0
    return config, tmp / "out"


@pytest.fixture
def copy(finished, tmp_path):
    config, out = finished
    shutil.copytree(out, tmp_path / "out")
    return config, tmp_path / "out"


class Holder:
    """A real second process running the experiment, paused inside one of its runs."""

    def __init__(self, tmp: Path, config: Path, out: Path, pause_at: int = 1) -> None:
        script = tmp / "holder.py"
        script.write_text(HOLDER)
        self.started, self.release = tmp / "started", tmp / "release"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(config), str(out), str(self.started),
             str(self.release), str(pause_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 120
        while not self.started.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the holder process did not pause: {self.proc.communicate()}")
            time.sleep(0.02)

    def finish(self) -> tuple[int, str]:
        self.release.touch()
        _, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


# ------------------------------------------------------------------------- two processes
def test_a_second_process_with_the_same_config_is_refused_and_nothing_is_done_twice(tmp_path):
    config, out = write_config(tmp_path), tmp_path / "out"
    holder = Holder(tmp_path, config, out)
    try:
        second = subprocess.run([sys.executable, "-m", "kooplearn_prune.app.cli", "experiment",
                                 str(config), "--out", str(out), "--no-progress"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and "in use by another" in second.stderr
        assert f"pid {holder.proc.pid} on host {socket.gethostname()}" in second.stderr
        assert not (out / "runs").exists() or not any((out / "runs").glob("*/metrics.json"))
    finally:
        rc, err = holder.finish()
    assert rc == 0, err
    assert_complete_and_consistent(out, config)
    done = stamps(out)
    assert run_cli(config, out) == 0  # now the directory is free: everything is found complete
    assert stamps(out) == done
    assert_complete_and_consistent(out, config)


def test_a_second_process_with_another_config_never_mixes_its_runs_in(tmp_path, capsys):
    config, out = write_config(tmp_path), tmp_path / "out"
    other = write_config(tmp_path, TINY.replace("finetune_lr = 0.01", "finetune_lr = 0.5"),
                         "other.toml")
    holder = Holder(tmp_path, config, out)
    try:
        assert run_cli(other, out) == 2  # while the first one runs: busy
        assert "in use by another" in capsys.readouterr().err
    finally:
        rc, err = holder.finish()
    assert rc == 0, err
    assert run_cli(other, out) == 2  # afterwards: the directory holds the other configuration
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different configuration" in err
    assert "[pruning] finetune_lr: 0.01 there, 0.5 here" in err
    assert_complete_and_consistent(out, config)
    for run in (out / "runs").iterdir():
        assert json.loads((run / "params.json").read_text())["train_kwargs"]["lr"] == 0.01
    assert json.loads((out / "config.json").read_text())["config"]["pruning"]["finetune_lr"] \
        == 0.01


def test_a_killed_process_leaves_no_lock_and_its_finished_runs_are_kept(tmp_path):
    config, out = write_config(tmp_path), tmp_path / "out"
    holder = Holder(tmp_path, config, out, pause_at=3)  # two runs are complete by then
    holder.proc.kill()  # SIGKILL while holding the lock, inside a run
    holder.proc.wait(timeout=60)
    done = stamps(out)
    assert len(done) == 2 and (out / LOCK_FILE).exists()
    assert run_cli(config, out) == 0
    assert_complete_and_consistent(out, config)
    assert {p: s for p, s in stamps(out).items() if p in done} == done


# ------------------------------------------------------------------------- the directory
@pytest.mark.parametrize("state", ["missing", "truncated", "older version"])
def test_results_of_an_unknown_configuration_are_refused_never_adopted(copy, tmp_path, capsys,
                                                                      state):
    config, out = copy
    saved = out / "config.json"
    if state == "missing":
        saved.unlink()
    elif state == "truncated":
        saved.write_text(saved.read_text()[:40])
    else:  # config.json as the previous layout wrote it: no format, no result_hash
        old = json.loads(saved.read_text())
        saved.write_text(json.dumps({"config": old["config"], "fingerprint": old["fingerprint"]}))
    before, text = stamps(out), saved.read_text() if saved.exists() else None
    other = write_config(tmp_path, TINY.replace("lr = 0.05", "lr = 0.1"), "other.toml")
    for cfg in (other, config):  # neither another config nor the same one adopts them
        assert run_cli(cfg, out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err and "another --out" in err
        assert {"missing": "no config.json", "truncated": "cannot be read",
                "older version": "by an older version"}[state] in err
    assert stamps(out) == before
    assert (saved.read_text() if saved.exists() else None) == text


@pytest.mark.parametrize("name", ["..", ".", "", "  ", "a/b", "a\\b"])
def test_an_experiment_name_must_be_a_directory_name(tmp_path, capsys, monkeypatch, name):
    config = write_config(tmp_path, TINY.replace('name = "quick"', f"name = {json.dumps(name)}"))
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", str(config), "--no-progress"]) == 2  # default out: results/<name>
    assert "[experiment] name must be a directory name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


# ------------------------------------------------------------------------- damaged artifacts
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


RUN_DAMAGE = {
    "metrics truncated": ("metrics.json", _truncate),
    "metrics without post": ("metrics.json", lambda p: _edit_json(p, lambda m: m.pop("post"))),
    "metrics of another config": ("metrics.json", lambda p: _edit_json(
        p, lambda m: m.update(result_hash="0123456789abcdef"))),
    "params truncated": ("params.json", _truncate),
    "params of another run": ("params.json", lambda p: shutil.copy(
        p.parent.parent / VICTIM.replace("Z4", "Z2") / "params.json", p)),
}


@pytest.mark.parametrize("damage", list(RUN_DAMAGE))
def test_a_damaged_run_is_named_and_redone_identically(copy, capsys, monkeypatch, damage):
    config, out = copy
    victim = out / "runs" / VICTIM
    before = json.loads((victim / "metrics.json").read_text())
    masks = (victim / "masks_summary.csv").read_text()
    others = {p: s for p, s in stamps(out).items() if p.parent != victim}
    file, spoil = RUN_DAMAGE[damage]
    spoil(victim / file)
    real, trained = experiment.train_seed, []
    monkeypatch.setattr(experiment, "train_seed",
                        lambda *a, **k: trained.append(1) or real(*a, **k))
    capsys.readouterr()
    assert run_cli(config, out) == 0
    err = capsys.readouterr().err
    assert f"warning: {victim / file}" in err and f"run {VICTIM} will be redone" in err
    assert "Traceback" not in err and trained == []  # the seed's artifacts were sound
    after = json.loads((victim / "metrics.json").read_text())
    for key in ("val_acc1", "loss", "size_nz", "overlap_with_converged", "result_hash"):
        assert after[key] == before[key]
    assert after["post"] == before["post"] and (victim / "masks_summary.csv").read_text() == masks
    assert {p: s for p, s in stamps(out).items() if p.parent != victim} == others
    assert_complete_and_consistent(out, config)


SEED_DAMAGE = {
    "training.npz truncated": ("training.npz", _truncate),
    "window truncated": ("window_epoch1.npz", _truncate),
    "training.npz garbage": ("training.npz", lambda p: p.write_bytes(b"PK\x03\x04 not a zip")),
}


@pytest.mark.parametrize("damage", list(SEED_DAMAGE))
def test_damaged_seed_artifacts_are_named_and_retrained_identically(copy, capsys, monkeypatch,
                                                                    damage):
    config, out = copy
    seed_dir, victim = out / "seed_0", out / "runs" / VICTIM
    with np.load(seed_dir / "training.npz") as f:
        thetas = {k: f[k] for k in f.files if k.startswith("theta_")}
    before = json.loads((victim / "metrics.json").read_text())
    (victim / "metrics.json").unlink()  # an interrupted run: the seed's artifacts are needed
    file, spoil = SEED_DAMAGE[damage]
    spoil(seed_dir / file)
    real, trained = experiment.train_seed, []
    monkeypatch.setattr(experiment, "train_seed",
                        lambda *a, **k: trained.append(1) or real(*a, **k))
    capsys.readouterr()
    assert run_cli(config, out) == 0
    err = capsys.readouterr().err
    assert f"warning: {seed_dir / file} is damaged" in err and "seed_0 is retrained" in err
    assert "Traceback" not in err and trained == [1]
    with np.load(seed_dir / "training.npz") as f:  # retrained bit-identically
        assert all(np.array_equal(f[k], v) for k, v in thetas.items())
    after = json.loads((victim / "metrics.json").read_text())
    assert (after["val_acc1"], after["post"], after["overlap_with_converged"]) == \
        (before["val_acc1"], before["post"], before["overlap_with_converged"])
    assert_complete_and_consistent(out, config)


# ------------------------------------------------------------------------- runs.csv
def test_runs_csv_is_rebuilt_from_the_run_directories(copy):
    config, out = copy
    rows = (out / "runs.csv").read_text().splitlines()
    with open(out / "runs.csv", "a") as fh:  # what appending twice used to leave
        fh.write("\n".join(rows[1:]) + "\n")
    assert len(read_csv(out / "runs.csv")) == 2 * N_RUNS
    for _ in range(2):
        assert run_cli(config, out) == 0
        assert_complete_and_consistent(out, config)
        assert len(read_csv(out / "runs.csv")) == N_RUNS
