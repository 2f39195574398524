"""Recording a native model's training: the ``TrajectoryRecorder`` callback (docs/theory.md §2)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from ._hostmemory import host_zeros, release_pooled_memory
from ._rowfile import SPACE_FIX, RowFile, RowWriter, describe_size, npy_header
from .backend import is_numpy_namespace, to_numpy
from .layout import layout_of
from .metadata import TrainingMetadata
from .training import Callback
from .trajectory import Trajectory
from .window import (
    RecordingWindow,
    RowBuffer,
    StepWindow,
    WindowOwner,
    check_capacity,
    check_flag,
    weak_method,
)

__all__ = ["TrajectoryRecorder", "release_pooled_memory"]


class TrajectoryRecorder(WindowOwner, Callback):
    """Trainer callback storing θ_t (and optionally gradients and updates) every ``every`` steps.

    ``t`` counts optimizer steps taken, so ``θ_t`` is the parameter vector after ``t`` steps.
    Snapshots are taken at ``t = start, start + every, ...`` up to ``stop`` (inclusive), in steps,
    or in epochs with ``unit="epoch"`` (epoch ``e`` means ``t = e · steps_per_epoch``);
    ``stop=None`` records until the fit ends. ``every`` (the stride Δ of docs/theory.md §2) always
    counts optimizer steps. The window rules are those of ``TorchRecorder``
    (``kooplearn_prune.window``).

    Lifetime: the recorder waits until a ``Trainer.fit`` reaches its window; that fit owns it.
    Recording ends when the window ends, when the owning fit returns (or raises), or on
    ``detach()``. A later ``fit`` (say a fine-tune after pruning) leaves the trajectory untouched,
    with a warning when its steps fall inside the window: add a new recorder to record it.

    ``gradients[j]`` is the mini-batch gradient the optimizer used for the step that produced
    snapshot ``j`` (evaluated at ``θ_{t-1}``) and ``updates[j] = θ_t − θ_{t-1}``; for the snapshot
    taken when the fit starts (e.g. ``θ_0``) both rows are zero
    (``metadata.first_gradient_row = 1``). The buffer is allocated when the owning fit starts,
    with exactly the rows it needs, in backend memory (``storage="memory"``) or in on-disk
    ``.npy`` memmaps (``storage="disk"``) in ``directory`` (default: one temporary directory per
    recorder, which is yours to delete). ``capacity`` (rows) allocates it now instead, before
    training, so that a run that would not fit in memory fails at once and the training loop pays
    only the copies; the fit still grows it (once, at its start) if the window needs more rows.
    On disk the files' space is reserved when they are made, so a full disk is an ``OSError``
    naming the directory, the bytes needed and the bytes free, raised before the first step
    (with ``capacity``: here) or at a growth, which keeps the recorded rows. On disk the rows are
    written by a background thread (``_rowfile.RowWriter``); a failed write is raised at the next
    snapshot or when the fit ends. Host memory comes from ``_hostmemory.host_zeros``: faulted in
    before the loop needs it, and reused from a recorder whose buffers and trajectory are all
    gone (rows beyond ``len(self)`` may then hold old values; they are never part of a result).
    ``gram=True`` (memory only) streams every row into a ``koopman.streaming.GramAccumulator``:
    ``recorder.gram`` is then G of the recorded rows, ready for ``KMD().fit(..., gram=)``;
    ``gram="background"`` runs its passes in a worker thread (for a second core).
    """

    def __init__(self, model: Any, *, every: int = 1, start: int = 0, stop: int | None = None,
                 unit: str = "step", record_gradients: bool = False, record_updates: bool = False,
                 storage: str = "memory", directory: str | os.PathLike | None = None,
                 prunable: Any = None, capacity: int | None = None,
                 gram: bool | str = False) -> None:
        self.window = RecordingWindow(every, start, stop, unit)
        if not (isinstance(gram, bool) or gram == "background"):
            raise TypeError(f"gram must be True, False or 'background', got {gram!r}")
        if gram and storage != "memory":
            raise ValueError("gram=True streams rows held in memory: use storage='memory', or "
                             "compute the Gram matrix after training (KMD().fit(trajectory))")
        record_gradients = check_flag(record_gradients, "record_gradients")
        record_updates = check_flag(record_updates, "record_updates")
        if storage not in ("memory", "disk"):
            raise ValueError(f"storage must be 'memory' or 'disk', got {storage!r}")
        capacity = check_capacity(capacity)
        self.model = model
        self.layout = layout_of(model, prunable)
        self.params = [p for _, p in model.named_parameters()]
        self.record_gradients, self.record_updates = record_gradients, record_updates
        self.storage, self.directory = storage, directory
        names = ["snapshots"] + (["gradients"] if record_gradients else []) + \
            (["updates"] if record_updates else [])
        self._files: dict[str, RowFile] = {}  # storage="disk": the open file of each buffer
        new_buffer = weak_method(self._new_buffer)  # no cycle: buffers die with the recorder
        self._buffer = RowBuffer(names, new_buffer) if storage == "memory" else \
            RowBuffer(names, new_buffer, weak_method(self._release_file),
                      prepare=weak_method(self._check_space),
                      copy=weak_method(self._copy_file_rows))
        self.metadata = TrainingMetadata(every=every, framework="native")
        self._steps: StepWindow | None = None  # the window in steps, fixed by the owning fit
        self._state = "waiting"  # -> "recording" (inside the owning fit) -> "finished"
        self._detached = False
        xp = self.params[0].xp
        self._scratch: Any = None
        self._previous: np.ndarray | None = None  # storage="disk", updates: θ_{t-1} on the host
        self._writer: RowWriter | None = None  # storage="disk": writes rows in the background
        if storage == "disk":
            if not is_numpy_namespace(xp):
                self._scratch = xp.zeros((self.layout.size,), dtype=self.params[0].data.dtype)
            if record_updates:
                self._previous = np.zeros(self.layout.size, self._host_dtype())
            self._writer = RowWriter(self.layout.size, self._host_dtype())
        if capacity is not None:
            self._buffer.reserve(capacity)
        # gram=True: G = W Wᵀ updated block by block as rows arrive (koopman.streaming)
        self._gram: Any = None
        if gram:
            from .koopman.streaming import GramAccumulator  # the analysis layer, only when asked

            self._gram = GramAccumulator(self.layout.size, background=gram == "background")

    # ------------------------------------------------------------------ window and state
    # every, start, stop, unit and finished come from WindowOwner; recording ends when the
    # window is over, the owning fit returns, or on ``detach()``.

    def detach(self) -> TrajectoryRecorder:
        """End recording now; the rows recorded so far stay, later fits add none."""
        self._state, self._detached = "finished", True
        if self._writer is not None:
            self._writer.close()
        return self

    # ------------------------------------------------------------------ callbacks
    def on_fit_start(self, trainer: Any) -> None:
        end_of_fit = trainer.step + trainer.epochs_planned * trainer.steps_per_epoch
        if self._state != "waiting":  # "recording": the owning fit raised before its end
            self._state = "finished"
            self._warn_not_recorded(trainer.step, end_of_fit)
            return
        steps = self.window.steps(max(trainer.steps_per_epoch, 1))
        needed = steps.count(trainer.step, end_of_fit)
        if needed == 0:
            return  # the window lies beyond this fit: keep waiting
        self._buffer.reserve(needed)  # may raise (no memory, no disk space): nothing changed yet
        if self._gram is not None:  # blocks end just before the last row (one row left at the end)
            self._gram.expect(len(self._buffer) + needed)
        self._steps, self._state = steps, "recording"
        at_start = steps.wanted(trainer.step)
        self.metadata = replace(
            trainer.optimizer.training_metadata(), every=self.every,
            steps_per_epoch=trainer.steps_per_epoch or None, loss=trainer.loss_name,
            framework="native", device=_device_name(self.params[0].data),
            first_gradient_row=1 if at_start else 0)
        if at_start:
            self._record(trainer.step, before=None)

    def on_before_step(self, trainer: Any) -> None:
        if self.record_updates and self._state == "recording" and \
                self._steps.wanted(trainer.step + 1):
            # θ_{t-1} into the row of θ_t (on disk: a host row), made θ_t − θ_{t-1} by ``_record``
            if self.storage == "disk":
                self._flatten_to_host(self._previous)
            else:
                row = self._buffer.next_row()
                self.layout.flatten([p.data for p in self.params],
                                    out=self._buffer.arrays["updates"][row, :])

    def on_step_end(self, trainer: Any) -> None:
        if self._state == "recording" and self._steps.wanted(trainer.step):
            self._record(trainer.step, before=True)

    def on_fit_end(self, trainer: Any) -> None:
        if self._state == "recording":
            self._state = "finished"
        if self._writer is not None:
            self._writer.close()  # every row in its file; a failed write is raised here

    def _warn_not_recorded(self, step: int, end_of_fit: int) -> None:
        if self._detached or self._steps is None or not self._steps.count(step + 1, end_of_fit):
            return
        steps = self._buffer.steps
        done = f"steps {steps[0]}..{steps[-1]}, {len(steps)} snapshots" if steps else "no rows"
        warnings.warn(f"TrajectoryRecorder: recording ended with the fit that started it "
                      f"({done}); this fit (steps {step + 1}..{end_of_fit}) is not recorded and "
                      f"the trajectory is unchanged. Add a new TrajectoryRecorder to record it",
                      UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ storage
    @property
    def snapshots(self) -> Any:
        """The whole buffer of snapshots (rows beyond ``len(self)`` are unused)."""
        return self._synced()["snapshots"]

    @property
    def gradients(self) -> Any:
        return self._synced().get("gradients")

    @property
    def updates(self) -> Any:
        return self._synced().get("updates")

    def _synced(self) -> dict[str, Any]:
        """The buffers, with every row queued for the disk written (and write errors raised)."""
        if self._writer is not None:
            self._writer.flush()
        return self._buffer.arrays

    @property
    def steps(self) -> list[int]:
        """The step ``t`` of each recorded row."""
        return self._buffer.steps

    def _host_dtype(self) -> np.dtype:
        xp = self.params[0].xp
        return to_numpy(xp.zeros((1,), dtype=self.params[0].data.dtype)).dtype

    def _new_buffer(self, name: str, rows: int) -> Any:
        xp = self.params[0].xp
        dtype = self.params[0].data.dtype
        shape = (rows, self.layout.size)
        if self.storage == "memory":
            if is_numpy_namespace(xp):
                return host_zeros(shape, np.dtype(dtype))
            return xp.zeros(shape, dtype=dtype)
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="kooplearn_prune_traj_")
        os.makedirs(self.directory, exist_ok=True)
        row_file = RowFile(self.directory, f"{name}_", shape, self._host_dtype())
        self._files[row_file.array.filename] = row_file
        return row_file.array

    def _check_space(self, rows: int) -> None:
        """Before disk buffers of ``rows`` rows are made: fail now, naming the sizes, if they
        cannot fit in the free space."""
        self._writer.flush()  # before any file is copied or released
        directory = self.directory if self.directory is not None else tempfile.gettempdir()
        existing = os.path.abspath(directory)
        while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        dtype = self._host_dtype()
        per_file = len(npy_header((rows, self.layout.size), dtype)) + \
            rows * self.layout.size * dtype.itemsize
        needed = per_file * len(self._buffer.arrays)
        free = shutil.disk_usage(existing).free
        if needed > free:
            raise OSError(errno.ENOSPC, f"TrajectoryRecorder(storage='disk'): {rows} rows of "
                          f"{self.layout.size} parameters in {len(self._buffer.arrays)} file(s) "
                          f"need {describe_size(needed)} in {directory} but "
                          f"{describe_size(free)} are free there; {SPACE_FIX}")

    def _release_file(self, old: Any) -> None:
        row_file = self._files.pop(getattr(old, "filename", None) or "", None)
        if row_file is not None:
            row_file.close(remove=True)

    def _copy_file_rows(self, new: Any, old: Any, rows: int) -> None:
        self._files[new.filename].copy_rows_from(self._files[old.filename], rows)

    def _flatten_to_host(self, host: np.ndarray, source: str = "data") -> np.ndarray:
        """The flat parameters (or gradients) written into the host row ``host``."""
        arrays = [getattr(p, source) for p in self.params]
        if self._scratch is None:
            self.layout.flatten(arrays, out=host)
        else:  # device arrays: flatten on the device, copy the row to the host
            self.layout.flatten(arrays, out=self._scratch)
            host[:] = to_numpy(self._scratch)
        return host

    def _file(self, name: str) -> RowFile:
        return self._files[self._buffer.arrays[name].filename]

    def _record(self, t: int, before: bool | None) -> None:
        if self.storage == "disk":
            self._record_to_disk(t, before)
            return
        buffer = self._buffer
        row = buffer.next_row()
        arrays = buffer.arrays
        params = [p.data for p in self.params]
        self.layout.flatten(params, out=arrays["snapshots"][row, :])
        if self.record_gradients:
            if before is None or any(p.grad is None for p in self.params):
                arrays["gradients"][row, :] = 0.0
            else:
                self.layout.flatten([p.grad for p in self.params], out=arrays["gradients"][row, :])
        if self.record_updates:
            updates = arrays["updates"]
            if before is None:
                updates[row, :] = 0.0
            else:  # the row holds θ_{t-1} (``on_before_step``): make it θ_t − θ_{t-1}
                updates[row, :] = arrays["snapshots"][row, :] - updates[row, :]
        self._commit(t)

    def _record_to_disk(self, t: int, before: bool | None) -> None:
        """Each row copied into a free host row of the writer, which writes it in the background."""
        writer = self._writer
        row = self._buffer.next_row()  # may grow the files (after the writer has flushed)
        snap_index, snap = writer.slot()
        self._flatten_to_host(snap)
        if self.record_updates:  # computed before θ_t's slot is queued (and may be reused)
            index, host = writer.slot()
            if before is None:
                host[:] = 0
            else:
                np.subtract(snap, self._previous, out=host)
            writer.put(self._file("updates"), row, index)
        writer.put(self._file("snapshots"), row, snap_index)
        if self.record_gradients:
            index, host = writer.slot()
            if before is None or any(p.grad is None for p in self.params):
                host[:] = 0
            else:
                self._flatten_to_host(host, source="grad")
            writer.put(self._file("gradients"), row, index)
        self._commit(t)

    def _commit(self, t: int) -> None:
        self._buffer.commit(t)
        if self._gram is not None:
            self._gram.follow(self._buffer.filled("snapshots"))
        if self._steps.ended(t):
            self._state = "finished"

    # ------------------------------------------------------------------ result
    @property
    def gram(self) -> np.ndarray:
        """With ``gram=True``: the float64 Gram matrix of the recorded snapshots, streamed during
        training, for ``KMD().fit(recorder.trajectory(), gram=recorder.gram)`` (no extra pass)."""
        if self._gram is None:
            raise RuntimeError("this recorder does not stream the Gram matrix: pass "
                               "TrajectoryRecorder(..., gram=True), or let KMD().fit compute it")
        return self._gram.gram

    def __len__(self) -> int:
        return len(self._buffer)

    def trajectory(self) -> Trajectory:
        """The recorded window as a ``Trajectory`` (views of the buffer, no copy)."""
        if not len(self._buffer):
            raise RuntimeError("TrajectoryRecorder has recorded nothing yet: add it to "
                               "Trainer(callbacks=[...]) and check the window (start/stop/unit)")
        self._synced()
        buffer = self._buffer
        return Trajectory(buffer.filled("snapshots"), list(buffer.steps), self.layout,
                          gradients=buffer.filled("gradients"), updates=buffer.filled("updates"),
                          metadata=self.metadata)


def _device_name(array: Any) -> str:
    """Where ``array`` lives, spelled as torch would (``"cpu"``, ``"cuda:0"``)."""
    device = getattr(array, "device", None)
    if device is None:
        return "cpu"
    if type(device).__module__.startswith("cupy"):
        return f"cuda:{device.id}"
    name = str(device).lower()
    return "cpu" if "cpu" in name else name
