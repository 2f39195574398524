"""Host memory for recording buffers: faulted in ahead of the loop, reused across recorders.

A recording buffer is written one row per optimizer step, so every page it has not touched yet
costs a page fault inside the training loop. ``host_zeros`` returns an array whose pages are all
mapped before the loop needs them: an anonymous mapping whose first 16 MiB are populated at once
and the rest by a background thread (``_map``), then advised ``MADV_HUGEPAGE`` (see
``_HUGE_FIRST`` for when huge pages are asked for before populating).

Mappings are pooled: when every array made from one is gone (the recorder, its trajectory and
any view of them), it returns to a pool, and the next ``host_zeros`` of a size it fits takes it
instead of mapping fresh memory, so a second recorder pays no allocation at all. A mapping is
never handed out while any array of it is alive, so two recorders never share rows. A reused
mapping is not zeroed again: rows a recorder has not filled hold unspecified values (the
recorders never read them). The pool keeps at most ``POOL_MAX_BYTES`` of free mappings;
``release_pooled_memory()`` gives them back to the system now.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import weakref

import numpy as np

__all__ = ["host_zeros", "release_pooled_memory", "pooled_bytes", "POOL_MAX_BYTES"]

_PAGE = mmap.PAGESIZE
_HUGE_PAGE = 2 << 20
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14; absent from the mmap module before Python 3.13
_MIN_POOLED = 1 << 20  # smaller buffers are plain np.zeros: cheap to make, not worth pooling


def _pool_limit() -> int:
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 8 << 30
    return min(2 << 30, physical // 8)


POOL_MAX_BYTES = _pool_limit()
_free: list[mmap.mmap] = []  # mappings no array refers to, oldest first
REUSE = True  # False: every host_zeros maps fresh memory (benchmarks measure a first recorder)
_lock = threading.RLock()  # re-entrant: a collection inside a locked block may give memory back


def host_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A C-order array of ``shape``, faulted in ahead of use (zeros when freshly mapped).

    Falls back to ``np.zeros`` for small arrays and where anonymous mappings are unsupported.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _MIN_POOLED or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.zeros(shape, dtype=dtype)
    region = _take(nbytes) if REUSE else None
    if region is None:
        try:
            region = _map(nbytes)
        except (OSError, ValueError):
            return np.zeros(shape, dtype=dtype)
    # ``lease`` is the base of every view of the array (NumPy collapses view chains onto it and
    # not beyond, as its own base is not an ndarray): it dies with the last of them.
    lease = np.frombuffer(region, dtype=np.uint8, count=nbytes)
    weakref.finalize(lease, _give_back, region)
    return lease.view(dtype).reshape(shape)


def _thp_setting(name: str) -> str:
    """The selected value of ``/sys/kernel/mm/transparent_hugepage/<name>`` ('' if unknown)."""
    try:
        with open(f"/sys/kernel/mm/transparent_hugepage/{name}") as fh:
            text = fh.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


# Asking for huge pages before faulting the buffer in is 4x faster (25 ms against 100 ms for
# 250 MB here) when 2 MiB blocks are free, but with defrag "madvise"/"always" the kernel compacts
# memory synchronously when they are not, measured at 0.4-0.7 s for the first 250 MB of a process
# on this project's CI machine. So: huge pages first only where faults never compact; elsewhere
# 4 KiB pages populated in one call, then advised so that khugepaged may merge them later.
_HUGE_FIRST = _thp_setting("enabled") in ("always", "madvise") and \
    _thp_setting("defrag") in ("defer", "never")


_SYNC_BYTES = 16 << 20  # populated before ``host_zeros`` returns; the rest in the background
_CHUNK_BYTES = 8 << 20


def _map(nbytes: int) -> mmap.mmap:
    """A fresh anonymous mapping of ``nbytes`` (rounded up to whole pages), being populated.

    The first ``_SYNC_BYTES`` are faulted in now, the rest by a background thread, front to back
    (``madvise(MADV_POPULATE_WRITE)`` through ctypes, which releases the GIL): the training loop
    fills the buffer from its first row, and a page it reaches first is simply faulted in by it.
    Where that is unavailable, everything is populated now.
    """
    size = -(-nbytes // _PAGE) * _PAGE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
    madvise = _libc_madvise()
    if madvise is None:
        region = mmap.mmap(-1, size, flags=flags | getattr(mmap, "MAP_POPULATE", 0))
        if not hasattr(mmap, "MAP_POPULATE"):
            _touch(region, 0, size)
        _advise(region, hugepage)
        return region
    region = mmap.mmap(-1, size, flags=flags)
    if _HUGE_FIRST:
        _advise(region, hugepage)
    now = min(size, _SYNC_BYTES)
    _populate(madvise, region, 0, now, touch=True)
    if now < size:
        threading.Thread(target=_populate, args=(madvise, region, now, size, False,
                                                 None if _HUGE_FIRST else hugepage),
                         name="kooplearn_prune-populate", daemon=True).start()
    elif not _HUGE_FIRST:
        _advise(region, hugepage)
    return region


def _libc_madvise():
    """libc's ``madvise`` through ctypes (Linux), or None."""
    global _MADVISE
    if _MADVISE is False:
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("not Linux")
            import ctypes

            function = ctypes.CDLL(None, use_errno=True).madvise
            function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            function.restype = ctypes.c_int
            _MADVISE = function
        except (OSError, AttributeError):
            _MADVISE = None
    return _MADVISE


