"""The ``Dataset`` container, mini-batches, and the checks and scaling every loader shares.

``BatchIterator`` / ``iterate_batches`` cut ``(x, y)`` into mini-batches; each epoch's order is
drawn on the host and applied on the backend with ``xp.take``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import asarray, backend_namespace, host_rng, namespace_of

__all__ = ["Dataset", "BatchIterator", "iterate_batches"]


_SCALES = ("standardize", "unit", "none")
_TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split on the backend, with what a model needs to know about it.

    Shapes: ``x_train (N_train, n_features)``, ``x_test (N_test, n_features)``; ``y`` is
    ``(N,)`` int64 class labels for classification, ``(N, n_outputs)`` floats for regression
    (two-dimensional so it lines up with a network's ``(N, n_outputs)`` output in a loss).
    ``input_shape`` is the shape of one sample before flattening, e.g. ``(1, 8, 8)`` for an
    image (channels first) or ``(n_features,)`` for tabular data. ``info`` records how the data
    were made (seed, scaling statistics, source).
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    name: str
    task: str
    n_classes: int | None
    input_shape: tuple[int, ...]
    n_outputs: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int | np.random.Generator | None = None,
        drop_last: bool = False,
    ) -> BatchIterator:
        """A ``BatchIterator`` over the training split; iterate it once per epoch."""
        return BatchIterator(
            self.x_train, self.y_train, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def __repr__(self) -> str:
        kind = f"{self.n_classes} classes" if self.task == "classification" else "regression"
        return (
            f"Dataset({self.name!r}, {kind}, train x {tuple(self.x_train.shape)}, "
            f"test x {tuple(self.x_test.shape)}, input_shape={self.input_shape}, "
            f"dtype={self.x_train.dtype})"
        )


class BatchIterator:
    """Mini-batches ``(x[idx], y[idx])``: one pass over the data each time it is iterated.

    Each ``iter()`` starts a new epoch; with ``shuffle=True`` its order is a fresh permutation
    from one seeded host generator (``backend.host_rng(seed)``), so epochs differ from each
    other but the whole sequence repeats for the same seed, on every backend. The order moves
    to the backend once per epoch and rows are gathered with ``xp.take(x, idx, axis=0)``.

    ``x``: ``(N, ...)``; ``y``: ``(N, ...)`` or ``None`` (then batches are ``(xb, None)``).
    Every sample appears exactly once per epoch; with ``drop_last=True`` the final short batch
    is skipped (those samples are then left out of that epoch).
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int | np.random.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if not hasattr(x, "shape") or len(x.shape) < 1:
            raise TypeError("x must be an array with samples along axis 0")
        if y is not None and (not hasattr(y, "shape") or len(y.shape) < 1):
            raise TypeError("y must be an array with samples along axis 0, or None")
        n = int(x.shape[0])
        if y is not None and int(y.shape[0]) != n:
            raise ValueError(
                f"x and y must hold the same number of samples, got {n} and {int(y.shape[0])}"
            )
        if n == 0:
            raise ValueError("x holds no samples")
        _check_int(batch_size, "batch_size", minimum=1)
        if drop_last and batch_size > n:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {n} samples, so drop_last=True would "
                "yield no batch at all; use a smaller batch_size or drop_last=False"
            )
        if not isinstance(shuffle, bool) or not isinstance(drop_last, bool):
            raise TypeError("shuffle and drop_last must be True or False")
        self.xp = namespace_of(x, y)
        self.x, self.y = x, y
        self.n_samples = n
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rng = host_rng(seed)
        self.epoch = 0  # number of epochs started

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.n_samples // self.batch_size
        return -(-self.n_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        # The permutation is drawn here, not lazily, so epoch k always gets the k-th draw.
        self.epoch += 1
        order = None
        if self.shuffle:
            order = asarray(self.rng.permutation(self.n_samples), xp=self.xp)
        return self._batches(order)

    def _batches(self, order: Any) -> Iterator[tuple[Any, Any]]:
        xp, x, y, size = self.xp, self.x, self.y, self.batch_size
        for k in range(len(self)):
            start, stop = k * size, min((k + 1) * size, self.n_samples)
            if order is None:
                xb = x[start:stop, ...]
                yb = None if y is None else y[start:stop, ...]
            else:
                idx = order[start:stop]
                xb = xp.take(x, idx, axis=0)
                yb = None if y is None else xp.take(y, idx, axis=0)
            yield xb, yb


def iterate_batches(
    x: Any,
    y: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int | np.random.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Any, Any]]:
    """One epoch of mini-batches ``(xb, yb)``; see ``BatchIterator``.

    Pass a ``numpy.random.Generator`` as ``seed`` to get a new order on every call, or keep one
    ``BatchIterator`` and iterate it once per epoch.
    """
    return iter(BatchIterator(x, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last))


