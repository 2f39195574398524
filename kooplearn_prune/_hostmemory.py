"""Host memory for recording buffers: faulted in up front on huge pages, reused across recorders.

A recording buffer is written one row per optimizer step, so every page it has not touched yet
costs a page fault inside the training loop. ``host_zeros`` returns an array whose pages are all
mapped before training: an anonymous mapping populated in one call (``MAP_POPULATE``) and advised
``MADV_HUGEPAGE`` (see ``_HUGE_FIRST`` for when huge pages are asked for before populating).

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
_lock = threading.Lock()


def host_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A C-order array of ``shape`` whose pages are mapped now (zeros when freshly mapped).

    Falls back to ``np.zeros`` for small arrays and where anonymous mappings are unsupported.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _MIN_POOLED or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.zeros(shape, dtype=dtype)
    region = _take(nbytes)
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


def _map(nbytes: int) -> mmap.mmap:
    """A fresh anonymous mapping of ``nbytes`` (rounded up to whole pages), populated."""
    size = -(-nbytes // _PAGE) * _PAGE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if hugepage is None or not _HUGE_FIRST:
        region = mmap.mmap(-1, size, flags=flags | populate)
        if not populate:
            _touch(region)
        _advise(region, hugepage)
        return region
    region = mmap.mmap(-1, size, flags=flags)
    _advise(region, hugepage)
    try:
        region.madvise(_MADV_POPULATE_WRITE)
    except OSError:  # older kernel: fault the pages in by writing one byte in each
        _touch(region)
    return region


def _advise(region: mmap.mmap, advice: int | None) -> None:
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError:
            pass


def _touch(region: mmap.mmap) -> None:
    pages = np.frombuffer(region, dtype=np.uint8)
    pages[::_PAGE] = 0
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
