"""What both recorders share: the recording window and the growable row buffer (docs/theory.md §2).

``RecordingWindow`` is the user's request (``every``, ``start``, ``stop``, ``unit``), validated
once with the same messages for ``TrajectoryRecorder`` and ``TorchRecorder``; ``steps()`` turns it
into a ``StepWindow`` in optimizer steps, which answers ``wanted(t)`` and ``count(from_t, to_t)``.
``RowBuffer`` holds named ``(rows, n)`` arrays filled row by row: allocated exactly when the size
is known (``reserve``), doubled when a row does not fit (``next_row``), never dropping a row.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["RecordingWindow", "StepWindow", "RowBuffer", "WindowOwner", "check_capacity",
           "check_flag", "UNITS", "weak_method"]

UNITS = ("step", "epoch")
MIN_GROWTH_ROWS = 8  # the first growth of an unsized buffer


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class StepWindow:
    """``t = first, first + every, …`` up to ``last`` (inclusive; ``None``: no end), in steps."""

    first: int
    last: int | None
    every: int

    def wanted(self, t: int) -> bool:
        """Whether ``θ_t`` is a snapshot of the window."""
        return t >= self.first and (self.last is None or t <= self.last) \
            and (t - self.first) % self.every == 0

    def count(self, from_t: int, to_t: int) -> int:
        """How many wanted steps lie in ``[from_t, to_t]``."""
        lo = max(from_t, self.first)
        hi = to_t if self.last is None else min(to_t, self.last)
        if hi < lo:
            return 0
        return (hi - self.first) // self.every - -(-(lo - self.first) // self.every) + 1

    @property
    def rows(self) -> int | None:
        """Rows of the whole window, ``None`` when it has no end."""
        return None if self.last is None else self.count(self.first, self.last)

    def ended(self, t: int) -> bool:
        """Whether no step after ``t`` is wanted."""
        return self.last is not None and t >= self.last


@dataclass(frozen=True)
class RecordingWindow:
    """Snapshots at ``t = start, start + every, …`` up to ``stop`` inclusive (``None``: no end).

    ``start``/``stop`` count optimizer steps (``unit="step"``) or epochs (``unit="epoch"``:
    epoch ``e`` is ``t = e · steps_per_epoch``); ``every``, the stride Δ of docs/theory.md §2,
    always counts optimizer steps.
    """

    every: int = 1
    start: int = 0
    stop: int | None = None
    unit: str = "step"

    def __post_init__(self) -> None:
        if not _is_int(self.every) or self.every < 1:
            raise ValueError(f"every must be a positive integer (steps between snapshots), "
                             f"got {self.every!r}")
        if not _is_int(self.start) or self.start < 0:
            raise ValueError(f"start must be a non-negative integer, got {self.start!r}")
        if self.stop is not None and (not _is_int(self.stop) or self.stop < self.start):
            raise ValueError(f"stop must be None or an integer >= start={self.start}, "
                             f"got {self.stop!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be 'step' or 'epoch', got {self.unit!r}")

    def steps(self, steps_per_epoch: int | None = None) -> StepWindow:
        """The window in optimizer steps; ``unit="epoch"`` needs ``steps_per_epoch``."""
        scale = 1
        if self.unit == "epoch":
            if not _is_int(steps_per_epoch) or steps_per_epoch < 1:
                raise ValueError(f"unit='epoch' needs steps_per_epoch= (optimizer steps per "
                                 f"epoch, e.g. len(train_loader)), got {steps_per_epoch!r}")
            scale = steps_per_epoch
        return StepWindow(self.start * scale, None if self.stop is None else self.stop * scale,
                          self.every)


def check_capacity(capacity: Any) -> int | None:
    """``capacity`` (rows to preallocate) validated: ``None`` or a positive integer."""
    if capacity is not None and (not _is_int(capacity) or capacity < 1):
        raise ValueError(f"capacity must be None or a positive number of rows, got {capacity!r}")
    return capacity


def check_flag(value: Any, name: str) -> bool:
    """A boolean argument such as ``record_gradients``, validated."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class WindowOwner:
    """What both recorders say about their window: ``every``, ``start``, ``stop``, ``unit``.

    A recorder sets ``self.window`` (a ``RecordingWindow``) and ``self._state``; these read-only
    views and ``finished`` are then the same for the native and the torch recorder.
    """

    window: RecordingWindow
    _state: str

    @property
    def every(self) -> int:
        return self.window.every

    @property
    def start(self) -> int:
        return self.window.start

    @property
    def stop(self) -> int | None:
        return self.window.stop

    @property
    def unit(self) -> str:
        return self.window.unit

    @property
    def finished(self) -> bool:
        """True once recording has ended for good (see each recorder for when)."""
        return self._state == "finished"


