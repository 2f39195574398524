"""``kooplearn-prune experiment CONFIG.toml``: the paper's comparison of KMP and GMP, at any scale.

Redman et al. (ICLR 2022) compare Koopman magnitude pruning (KMP), computed from a window of
training, with global magnitude pruning (GMP) of the window's last weights, for windows ending at
several epochs (docs/theory.md §12). An experiment file (``experiment_config``) fixes the data, the
network, the training, the windows and the pruning grid; then, for every seed:

1. train once, recording one ``TrajectoryRecorder`` window per window epoch ``e`` (the last
   ``window_steps`` optimizer steps of epoch ``e``) and keeping θ at the end of every window epoch
   and of training (the "converged network"); saved in ``<out>/seed_<s>/`` (``training.npz``
   last) so a resumed experiment never retrains a finished seed;
2. for every window: fit the KMD once, score each method once, and for every compression run
   one RUN: mask, test accuracy right after pruning and after a masked fine-tune, and the
   overlap / Jaccard (docs/theory.md §13) of the mask with the converged network's GMP mask at the
   same sparsity. Each run is a ShrinkBench-style directory (``experiment_runs``), complete when
   its ``metrics.json`` (written last) is valid and carries this configuration's
   ``result_hash``; complete runs are skipped when the command is run again, anything else is
   redone. ``<out>/runs.csv`` (one row per complete run in the directory, a log to watch) is
   rewritten from the run directories after every run, never appended to.

A PyTorch model (``[model] framework = "torch"``) goes through ``torch_study`` instead of steps
1 and 2, with the same windows, runs and files; its model and data are checked before the output
directory is touched.

The run directories are the record: ``summary.csv`` (one row per run of this config),
``summary_table.txt`` (mean ± std over seeds, also printed) and two figures are derived from
them at the end, with ``intervals.csv`` (95 % t-intervals over seeds) and, when the config has a
reference method (``[pruning] reference``, default KMP), the paired study of ``app.study``:
``paired.csv`` and ``paired_table.txt`` (reference minus each method, seed by seed, also
printed), ``overlap_bands.png`` and ``paired_difference.png``.

The output directory holds one configuration and one writer at a time
(``experiment_store``: an advisory lock refuses a second process at once, naming the pid and
host holding it; a directory with results of other settings, or with results but no
``config.json``, is refused). A damaged artifact (truncated JSON, an ``.npz`` that does not load)
is named in a warning and redone: seed artifacts are retrained, runs are rerun, bit-identically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._io import save_npz_atomic, write_text_atomic
from ..backend import BackendUnavailableError, asarray, get_backend, use_backend
from ..data import Dataset
from ..koopman import FixedPointWarning
from ..layout import ParamLayout
from ..methods import get_method, method_mask
from ..nn import MLP, Linear
from ..optim import SGD, Adam, AdamW
from ..pruning.masks import global_mask
from ..pruning.metrics import jaccard, overlap
from ..pruning.scores import magnitude_scores
from ..recording import TrajectoryRecorder
from ..training import Callback, Trainer
from ..trajectory import Trajectory
from .evaluation import FinetuneConfig, evaluate_mask, window_scores
from .experiment_config import ConfigError, ExperimentConfig, load_config, load_data
from .experiment_kmd import fit_window_kmd, kmd_info, window_magnitude_masks
from .experiment_report import aggregate, format_summary_table, write_figures, write_study
from .experiment_runs import (
    RUNS_DIR,
    FinetuneLog,
    RunSpec,
    read_run,
    runs_csv_text,
    scan_runs,
    summary_csv_text,
    write_run,
)
from .experiment_store import (
    SeedArtifacts,
    check_output_dir,
    load_seed,
    locked_output_dir,
    result_hash,
    warn,
    write_config_json,
)

__all__ = ["run_experiment", "run_experiment_cli", "ExperimentResult", "SeedArtifacts",
           "train_seed", "load_config"]


@dataclass
class ExperimentResult:
    """Where the results are and how many runs this call did (``runs_done``) or found done."""

    out: Path
    runs_total: int
    runs_done: int
    runs_skipped: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


class _KeepStates(Callback):
    """Copy θ to the host at the end of the chosen epochs."""

    def __init__(self, layout: ParamLayout, epochs: set[int]) -> None:
        self.layout, self.epochs = layout, epochs
        self.thetas: dict[int, np.ndarray] = {}

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.epoch in self.epochs:
            self.thetas[trainer.epoch] = self.layout.flatten(trainer.model.state_dict())


# ----------------------------------------------------------------------------------- helpers
def _say(message: str) -> None:
    tqdm.write(message)  # keeps an active progress bar intact


def _model_name(sizes: list[int]) -> str:
    return "MLP-" + "-".join(str(s) for s in sizes)


def _check_windows(config: ExperimentConfig, steps_per_epoch: int) -> None:
    first = min(config.window_epochs)
    if config.window_steps > first * steps_per_epoch:
        raise ConfigError(
            f"[koopman] window_steps = {config.window_steps} is longer than the "
            f"{first * steps_per_epoch} optimizer steps up to the end of epoch {first} "
            f"({steps_per_epoch} per epoch = ceil(n_train / batch_size)); lower window_steps "
            f"or drop window epoch {first}")


_OPTIM_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def _native_optimizer(config: ExperimentConfig, model: MLP) -> SGD | Adam:
    """``[training] optimizer`` for the native MLP (a constant rate: the config checks it)."""
    if config.optimizer == "sgd":
        return SGD(model, lr=config.lr, momentum=config.momentum,
                   weight_decay=config.weight_decay)
    kind = Adam if config.optimizer == "adam" else AdamW
    return kind(model, lr=config.lr, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------------- training
def train_seed(config: ExperimentConfig, data: Dataset, seed: int, seed_dir: Path, *,
               progress: bool = False) -> SeedArtifacts:
    """Train one seed, recording every window; save the artifacts (``training.npz``, which
    carries the config's ``result_hash``, last)."""
    sizes = [data.n_features, *config.hidden, int(data.n_classes)]
    model = MLP(sizes, config.activation, seed=seed)
    optimizer = _native_optimizer(config, model)
    spe = math.ceil(data.n_train / config.batch_size)
    recorders = {e: TrajectoryRecorder(model, every=config.every, start=e * spe -
                                       config.window_steps, stop=e * spe, unit="step")
                 for e in config.window_epochs}
    layout = recorders[config.window_epochs[0]].layout
    keeper = _KeepStates(layout, set(config.window_epochs))
    trainer = Trainer(model, optimizer, callbacks=[*recorders.values(), keeper],
                      progress=progress)
    history = trainer.fit(data, epochs=config.epochs, batch_size=config.batch_size, seed=seed)
    if trainer.steps_per_epoch != spe:  # the windows above assumed this
        raise RuntimeError(f"steps per epoch {trainer.steps_per_epoch} != {spe}; this is a bug")
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "training.npz").unlink(missing_ok=True)  # the seed's marker, rewritten last
    windows = {}
    for e, recorder in recorders.items():
        windows[e] = recorder.trajectory().save(seed_dir / f"window_epoch{e}.npz")
    final = layout.flatten(model.state_dict())
    arrays = {f"theta_epoch{e}": theta for e, theta in keeper.thetas.items()}
    arrays.update({"theta_final": final,
                   "window_epochs": np.asarray(config.window_epochs, dtype=np.int64),
                   "layout": np.array(json.dumps(layout.to_dict())),
                   "history": np.array(json.dumps(history.records)),
                   "result_hash": np.array(result_hash(config))})
    save_npz_atomic(seed_dir / "training.npz", arrays)
    return SeedArtifacts(layout, dict(keeper.thetas), final, windows, list(history.records))


