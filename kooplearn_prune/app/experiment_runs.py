"""One run of an experiment on disk, laid out the way ShrinkBench lays out its pruning runs.

A run = (seed, window epoch, method, compression). Its directory ``<out>/runs/<name>/`` holds

* ``params.json``: ``dataset``, ``model``, ``strategy``, ``compression``, ``seed`` (plus our
  ``window_epoch``, ``sparsity``, ``activation``, ``resume``) stored as Python ``repr`` strings,
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
* ``metrics.json``, written last (atomically): the run is complete exactly when it exists.
  Top level (before the fine-tune): ``size, size_nz, compression_ratio, flops, flops_nz,
  theoretical_speedup, loss, val_acc1``; ``post``: the same after the fine-tune (equal to the
  top level when ``finetune_epochs = 0``); then our extras (``window_epoch, sparsity,
  compression, overlap_with_converged, jaccard_with_converged``, ...).

FLOPs follow ShrinkBench's convention: the multiply-accumulates per sample of each Linear layer,
``in × out`` (one MAC = one op; biases and activations not counted). ``flops_nz`` multiplies
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

__all__ = ["RunSpec", "RUNS_DIR", "SUMMARY_COLUMNS", "LOG_COLUMNS", "MASK_COLUMNS", "FinetuneLog",
           "linear_flops", "masks_summary_rows", "write_run", "read_run", "append_runs_csv",
           "format_number"]

RUNS_DIR = "runs"
LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc1", "timestamp")
MASK_COLUMNS = ("module", "param", "comp", "size", "nnz", "shape", "prunable")
SUMMARY_COLUMNS = ("method", "compression", "compression_all", "size", "size_nz", "flops",
                   "flops_nz", "speedup", "pre_acc1", "post_acc1", "seed", "window_epoch",
                   "overlap_with_converged", "jaccard_with_converged")


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


def linear_flops(rows: Iterable[Mapping[str, Any]], linear_weights: Iterable[str]) -> \
        tuple[int, int]:
    """``(flops, flops_nz)``: MACs per sample of the Linear layers, dense and masked.

    ``rows`` are ``pruning.metrics.mask_table`` rows; ``linear_weights`` names the weight tensor
    of every Linear layer (shape ``(out, in)``, so its size is ``in × out`` MACs, and its kept
    count is the layer's MACs times its density).
    """
    names = set(linear_weights)
    flops = flops_nz = 0
    for row in rows:
        if row["name"] in names:
            flops += int(row["size"])
            flops_nz += int(row["kept"])
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


def _csv_text(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> str:
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
              linear_weights: Iterable[str], evaluation: Mapping[str, float],
              logs: list[dict[str, float]], extras: Mapping[str, Any]) -> dict[str, Any]:
    """Write the four files of one run (``metrics.json`` last) and return its metrics.

    ``params``: the values of ``params.json`` before ``repr`` (see the module docstring; dict
    values are kept as they are). ``evaluation``: ``evaluate_mask``'s result.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = {k: (v if isinstance(v, Mapping) else repr(v)) for k, v in params.items()}
    write_json_atomic(run_dir / "params.json", stored)
    write_text_atomic(run_dir / "logs.csv", _csv_text(LOG_COLUMNS, logs))
    table = mask_table(mask, layout)
    write_text_atomic(run_dir / "masks_summary.csv",
                      _csv_text(MASK_COLUMNS, masks_summary_rows(table)))
    size, size_nz = layout.size, int(evaluation["nonzero"])
    flops, flops_nz = linear_flops(table, linear_weights)
    pre = _size_metrics(size, size_nz, flops, flops_nz, evaluation["pre_loss"],
                        evaluation["pre_accuracy"])
    post = _size_metrics(size, size_nz, flops, flops_nz,
                         evaluation.get("post_loss", evaluation["pre_loss"]),
                         evaluation.get("post_accuracy", evaluation["pre_accuracy"]))
    metrics = {**pre, "post": post, **extras}
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def _literal(value: Any) -> Any:
    return ast.literal_eval(value) if isinstance(value, str) else value


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The ``summary.csv`` row of a complete run directory, or None if it is not complete."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return None
    with open(run_dir / "params.json", encoding="utf-8") as fh:
        params = json.load(fh)
    with open(metrics_path, encoding="utf-8") as fh:
        metrics = json.load(fh)
    return {"method": _literal(params["strategy"]),
            "compression": _literal(params["compression"]),
            "compression_all": metrics["compression_ratio"], "size": metrics["size"],
            "size_nz": metrics["size_nz"], "flops": metrics["flops"],
            "flops_nz": metrics["flops_nz"], "speedup": metrics["theoretical_speedup"],
            "pre_acc1": metrics["val_acc1"], "post_acc1": metrics["post"]["val_acc1"],
            "seed": _literal(params["seed"]), "window_epoch": _literal(params["window_epoch"]),
            "overlap_with_converged": metrics["overlap_with_converged"],
            "jaccard_with_converged": metrics["jaccard_with_converged"],
            "unpruned_acc1": metrics.get("unpruned_val_acc1"),
            "converged_acc1": metrics.get("converged_val_acc1")}


def summary_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """``summary.csv``: one row per run, the columns of ``SUMMARY_COLUMNS``."""
    return _csv_text(SUMMARY_COLUMNS, ({k: r[k] for k in SUMMARY_COLUMNS} for r in rows))


def append_runs_csv(path: Path, row: Mapping[str, Any], path_in_out: str) -> None:
    """Append one finished run to ``runs.csv`` (header first if the file is new) and flush."""
    columns = (*SUMMARY_COLUMNS, "path", "finished")
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({**{k: row[k] for k in SUMMARY_COLUMNS}, "path": path_in_out,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        fh.flush()