class RowBuffer:
    """Named ``(rows, n)`` arrays filled row by row in lock-step; ``steps[j]`` is row ``j``'s t.

    ``allocate(name, rows)`` makes a zeroed array; ``release(old)`` (optional) frees one that was
    replaced, or a new one whose copy failed; ``prepare(rows)`` (optional) runs before a growth
    allocates anything (e.g. to check the free disk space) and may raise; ``copy(new, old, rows)``
    (optional) copies the first ``rows`` rows. Rows ``[0, len(self))`` are filled; growing copies
    them into the new arrays, and a growth that fails keeps them intact.
    """

    def __init__(self, names: Iterable[str], allocate: Callable[[str, int], Any],
                 release: Callable[[Any], None] | None = None, *,
                 prepare: Callable[[int], None] | None = None,
                 copy: Callable[[Any, Any, int], None] | None = None) -> None:
        self.arrays: dict[str, Any] = dict.fromkeys(names)
        self.capacity = 0
        self.steps: list[int] = []
        self._allocate, self._release = allocate, release
        self._prepare, self._copy = prepare, copy or _copy_rows

    def __len__(self) -> int:
        return len(self.steps)

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all (exactly ``rows`` if it must grow).

        One array at a time (the old one is freed before the next is allocated); if a step
        fails, every array still holds the filled rows and ``capacity`` is unchanged.
        """
        if rows <= self.capacity:
            return
        if self._prepare is not None:
            self._prepare(rows)
        kept = len(self.steps)
        for name, old in self.arrays.items():
            if old is not None and old.shape[0] >= rows:
                continue  # grown by an earlier reserve that failed on another array
            new = self._allocate(name, rows)
            if old is not None and kept:
                try:
                    self._copy(new, old, kept)
                except BaseException:
                    if self._release is not None:
                        self._release(new)
                    raise
            if old is not None and self._release is not None:
                self._release(old)
            self.arrays[name] = new
        self.capacity = rows

    def next_row(self) -> int:
        """The index of the next row to fill, doubling the capacity first when full."""
        row = len(self.steps)
        if row >= self.capacity:
            self.reserve(max(2 * self.capacity, MIN_GROWTH_ROWS))
        return row

    def commit(self, t: int) -> None:
        """Mark the row returned by ``next_row`` filled, with step ``t``."""
        self.steps.append(t)

    def filled(self, name: str) -> Any:
        """The filled rows of array ``name`` (a view), or ``None`` when it is not kept."""
        array = self.arrays.get(name)
        return None if array is None else array[: len(self.steps), :]


def weak_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (bound) called through a weak reference to its object.

    A recorder hands its own methods to its ``RowBuffer``; strong bound methods would make a
    reference cycle, so its buffers would outlive it until the garbage collector runs, and could
    not be reused by the next recorder (``kooplearn_prune._hostmemory``).
    """
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        return ref()(*args)

    return call


def _copy_rows(new: Any, old: Any, rows: int) -> None:
    new[:rows, :] = old[:rows, :]