# ----------------------------------------------------------------------------------- the runs
def run_experiment(config: ExperimentConfig, *, progress: bool = True,
                   on_run_end: Callable[[RunSpec, dict[str, Any]], None] | None = None
                   ) -> ExperimentResult:
    """Run (or resume) every run of ``config``; write the summary and figures. See module doc.

    ``on_run_end(spec, metrics)`` is called after each run is saved (e.g. to plot live).
    Raises ``experiment_store.OutputDirError`` (a ``ValueError``) when the output directory is
    in use by another process or holds results of other settings.
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig (load_config(path)), got "
                        f"{type(config).__name__}")
    started = time.perf_counter()
    study = None
    if config.framework == "torch":
        from .torch_study import TorchStudy  # PyTorch is an optional extra

        with use_backend(config.backend):  # every check of model and data before any output
            study = TorchStudy.prepare(config, progress)
    with use_backend(config.backend), locked_output_dir(config.out) as out:
        check_output_dir(out, config)
        data = load_data(config, progress) if study is None else study.data
        spe = math.ceil(data.n_train / config.batch_size)
        _check_windows(config, spe)
        write_config_json(out, config)
        sizes = [data.n_features, *config.hidden, int(data.n_classes)]
        model_name = _model_name(sizes) if study is None else study.model_name
        grid = sorted(RunSpec(s, e, m, c) for s in config.seeds for e in config.window_epochs
                      for m in config.methods for c in config.compressions)
        runs_dir = out / RUNS_DIR
        runs_dir.mkdir(exist_ok=True)
        dirs = {spec: runs_dir / spec.name(config.dataset, model_name) for spec in grid}
        rows = _scan(runs_dir, config, {d.name for d in dirs.values()})
        write_text_atomic(out / "runs.csv", runs_csv_text(rows.values()))
        pending = [s for s in grid if dirs[s].name not in rows]
        _say(f"experiment {config.name!r}: {len(grid)} runs ({len(grid) - len(pending)} already "
             f"complete) on {data.name}, {model_name}, backend {get_backend()}; results in {out}")
        with tqdm(total=len(grid), initial=len(grid) - len(pending), unit="run",
                  desc="runs", disable=not progress) as bar:
            def run_saved(spec: RunSpec, metrics: dict[str, Any]) -> None:
                rows[dirs[spec].name] = read_run(dirs[spec], result_hash(config))
                write_text_atomic(out / "runs.csv", runs_csv_text(rows.values()))
                bar.update(1)
                if on_run_end is not None:
                    on_run_end(spec, metrics)

            for seed in config.seeds:
                todo = [s for s in pending if s.seed == seed]
                if todo and study is not None:
                    study.run_seed(seed, todo, dirs, out, progress, run_saved)
                elif todo:
                    _run_seed(config, data, seed, todo, dirs, out, sizes, model_name, progress,
                              run_saved)
        grid_rows = [rows[dirs[s].name] for s in grid]
        files = [write_text_atomic(out / "summary.csv", summary_csv_text(grid_rows))]
        groups = aggregate(grid_rows)
        table = format_summary_table(groups)
        files.append(write_text_atomic(out / "summary_table.txt", table + "\n"))
        files += write_figures(out, groups, overlap_sparsity=config.overlap_sparsity)
        paired_table, study_files = write_study(out, grid_rows, groups, config.paired_reference)
        files += study_files
    print(table)
    if paired_table:
        print(paired_table)
    for f in files:
        print(f"  wrote {f}")
    print(f"experiment finished in {time.perf_counter() - started:.1f} s ({len(pending)} runs "
          f"done now, {len(grid) - len(pending)} found complete)")
    return ExperimentResult(out, len(grid), len(pending), len(grid) - len(pending), grid_rows,
                            files)


def _scan(runs_dir: Path, config: ExperimentConfig, grid_names: set[str]
          ) -> dict[str, dict[str, Any]]:
    """The complete runs in ``runs_dir`` (rows by directory name); warn about damaged ones."""
    rows, damaged = scan_runs(runs_dir, result_hash(config))
    for name, err in damaged.items():
        then = (f"run {name} will be redone" if name in grid_names else
                f"run {name} is not in this config's grid: left as it is, out of runs.csv")
        warn(f"{err.path} {err.reason}; {then}")
    return rows


def _run_seed(config: ExperimentConfig, data: Dataset, seed: int, todo: list[RunSpec],
              dirs: dict[RunSpec, Path], out: Path, sizes: list[int], model_name: str,
              progress: bool, run_saved: Callable[[RunSpec, dict[str, Any]], None]) -> None:
    seed_dir = out / f"seed_{seed}"
    artifacts = load_seed(config, seed_dir, {s.window_epoch for s in todo},
                           math.ceil(data.n_train / config.batch_size))
    if artifacts is None:
        _say(f"seed {seed}: training {model_name} for {config.epochs} epochs, recording "
             f"windows ending at epochs {list(config.window_epochs)}")
        artifacts = train_seed(config, data, seed, seed_dir, progress=progress)
    else:
        _say(f"seed {seed}: reusing the saved training in {seed_dir}")
    layout = artifacts.layout
    model = MLP(sizes, config.activation, seed=seed)
    linear_weights = [f"{name}.weight" for name, module in model.named_modules()
                      if isinstance(module, Linear)]
    final_scores = magnitude_scores(asarray(artifacts.final))
    converged: dict[float, Any] = {}

    def converged_mask(sparsity: float) -> Any:
        if sparsity not in converged:
            converged[sparsity] = global_mask(final_scores, sparsity, layout=layout)
        return converged[sparsity]

    finetune = FinetuneConfig(epochs=config.finetune_epochs, lr=config.finetune_lr,
                              momentum=config.finetune_momentum, batch_size=config.batch_size)
    history = artifacts.history
    for epoch in config.window_epochs:
        window_todo = [s for s in todo if s.window_epoch == epoch]
        if not window_todo:
            continue
        window = Trajectory.load(artifacts.windows[epoch])
        model.load_state_dict(layout.unflatten(artifacts.thetas[epoch]))
        window_gmp = window_magnitude_masks(window)
        kmd = None
        for method in config.methods:
            specs = [s for s in window_todo if s.method == method]
            if not specs:
                continue
            if get_method(method).needs_kmd and kmd is None:
                kmd = fit_window_kmd(config, window)
            with warnings.catch_warnings():
                # early windows are far from a fixed point: recorded in metrics["kmd"] instead
                warnings.simplefilter("ignore", FixedPointWarning)
                scores = window_scores(method, window, kmd=kmd, model=model, data=data,
                                       seed=seed, converged=asarray(artifacts.final))
            info = kmd_info(kmd, method)
            for spec in specs:
                metrics = _one_run(config, spec, dirs[spec], window, model, data, scores,
                                   converged_mask, linear_weights, finetune, model_name,
                                   history, info, window_gmp)
                run_saved(spec, metrics)


def _one_run(config: ExperimentConfig, spec: RunSpec, run_dir: Path, window: Trajectory,
             model: Any, data: Dataset, scores: Any, converged_mask: Callable[[float], Any],
             linear_weights: list[str], finetune: FinetuneConfig, model_name: str,
             history: list[dict[str, float]], kmd_info: dict | None,
             window_gmp: Callable[[float], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    layout = window.layout
    mask = method_mask(spec.method, scores, spec.sparsity, window)
    log = FinetuneLog(data.x_test, data.y_test)
    evaluation = evaluate_mask(model, mask, data, window, finetune=finetune, seed=spec.seed,
                               callbacks=[log])
    ov_sparsity = spec.sparsity if config.overlap_sparsity is None else config.overlap_sparsity
    ov_mask = mask if config.overlap_sparsity is None else \
        method_mask(spec.method, scores, ov_sparsity, window)
    reference = converged_mask(ov_sparsity)
    params = {"dataset": config.dataset, "model": model_name, "strategy": spec.method,
              "compression": spec.compression, "seed": spec.seed,
              "window_epoch": spec.window_epoch, "sparsity": spec.sparsity,
              "activation": config.activation, "resume": None,
              "dl_kwargs": {"batch_size": finetune.batch_size},
              "train_kwargs": {"optim": "SGD", "epochs": finetune.epochs, "lr": finetune.lr,
                               "momentum": finetune.momentum},
              "training": {"optim": _OPTIM_NAMES[config.optimizer], "epochs": config.epochs,
                           "lr": config.lr, "momentum": config.momentum,
                           "weight_decay": config.weight_decay, "batch_size": config.batch_size,
                           "window_steps": config.window_steps, "every": config.every}}
    extras = {"window_epoch": spec.window_epoch, "compression": spec.compression,
              "sparsity": spec.sparsity,
              "overlap_with_converged": overlap(ov_mask, reference, layout),
              "jaccard_with_converged": jaccard(ov_mask, reference, layout),
              # the same window's GMP mask: KMP vs GMP at equal time (docs/theory.md §13)
              "overlap_with_window_magnitude": overlap(ov_mask, window_gmp(ov_sparsity), layout),
              "jaccard_with_window_magnitude": jaccard(ov_mask, window_gmp(ov_sparsity), layout),
              "overlap_sparsity": ov_sparsity,
              "unpruned_val_acc1": history[spec.window_epoch - 1].get("test_accuracy"),
              "converged_val_acc1": history[-1].get("test_accuracy"),
              "kmd": kmd_info, "backend": get_backend(),
              "seconds": time.perf_counter() - started}
    return write_run(run_dir, params=params, mask=mask, layout=layout,
                     linear_weights=linear_weights, evaluation=evaluation, logs=log.rows,
                     extras=extras, result_hash=result_hash(config))


# ----------------------------------------------------------------------------------- the CLI
def _complete_runs(out: Path | None) -> int:
    if out is None or not (out / RUNS_DIR).is_dir():
        return 0
    return sum(1 for _ in (out / RUNS_DIR).glob("*/metrics.json"))


def run_experiment_cli(args: argparse.Namespace) -> int:
    """``kooplearn-prune experiment CONFIG [--out DIR] [--no-progress]``: 0 done, 2 bad input,
    130 interrupted (every finished run is kept; the same command resumes)."""
    config = None
    try:
        config = load_config(args.config, out=args.out)
        run_experiment(config, progress=not args.no_progress)
    except KeyboardInterrupt:
        out = None if config is None else Path(config.out)
        print(f"\nkooplearn-prune experiment: interrupted; {_complete_runs(out)} complete runs "
              f"are kept in {out}; run the same command again to resume", file=sys.stderr)
        return 130
    except (ConfigError, BackendUnavailableError, ValueError, TypeError, OSError) as err:
        # OSError: a dataset that cannot be downloaded, a full disk: say so in one line
        message = " ".join(str(err).split())  # one line, whatever the exception held
        print(f"kooplearn-prune experiment: error: {message}", file=sys.stderr)
        return 2
    return 0