def _scale_pixels(
    x_train: np.ndarray, x_test: np.ndarray, pixel_max: int, scale: str, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Scale integer pixels as the module docstring says; statistics from ``x_train`` only."""
    if scale == "none":
        factor, offset, info = 1.0, 0.0, {"scale": "none"}
    elif scale == "unit":
        factor, offset, info = 1.0 / pixel_max, 0.0, {"scale": "unit", "pixel_max": pixel_max}
    else:
        # Exact float64 mean and variance from a histogram of the integer pixel values: cheap,
        # and no (N, features) float64 temporary for 60000 MNIST images.
        counts = np.bincount(x_train.ravel(), minlength=pixel_max + 1).astype(np.float64)
        values = np.arange(counts.size, dtype=np.float64) / pixel_max
        mean = float(counts @ values / counts.sum())
        std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
        std = std if std > 0 else 1.0  # a constant image set: centring is all we can do
        factor, offset = 1.0 / (pixel_max * std), mean / std
        info = {"scale": "standardize", "pixel_max": pixel_max, "mean": mean, "std": std}

    def apply(pixels: np.ndarray) -> np.ndarray:
        out = pixels.astype(dtype)  # scaled in place, in the target dtype
        out *= dtype.type(factor)
        out -= dtype.type(offset)
        return out

    return apply(x_train), apply(x_test), info


def _subset(n_available: int, n: int | None, rng: np.random.Generator, arg: str, what: str):
    """Indices of a seeded random subset of size ``n`` (all, in order, when ``n`` is None)."""
    if n is None:
        return np.arange(n_available)
    _check_int(n, arg, minimum=1)
    if n > n_available:
        raise ValueError(
            f"{arg}={n} exceeds the {n_available} {what} samples; pass {arg} <= {n_available} "
            f"or None for all of them"
        )
    return np.sort(rng.permutation(n_available)[:n])


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    xp: ModuleType,
    *,
    task: str,
    n_classes: int | None,
    input_shape: tuple[int, ...],
    info: dict[str, Any],
    n_outputs: int | None = None,
) -> Dataset:
    """Move the host arrays to ``xp`` and wrap them in a ``Dataset``."""
    return Dataset(
        x_train=asarray(x_train, xp=xp),
        y_train=asarray(y_train, xp=xp),
        x_test=asarray(x_test, xp=xp),
        y_test=asarray(y_test, xp=xp),
        name=name,
        task=task,
        n_classes=n_classes,
        input_shape=tuple(int(d) for d in input_shape),
        n_outputs=int(n_classes if n_outputs is None else n_outputs),
        info=info,
    )


def _check_int(value: Any, arg: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value}")


def _check_size_or_none(value: Any, arg: str) -> None:
    if value is not None:
        _check_int(value, arg, minimum=1)


def _check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be a non-negative integer or None, got {seed!r}")
    host_rng(seed)  # checks the sign


def _check_fraction(value: Any, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{arg} must be a float strictly between 0 and 1, got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{arg} must be strictly between 0 and 1, got {value!r}")
    return float(value)


def _check_scale(scale: Any) -> None:
    if scale not in _SCALES:
        raise ValueError(f"scale={scale!r} is unknown; choose one of {', '.join(_SCALES)}.")


def _check_float_dtype(dtype: Any) -> np.dtype:
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from err
    if np_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np_dtype


def _check_xp(xp: Any) -> ModuleType:
    if xp is None:
        return backend_namespace()
    if not hasattr(xp, "asarray") or not hasattr(xp, "take"):
        raise TypeError(
            f"xp must be an array namespace such as numpy or the result of "
            f"kooplearn_prune.backend.set_backend(...), got {xp!r}"
        )
    return xp
