"""Snapshots larger than memory, or saved by many ranks, as one Dask array (docs/theory.md §5.2).

The passes of ``koopman.snapshots`` accept a Dask array chunked along the parameter axis: the
Gram matrix is the sum of the chunks' float64 products ``G = Σ_s W_s W_sᵀ`` (computed by Dask, one
chunk in memory per worker), and combinations ``Wᵀ z`` stay lazy Dask arrays, chunk by chunk. So
``KMD().fit(snapshots_from_files(paths))`` runs unchanged out of core. Dask is an optional extra
(``pip install kooplearn_prune[dask]``), imported only here.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["snapshots_from_files", "is_dask_array"]


def is_dask_array(array: Any) -> bool:
    """Whether ``array`` is a Dask array (checked by module name, without importing Dask)."""
    return type(array).__module__.split(".")[0] == "dask"


def _dask() -> Any:
    try:
        import dask
        import dask.array as da
    except ImportError as err:  # pragma: no cover - the test skips without Dask
        raise ImportError("out-of-core snapshots need Dask: pip install 'kooplearn_prune[dask]'"
                          ) from err
    return dask, da


def _npz_snapshot_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``snapshots`` member of a Trajectory ``.npz``, from its header."""
    with zipfile.ZipFile(path) as archive, archive.open("snapshots.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return shape, dtype


def _load_npz_snapshots(path: Path) -> np.ndarray:
    from ..trajectory import Trajectory  # checked load (manifest, checksums)

    return np.asarray(Trajectory.load(path, xp=np).snapshots)


def snapshots_from_files(paths: Sequence[str | os.PathLike]) -> Any:
    """One ``(m+1, n)`` Dask array from files that each hold some parameter columns, in order.

    ``paths``: per-rank ``.npy`` files (memory-mapped, read chunk by chunk) or ``Trajectory``
    ``.npz`` files (``Trajectory.save``; each read and checked whole when its chunk is needed).
    Every file must have the same number of rows (snapshots) and dtype; each is one chunk.
    """
    dask, da = _dask()
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("paths is empty: pass the files that hold the snapshots' columns")
    pieces, shapes = [], []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no snapshot file at {path}")
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
            shape, dtype = array.shape, array.dtype
            piece = da.from_array(array, chunks=array.shape if array.ndim == 2 else -1)
        elif path.suffix == ".npz":
            shape, dtype = _npz_snapshot_header(path)
            piece = da.from_delayed(dask.delayed(_load_npz_snapshots)(path), shape, dtype)
        else:
            raise ValueError(f"{path}: pass .npy (one array of columns) or .npz "
                             f"(Trajectory.save) files")
        if len(shape) != 2:
            raise ValueError(f"{path} holds shape {shape}; each file must hold (m+1, n_s) "
                             f"snapshot columns")
        shapes.append((path, shape, np.dtype(dtype)))
        pieces.append(piece)
    rows, dtype = shapes[0][1][0], shapes[0][2]
    for path, shape, piece_dtype in shapes[1:]:
        if shape[0] != rows or piece_dtype != dtype:
            raise ValueError(f"{path} holds {shape[0]} snapshots of {piece_dtype} but "
                             f"{shapes[0][0]} holds {rows} of {dtype}: every file must hold the "
                             f"same snapshots (rows) of the same dtype, split by columns")
    return da.concatenate(pieces, axis=1)
