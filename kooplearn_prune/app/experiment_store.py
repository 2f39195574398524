"""An experiment's output directory as a small database of runs: one writer, one configuration.

* **One writer at a time.** ``locked_output_dir`` takes an advisory ``fcntl.flock`` on
  ``<out>/experiment.lock`` for the whole experiment and writes the holder (pid, host, start
  time) into it. A second ``kooplearn-prune experiment`` on the same directory does not wait:
  it is refused at once (``OutputDirError``, exit code 2) with a message naming that pid and
  host; run it again when the first one is done. The kernel drops the lock when its process
  ends, even by SIGKILL, so a crash never leaves the directory locked. The lock file itself is
  never removed (removing it would let two processes lock two different files).
* **One configuration per directory.** ``config.json`` is written before any result, and holds
  ``format`` (``RESULT_FORMAT``), ``result_hash`` and the ``fingerprint`` of the result-relevant
  settings (``experiment_config.result_fingerprint``). ``check_output_dir`` refuses a directory
  whose results were made under another fingerprint (naming the first key that differs), under
  another code format, or whose ``config.json`` is missing or unreadable while results exist:
  results of an unknown configuration are never adopted. Seeds, methods, compressions and
  window epochs may change: each run is its own record (``experiment_runs``).
* **Keys.** ``result_hash`` (SHA-256 of ``RESULT_FORMAT`` and that fingerprint) is written into
  ``config.json``, every run's ``params.json`` and ``metrics.json``, and every seed's
  ``training.npz``; an artifact under another hash is never used. ``load_seed`` checks a seed's
  saved training (the hash, every array, each needed window ending at its epoch's saved θ) and
  names a damaged file in a warning, so that the seed is retrained instead of a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._io import write_json_atomic
from ..layout import ParamLayout
from ..trajectory import Trajectory
from .demo import prepare_output_dir
from .experiment_config import ExperimentConfig, first_difference, result_fingerprint
from .experiment_runs import RUNS_DIR

__all__ = ["OutputDirError", "LOCK_FILE", "CONFIG_FILE", "RESULT_FORMAT", "result_hash",
           "locked_output_dir", "check_output_dir", "write_config_json", "SeedArtifacts",
           "load_seed", "warn"]

LOCK_FILE = "experiment.lock"
CONFIG_FILE = "config.json"

#: Bump when a change of the code changes a run's numbers or files: it is part of every run's
#: ``result_hash``, so runs made by older code are redone, never mixed with new ones.
RESULT_FORMAT = 2


def _canonical(value: Any) -> Any:
    """JSON-ready, with every number a float: ``1`` and ``1.0`` hash alike, as they compare."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value if value is None or isinstance(value, (bool, str)) else str(value)


