"""On-disk row buffers that fail as exceptions: ``.npy`` files reserved in full before use.

``TrajectoryRecorder(storage="disk")`` keeps each buffer (snapshots, gradients, updates) in a
``RowFile``: its blocks are allocated when it is made (``posix_fallocate``, or zeros written), so
a full disk is an ``OSError`` naming the path and the sizes before training, never a ``SIGBUS``
at a write through a memory map that finds no free block. ``RowWriter`` writes the rows from a
background thread, so the training loop pays only the copy into a host row.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import queue
import shutil
import tempfile
import threading
import weakref
from typing import Any

import numpy as np

from ._hostmemory import host_zeros

__all__ = ["RowFile", "RowWriter", "npy_header", "SPACE_FIX", "describe_size"]

SPACE_FIX = ("free space there, pass directory= on a larger disk, or record fewer rows "
             "(every=, start=, stop=, capacity=)")
_COPY_CHUNK = 1 << 24
_NO_SPACE = tuple(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n))


def describe_size(nbytes: int) -> str:
    """``"5791368 bytes (5.5 MiB)"``."""
    return f"{nbytes} bytes ({nbytes / 2**20:.1f} MiB)"


def npy_header(shape: tuple[int, int], dtype: np.dtype) -> bytes:
    """The ``.npy`` header (format 1.0) of a C-order array, padded as NumPy pads it."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    return out.getvalue()


class RowFile:
    """A ``.npy`` file of ``(rows, n)`` whose blocks are reserved on disk before it is used.

    ``posix_fallocate`` (or, where unsupported, writing zeros) makes a full disk an ``OSError``
    here, naming the path and the sizes, instead of a ``SIGBUS`` at a later write through the
    mapping. Rows are written with ``pwrite`` (a failing device is an ``OSError`` too); ``array``
    is a read-write ``np.memmap`` of the same file, which sees every row written.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str, shape: tuple[int, int],
                 dtype: np.dtype) -> None:
        header = npy_header(shape, dtype)
        self.offset, self.row_bytes = len(header), shape[1] * dtype.itemsize
        size = self.offset + shape[0] * self.row_bytes
        fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=directory)
        try:
            _reserve(fd, size, self.path)
            _pwrite_all(fd, header, 0)
            self.array = np.memmap(self.path, dtype=dtype, mode="r+", offset=self.offset,
                                   shape=shape)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    def write_row(self, row: int, values: np.ndarray) -> None:
        _pwrite_all(self.fd, values, self.offset + row * self.row_bytes)

    def copy_rows_from(self, other: RowFile, rows: int) -> None:
        """Rows ``[0, rows)`` of ``other`` into this file (in the kernel where it can)."""
        done, total = 0, rows * self.row_bytes
        copy_range = getattr(os, "copy_file_range", None)
        while done < total:
            count = min(_COPY_CHUNK, total - done)
            src, dst = other.offset + done, self.offset + done
            got = 0
            if copy_range is not None:
                try:
                    got = copy_range(other.fd, self.fd, count, src, dst)
                except OSError as err:
                    if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                         errno.EOPNOTSUPP, errno.EBADF):
                        raise
                    copy_range = None
            if not got:
                data = _pread(other.fd, count, src)
                if len(data) != count:
                    raise OSError(errno.EIO, f"{other.path}: short read while growing the buffer")
                _pwrite_all(self.fd, data, dst)
                got = count
            done += got

    def close(self, remove: bool = False) -> None:
        """Close the file (its mapping stays valid while referenced); optionally delete it."""
        self._closer()
        if remove:
            with contextlib.suppress(OSError):
                os.remove(self.path)


class RowWriter:
    """Rows written into ``RowFile``s by one background thread, from a ring of host rows.

    ``slot()`` hands the caller a free host row (waiting for the writer when all ``slots`` are
    queued: rows are never dropped); the caller fills it and ``put``s it with its file and row
    index. The writer thread ``pwrite``s it (the system call releases the GIL, so it overlaps the
    training step) and frees the slot. A write that fails is raised by the next ``slot``,
    ``put`` or ``flush``, and no later row is written. ``flush()`` waits until every queued row
    is in its file; ``close()`` flushes and ends the thread (a later ``slot`` starts a new one).
    """

    def __init__(self, n: int, dtype: np.dtype, slots: int = 8) -> None:
        self._rows = host_zeros((slots, n), dtype)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(slots):
            self._free.put(index)
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def slot(self) -> tuple[int, np.ndarray]:
        """A free host row ``(index, row)`` to fill and ``put``."""
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(
                target=_write_rows, args=(self._jobs, self._free, self._rows, self._errors),
                name="kooplearn_prune-row-writer", daemon=True)
            self._thread.start()
            weakref.finalize(self, self._jobs.put, None)  # ends the thread with the writer
        index = self._free.get()
        return index, self._rows[index]

    def put(self, row_file: RowFile, row: int, index: int) -> None:
        """Queue host row ``index`` for row ``row`` of ``row_file``."""
        self._jobs.put((row_file, row, index))
        self._raise_error()

    def flush(self) -> None:
        """Wait until every queued row is written; raise the first failed write."""
        if self._thread is not None:
            self._jobs.join()
        self._raise_error()

    def close(self) -> None:
        """Flush, then end the writer thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._errors:
            raise self._errors[0]


def _write_rows(jobs: queue.Queue, free: queue.SimpleQueue, rows: np.ndarray,
                errors: list[BaseException]) -> None:
    while True:
        job = jobs.get()
        try:
            if job is None:
                return
            row_file, row, index = job
            if not errors:
                try:
                    row_file.write_row(row, rows[index])
                except BaseException as err:  # noqa: BLE001 - handed to the training thread
                    errors.append(err)
            free.put(index)
        finally:
            jobs.task_done()


def _reserve(fd: int, size: int, path: str) -> None:
    """Allocate ``size`` bytes of disk for ``fd`` for real, or raise an ``OSError`` naming it."""
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except AttributeError:  # not on this platform (e.g. macOS)
            _write_zeros(fd, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            _write_zeros(fd, size)
    except OSError as err:
        if err.errno not in _NO_SPACE:
            raise OSError(err.errno, f"TrajectoryRecorder(storage='disk'): cannot allocate "
                          f"{describe_size(size)} for {path}: {err.strerror}") from err
        free = shutil.disk_usage(os.path.dirname(path) or ".").free
        raise OSError(err.errno, f"TrajectoryRecorder(storage='disk'): no space for {path}: it "
                      f"needs {describe_size(size)} and {describe_size(free)} are free there; "
                      f"{SPACE_FIX}") from err


def _write_zeros(fd: int, size: int) -> None:
    zeros = bytes(min(size, _COPY_CHUNK))
    for start in range(0, size, len(zeros) or 1):
        _pwrite_all(fd, memoryview(zeros)[:min(len(zeros), size - start)], start)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:  # Windows
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view, offset = view[written:], offset + written


def _pread(fd: int, count: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows
    return os.read(fd, count)
