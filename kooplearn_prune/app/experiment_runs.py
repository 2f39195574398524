"""One run of an experiment on disk, laid out the way ShrinkBench lays out its pruning runs.

A run = (seed, window epoch, method, compression). Its directory ``<out>/runs/<name>/`` holds

* ``params.json``: ``dataset``, ``model``, ``strategy``, ``compression``, ``seed`` (plus our
  ``window_epoch``, ``sparsity``, ``activation``, ``resume``, ``result_hash``) stored as Python
  ``repr`` strings,
  as ShrinkBench does: its analysis reads them with ``eval(params['dataset'])``, so a string is
  stored as ``"'digits'"`` and a number as ``"4"``; ``ast.literal_eval`` reads them safely.
  ``dl_kwargs`` ``{batch_size}`` and ``train_kwargs`` ``{optim, epochs, lr, momentum}`` (the
  masked fine-tune, as in ShrinkBench) are plain JSON, and so is ``training`` (how the network
  was trained before pruning).
  ``strategy`` is ShrinkBench's key for what this project calls the pruning *method*; it is the
  only place the word appears, so that ShrinkBench's analysis reads these files unchanged.
  NOTE: ``compression`` is over the prunable set (``1 / (1 − sparsity)``, docs/theory.md §13);
  ShrinkBench's own ``compression`` counts all parameters, which is our ``compression_all``
  (``metrics['compression_ratio']``).
* ``logs.csv``: one row per fine-tune epoch: ``epoch, train_loss, val_loss, val_acc1,
  timestamp`` (seconds since the fine-tune started). Only the header when nothing is fine-tuned.
* ``masks_summary.csv``: one row per parameter tensor: ``module, param, comp, size, nnz, shape,
  prunable`` (``comp = size / nnz``).
* ``metrics.json``, written last (atomically), is the run's completion marker.
  Top level (before the fine-tune): ``size, size_nz, compression_ratio, flops, flops_nz,
  theoretical_speedup, loss, val_acc1``; ``post``: the same after the fine-tune (equal to the
  top level when ``finetune_epochs = 0``); then our extras (``seed, method, window_epoch,
  sparsity, compression, overlap_with_converged, jaccard_with_converged``, ..., ``result_hash``,
  ``finished``).

A run is complete when ``read_run`` accepts it: both JSON files parse, hold the expected keys,
name the same run as the directory does, and carry the ``result_hash`` of the configuration
asked for (``experiment_config.result_hash``: the result-relevant settings and the code's
``RESULT_FORMAT``). Anything else raises ``RunDamaged`` (naming the file) and the run is redone.

FLOPs follow ShrinkBench's convention: the multiply-accumulates per sample of each Linear layer,
``in × out`` (one MAC = one op; biases and activations not counted), and of each convolution on
PyTorch models, ``kernel size × in_channels / groups`` per output element times the output
elements (``app.torch_inputs.weight_uses``). ``flops_nz`` multiplies
each layer's MACs by its weight density, exact for unstructured masks of dense layers.
``theoretical_speedup = flops / flops_nz`` is THEORETICAL: a masked dense network computes
exactly as many MACs as before; only sparse kernels could turn the ratio into time.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import write_json_atomic, write_text_atomic
from ..layout import ParamLayout
from ..pruning.metrics import mask_table
from ..training import Callback

__all__ = ["RunSpec", "RUNS_DIR", "SUMMARY_COLUMNS", "RUNS_CSV_COLUMNS", "LOG_COLUMNS",
           "MASK_COLUMNS", "FinetuneLog", "RunDamaged", "linear_flops", "masks_summary_rows",
           "write_run", "read_run", "scan_runs", "csv_text", "summary_csv_text", "runs_csv_text",
           "format_number"]

RUNS_DIR = "runs"
LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc1", "timestamp")
MASK_COLUMNS = ("module", "param", "comp", "size", "nnz", "shape", "prunable")
SUMMARY_COLUMNS = ("method", "compression", "compression_all", "size", "size_nz", "flops",
                   "flops_nz", "speedup", "pre_acc1", "post_acc1", "seed", "window_epoch",
                   "overlap_with_converged", "jaccard_with_converged")
RUNS_CSV_COLUMNS = (*SUMMARY_COLUMNS, "path", "finished")
_METRIC_KEYS = ("size", "size_nz", "compression_ratio", "flops", "flops_nz",
                "theoretical_speedup", "loss", "val_acc1")
_EXTRA_KEYS = ("seed", "method", "window_epoch", "compression", "overlap_with_converged",
               "jaccard_with_converged", "result_hash", "finished")


class RunDamaged(Exception):
    """A run directory that has a ``metrics.json`` but is not a valid complete run of the
    configuration asked for; ``path`` names the offending file, ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def format_number(x: float) -> str:
    """``4`` for 4 or 4.0, ``2.5`` for 2.5: compressions in names and tables."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True, order=True)
class RunSpec:
    """Which run: seed, window epoch, pruning method and compression (over the prunable set)."""

    seed: int
    window_epoch: int
    method: str
    compression: float

    @property
    def sparsity(self) -> float:
        """``p = 1 − 1/c`` over the prunable set (docs/theory.md §13)."""
        return 1.0 - 1.0 / self.compression

    def name(self, dataset: str, model: str) -> str:
        """Directory name, ShrinkBench style: ``digits_MLP-64-128-64-10_kmp_E1_Z4_R0``."""
        return (f"{dataset}_{model}_{self.method}_E{self.window_epoch}_"
                f"Z{format_number(self.compression)}_R{self.seed}")


class FinetuneLog(Callback):
    """Trainer callback: after each fine-tune epoch, evaluate on the test split and keep a row."""

    def __init__(self, x_test: Any, y_test: Any) -> None:
        self.x_test, self.y_test = x_test, y_test
        self.rows: list[dict[str, float]] = []
        self._start = time.perf_counter()

    def on_fit_start(self, trainer: Any) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        val = trainer.evaluate(self.x_test, self.y_test)
        self.rows.append({"epoch": int(logs["epoch"]), "train_loss": logs["train_loss"],
                          "val_loss": val["loss"], "val_acc1": val["accuracy"],
                          "timestamp": time.perf_counter() - self._start})


def linear_flops(rows: Iterable[Mapping[str, Any]],
                 linear_weights: Iterable[str] | Mapping[str, int]) -> tuple[int, int]:
    """``(flops, flops_nz)``: MACs per sample of the Linear layers, dense and masked.

    ``rows`` are ``pruning.metrics.mask_table`` rows; ``linear_weights`` names the weight tensor
    of every Linear layer (shape ``(out, in)``, so its size is ``in × out`` MACs, and its kept
    count is the layer's MACs times its density). A mapping ``{weight name: uses}`` also counts
    layers whose weight entry is used ``uses`` times per sample (a convolution: once per output
    position, so ``uses = H_out × W_out``).
    """
    uses = dict(linear_weights) if isinstance(linear_weights, Mapping) else \
        dict.fromkeys(linear_weights, 1)
    flops = flops_nz = 0
    for row in rows:
        if row["name"] in uses:
            flops += int(row["size"]) * int(uses[row["name"]])
            flops_nz += int(row["kept"]) * int(uses[row["name"]])
    return flops, flops_nz


def masks_summary_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``masks_summary.csv`` rows from ``mask_table`` rows (total rows dropped)."""
    out = []
    for row in rows:
        if row["shape"] is None:  # the two total rows
            continue
        module, _, param = row["name"].rpartition(".")
        size, kept = int(row["size"]), int(row["kept"])
        out.append({"module": module, "param": param,
                    "comp": math.inf if kept == 0 else size / kept, "size": size, "nnz": kept,
                    "shape": str(tuple(row["shape"])), "prunable": bool(row["prunable"])})
    return out


def csv_text(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _size_metrics(size: int, size_nz: int, flops: int, flops_nz: int, loss: float,
                  acc: float) -> dict[str, Any]:
    return {"size": size, "size_nz": size_nz,
            "compression_ratio": math.inf if size_nz == 0 else size / size_nz,
            "flops": flops, "flops_nz": flops_nz,
            "theoretical_speedup": math.inf if flops_nz == 0 else flops / flops_nz,
            "loss": loss, "val_acc1": acc}


def write_run(run_dir: Path, *, params: Mapping[str, Any], mask: Any, layout: ParamLayout,
              linear_weights: Iterable[str] | Mapping[str, int], evaluation: Mapping[str, float],
              logs: list[dict[str, float]], extras: Mapping[str, Any],
              result_hash: str) -> dict[str, Any]:
    """Write the four files of one run (``metrics.json`` last) and return its metrics.

    ``params``: the values of ``params.json`` before ``repr`` (see the module docstring; dict
    values are kept as they are). ``evaluation``: ``evaluate_mask``'s result. A stale
    ``metrics.json`` is removed first, so a run rewritten halfway is never taken as complete.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    stored = {k: (v if isinstance(v, Mapping) else repr(v))
              for k, v in {**params, "result_hash": result_hash}.items()}
    write_json_atomic(run_dir / "params.json", stored)
    write_text_atomic(run_dir / "logs.csv", csv_text(LOG_COLUMNS, logs))
    table = mask_table(mask, layout)
    write_text_atomic(run_dir / "masks_summary.csv",
                      csv_text(MASK_COLUMNS, masks_summary_rows(table)))
    size, size_nz = layout.size, int(evaluation["nonzero"])
    flops, flops_nz = linear_flops(table, linear_weights)
    pre = _size_metrics(size, size_nz, flops, flops_nz, evaluation["pre_loss"],
                        evaluation["pre_accuracy"])
    post = _size_metrics(size, size_nz, flops, flops_nz,
                         evaluation.get("post_loss", evaluation["pre_loss"]),
                         evaluation.get("post_accuracy", evaluation["pre_accuracy"]))
    metrics = {**pre, "post": post, "seed": params["seed"], "method": params["strategy"],
               **extras, "result_hash": result_hash,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except FileNotFoundError:
        raise RunDamaged(path, "is missing") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDamaged(path, f"cannot be read, truncated or corrupt ({err})") from None
    if not isinstance(value, dict):
        raise RunDamaged(path, f"holds a {type(value).__name__}, not a JSON object")
    return value


def _run_of(params: Mapping[str, Any], path: Path) -> tuple[RunSpec, dict[str, Any]]:
    """The run a ``params.json`` describes, and its values read back from the repr strings."""
    try:
        values = {k: ast.literal_eval(params[k]) for k in ("dataset", "model", "strategy",
                                                          "compression", "seed",
                                                          "window_epoch", "result_hash")}
    except KeyError as err:
        raise RunDamaged(path, f"lacks the key {err}") from None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
        raise RunDamaged(path, f"holds a value that is not a Python literal ({err})") from None
    spec = RunSpec(values["seed"], values["window_epoch"], values["strategy"],
                   values["compression"])
    return spec, values


def read_run(run_dir: Path, result_hash: str) -> dict[str, Any] | None:
    """The ``runs.csv`` row of a complete run directory, or None if it has no ``metrics.json``.

    Raises ``RunDamaged`` when the run is not a valid complete run made under ``result_hash``
    (see the module docstring).
    """
    metrics_path, params_path = run_dir / "metrics.json", run_dir / "params.json"
    if not metrics_path.is_file():
        return None
    metrics = _read_json(metrics_path)
    missing = [k for k in (*_METRIC_KEYS, "post", *_EXTRA_KEYS) if k not in metrics]
    post = metrics.get("post")
    if isinstance(post, dict):
        missing += [f"post.{k}" for k in _METRIC_KEYS if k not in post]
    elif post is not None:
        missing.append("post (an object)")
    if missing:
        raise RunDamaged(metrics_path, f"lacks the key(s) {', '.join(missing)}")
    if metrics["result_hash"] != result_hash:
        raise RunDamaged(metrics_path, f"was made under result hash {metrics['result_hash']!r}, "
                                       f"not this configuration's {result_hash!r}")
    params = _read_json(params_path)
    spec, values = _run_of(params, params_path)
    if values["result_hash"] != result_hash:
        raise RunDamaged(params_path, f"was made under result hash {values['result_hash']!r}, "
                                      f"not this configuration's {result_hash!r}")
    name = spec.name(values["dataset"], values["model"])
    if run_dir.name != name:
        raise RunDamaged(params_path, f"describes run {name}, not the directory's "
                                      f"{run_dir.name}")
    if (metrics["seed"], metrics["method"], metrics["window_epoch"], metrics["compression"]) \
            != (spec.seed, spec.method, spec.window_epoch, spec.compression):
        raise RunDamaged(metrics_path, "belongs to another run than params.json")
    for name in ("logs.csv", "masks_summary.csv"):
        if not (run_dir / name).is_file():
            raise RunDamaged(run_dir / name, "is missing")
    return {"method": spec.method, "compression": spec.compression,
            "compression_all": metrics["compression_ratio"], "size": metrics["size"],
            "size_nz": metrics["size_nz"], "flops": metrics["flops"],
            "flops_nz": metrics["flops_nz"], "speedup": metrics["theoretical_speedup"],
            "pre_acc1": metrics["val_acc1"], "post_acc1": metrics["post"]["val_acc1"],
            "seed": spec.seed, "window_epoch": spec.window_epoch,
            "overlap_with_converged": metrics["overlap_with_converged"],
            "jaccard_with_converged": metrics["jaccard_with_converged"],
            "unpruned_acc1": metrics.get("unpruned_val_acc1"),
            "converged_acc1": metrics.get("converged_val_acc1"),
            "path": f"{RUNS_DIR}/{run_dir.name}", "finished": metrics["finished"]}


def scan_runs(runs_dir: Path, result_hash: str) -> tuple[dict[str, dict[str, Any]],
                                                          dict[str, RunDamaged]]:
    """Every run directory under ``runs_dir``, by name: ``(complete rows, damaged runs)``.

    Directories without ``metrics.json`` (interrupted runs) are in neither.
    """
    rows: dict[str, dict[str, Any]] = {}
    damaged: dict[str, RunDamaged] = {}
    if not runs_dir.is_dir():
        return rows, damaged
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            row = read_run(run_dir, result_hash)
        except RunDamaged as err:
            damaged[run_dir.name] = err
        else:
            if row is not None:
                rows[run_dir.name] = row
    return rows, damaged


def summary_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """``summary.csv``: one row per run, the columns of ``SUMMARY_COLUMNS``."""
    return csv_text(SUMMARY_COLUMNS, ({k: r[k] for k in SUMMARY_COLUMNS} for r in rows))


def runs_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """``runs.csv``: one row per complete run, ``SUMMARY_COLUMNS`` then ``path, finished``."""
    ordered = sorted(rows, key=lambda r: (r["seed"], r["window_epoch"], r["method"],
                                          float(r["compression"])))
    return csv_text(RUNS_CSV_COLUMNS, ({k: r[k] for k in RUNS_CSV_COLUMNS} for r in ordered))