def result_hash(config: ExperimentConfig) -> str:
    """16 hex digits of SHA-256 over ``RESULT_FORMAT`` and ``result_fingerprint(config)``.

    Every run directory and seed artifact carries it; one made under another hash is redone.
    """
    text = json.dumps({"format": RESULT_FORMAT, "fingerprint": _canonical(
        result_fingerprint(config))}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def warn(message: str) -> None:
    """One warning line on stderr (an active progress bar stays intact)."""
    tqdm.write(f"kooplearn-prune experiment: warning: {message}", file=sys.stderr)


class OutputDirError(ValueError):
    """The output directory cannot take this experiment: busy, or holding other results."""


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {info['pid']} on host {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"


@contextlib.contextmanager
def locked_output_dir(out: str | Path) -> Iterator[Path]:
    """Create ``out`` if needed and hold its lock for the ``with`` block (see the module doc).

    Raises ``OutputDirError`` when ``out`` is a file, is not writable or is locked by another
    process.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--out {path} is a file; choose a directory name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise OutputDirError(f"--out {path} is not writable ({err.strerror}); choose another "
                             f"directory") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(
                f"{path} is in use by another kooplearn-prune experiment ({_holder(fd)}; lock "
                f"file {path / LOCK_FILE}); wait until it has finished, or choose another "
                f"--out") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        try:
            yield prepare_output_dir(path)  # also checks that files can be made in it
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # nobody holds it now
    finally:
        os.close(fd)  # releases the lock


def _has_results(out: Path) -> bool:
    runs = out / RUNS_DIR
    return (runs.is_dir() and any(runs.iterdir())) or any(out.glob("seed_*"))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as read back from config.json


def check_output_dir(out: Path, config: ExperimentConfig) -> None:
    """Refuse ``out`` unless its results (if any) were made under ``config``'s fingerprint.

    Call it while holding the lock, before anything is written.
    """
    saved_path = out / CONFIG_FILE
    if not _has_results(out):
        return  # nothing to mix with (a config.json alone is rewritten)
    fix = "choose another --out, or move that directory away"
    if not saved_path.is_file():
        raise OutputDirError(
            f"{out} holds results ({RUNS_DIR}/ or seed_*/) but no {CONFIG_FILE}, so the "
            f"configuration that made them is unknown and they cannot be resumed; {fix}")
    try:
        with open(saved_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        fingerprint, fmt, saved_hash = (saved["fingerprint"], saved.get("format"),
                                        saved.get("result_hash"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputDirError(f"{saved_path} cannot be read ({err}), so the configuration of "
                             f"the results in {out} is unknown; {fix}") from None
    if fmt != RESULT_FORMAT:
        raise OutputDirError(
            f"{out} holds results written "
            f"{'by an older version' if fmt is None else f'in result format {fmt}'}; this "
            f"version writes format {RESULT_FORMAT} and cannot check them; {fix}")
    diff = first_difference(fingerprint, _jsonable(result_fingerprint(config)))
    if diff is not None:
        raise OutputDirError(f"{out} holds results of a different configuration ({diff}); "
                             f"{fix}, or run the configuration saved in {saved_path}")
    if saved_hash != result_hash(config):
        raise OutputDirError(f"{saved_path} does not match its own fingerprint (result_hash "
                             f"{saved_hash!r}); it was edited by hand; {fix}")


def write_config_json(out: Path, config: ExperimentConfig) -> Path:
    """``config.json``: this invocation's config and the directory's binding (see module doc)."""
    return write_json_atomic(out / CONFIG_FILE, {
        "format": RESULT_FORMAT, "result_hash": result_hash(config),
        "fingerprint": result_fingerprint(config), "config": config.to_dict()})


@dataclass
class SeedArtifacts:
    """What one seed's training leaves for its runs: θ at each window epoch and at the end.

    ``thetas[e]``: host float32 ``(n,)`` at the end of epoch ``e``; ``final``: θ after the last
    epoch; ``windows[e]``: path of the window's ``Trajectory`` file; ``history``: per-epoch logs.
    """

    layout: ParamLayout
    thetas: dict[int, np.ndarray]
    final: np.ndarray
    windows: dict[int, Path]
    history: list[dict[str, float]]

# what reading a truncated or corrupt file may raise (BadZipFile: an .npz cut short)
_DAMAGE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def load_seed(config: ExperimentConfig, seed_dir: Path, needed: set[int],
               steps_per_epoch: int) -> SeedArtifacts | None:
    """The saved artifacts of a seed, checked, or None when it must be (re)trained.

    The windows of the epochs in ``needed`` are loaded once to check that they end at the saved
    θ of their epoch. A damaged or foreign file is named in a warning.
    """
    path = seed_dir / "training.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if "result_hash" not in f.files or str(f["result_hash"]) != result_hash(config):
                raise ValueError("it was made under another configuration or an older version")
            if not set(config.window_epochs) <= {int(e) for e in f["window_epochs"]}:
                return None  # trained for fewer windows than asked now: not damage
            artifacts = SeedArtifacts(
                ParamLayout.from_dict(json.loads(str(f["layout"]))),
                {e: f[f"theta_epoch{e}"] for e in config.window_epochs}, f["theta_final"],
                {e: seed_dir / f"window_epoch{e}.npz" for e in config.window_epochs},
                json.loads(str(f["history"])))
        if len(artifacts.history) != config.epochs:
            raise ValueError(f"it holds {len(artifacts.history)} epochs of history, not "
                             f"{config.epochs}")
        for e in sorted(needed):
            path = artifacts.windows[e]
            window = Trajectory.load(path, xp=np)
            if (window.layout != artifacts.layout or int(window.steps[-1]) != e *
                    steps_per_epoch or not np.array_equal(window.last, artifacts.thetas[e])):
                raise ValueError(f"it does not end at the saved θ of epoch {e}")
    except _DAMAGE as err:
        warn(f"{path} is damaged or foreign ({type(err).__name__}: {err}); {seed_dir.name} "
              f"is retrained and its artifacts rewritten")
        return None
    return artifacts