_MADVISE = False  # not looked up yet


def _populate(madvise, region: mmap.mmap, start: int, stop: int, touch: bool,
              advice_after: int | None = None) -> None:
    """Fault in bytes ``[start, stop)`` of ``region``, one chunk at a time.

    Where the kernel cannot (before Linux 5.14), ``touch`` writes a zero into each page instead;
    the background thread passes False, as the buffer may already hold rows there.
    """
    view = np.frombuffer(region, dtype=np.uint8)  # keeps the mapping alive while we work
    address = view.ctypes.data
    for lo in range(start, stop, _CHUNK_BYTES):
        hi = min(stop, lo + _CHUNK_BYTES)
        if madvise(address + lo, hi - lo, _MADV_POPULATE_WRITE) != 0:  # kernel < 5.14
            if touch:
                _touch(region, lo, stop)
            break
    if advice_after is not None:
        madvise(address + start, stop - start, advice_after)
    del view


def _advise(region: mmap.mmap, advice: int | None) -> None:
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError:
            pass


def _touch(region: mmap.mmap, start: int, stop: int) -> None:
    """Fault in bytes ``[start, stop)`` by writing a zero into each page."""
    pages = np.frombuffer(region, dtype=np.uint8)
    pages[start:stop:_PAGE] = 0
    del pages


def _take(nbytes: int) -> mmap.mmap | None:
    """A pooled mapping of at least ``nbytes`` and at most twice that (the smallest), or None."""
    with _lock:
        fits = [r for r in _free if nbytes <= len(r) <= 2 * nbytes + _HUGE_PAGE]
        if not fits:
            return None
        region = min(fits, key=len)
        _free.remove(region)
        return region


def _give_back(region: mmap.mmap) -> None:
    """Called when the last array of ``region`` is gone: keep it for reuse within the limit."""
    # Mappings left out are dropped, not closed: the dying array may still hold its buffer, and
    # the mapping is unmapped when the last reference goes.
    with _lock:
        if len(region) > POOL_MAX_BYTES:
            return
        _free.append(region)
        while sum(len(r) for r in _free) > POOL_MAX_BYTES:
            del _free[0]


def pooled_bytes() -> int:
    """Bytes of free mappings the pool holds now."""
    with _lock:
        return sum(len(r) for r in _free)


def release_pooled_memory() -> int:
    """Unmap every free pooled mapping; returns the bytes given back to the system."""
    with _lock:
        freed = sum(len(r) for r in _free)
        _free.clear()
    return freed
