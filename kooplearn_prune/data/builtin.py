"""The datasets that need no download: scikit-learn's 8x8 digits and a synthetic teacher."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import host_rng
from .dataset import (
    _TASKS,
    Dataset,
    _check_float_dtype,
    _check_fraction,
    _check_int,
    _check_scale,
    _check_seed,
    _check_xp,
    _finish,
    _scale_pixels,
    _subset,
)

__all__ = ["load_digits", "make_synthetic"]


def load_digits(
    *,
    seed: int | None = 0,
    test_size: float = 0.25,
    n_train: int | None = None,
    n_test: int | None = None,
    scale: str = "standardize",
    dtype: Any = "float32",
    xp: ModuleType | None = None,
) -> Dataset:
    """scikit-learn's 1797 bundled 8x8 digit images (no download), split and scaled.

    The split is stratified by class and seeded (``test_size`` of the samples go to the test
    split); ``n_train``/``n_test`` then keep a seeded random subset of each side. Pixels (0..16)
    are scaled as the module docstring explains. ``x``: ``(N, 64)``; ``input_shape = (1, 8, 8)``.
    """
    _check_seed(seed)
    test_size = _check_fraction(test_size, "test_size")
    _check_scale(scale)
    np_dtype = _check_float_dtype(dtype)
    xp = _check_xp(xp)
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    pixels = bunch.data.astype(np.uint8)  # the values are the integers 0..16
    labels = bunch.target.astype(np.int64)
    split_seed = seed if seed is not None else int(host_rng(None).integers(2**31 - 1))
    x_tr, x_te, y_tr, y_te = train_test_split(
        pixels, labels, test_size=test_size, stratify=labels, random_state=split_seed
    )
    train_rng, test_rng = host_rng(seed).spawn(2)
    keep_tr = _subset(len(y_tr), n_train, train_rng, "n_train", "digits training")
    keep_te = _subset(len(y_te), n_test, test_rng, "n_test", "digits test")
    x_tr, y_tr, x_te, y_te = x_tr[keep_tr], y_tr[keep_tr], x_te[keep_te], y_te[keep_te]
    x_tr, x_te, stats = _scale_pixels(x_tr, x_te, 16, scale, np_dtype)
    return _finish(
        "digits", x_tr, y_tr, x_te, y_te, xp,
        task="classification", n_classes=10, input_shape=(1, 8, 8),
        info={"seed": seed, "source": "sklearn.datasets.load_digits", **stats},
    )  # fmt: skip


def make_synthetic(
    *,
    task: str = "classification",
    n_samples: int = 1000,
    n_features: int = 20,
    n_classes: int | None = None,
    n_outputs: int | None = None,
    hidden: int | Sequence[int] = 32,
    noise: float = 0.0,
    test_size: float = 0.25,
    seed: int | None = 0,
    dtype: Any = "float32",
    xp: ModuleType | None = None,
) -> Dataset:
    """Teacher-student data: a random tanh network (the teacher) labels Gaussian inputs.

    Inputs ``x ~ N(0, I)`` of shape ``(n_samples, n_features)``. The teacher has hidden widths
    ``hidden`` and weights ``W ~ N(0, 1/fan_in)``, biases ``b ~ N(0, 0.1^2)``, all from the
    seeded host generator (kept, as NumPy arrays, in ``info["teacher"]``).

    * ``task="regression"``: ``y`` = teacher output ``(N, n_outputs)`` (default 1 output) plus
      Gaussian noise of standard deviation ``noise``.
    * ``task="classification"``: the teacher's ``n_classes`` outputs (default 3) are
      standardized per class over the samples (so every class gets a fair share), Gaussian
      noise of standard deviation ``noise`` is added, and ``y`` is the argmax (int64).

    A seeded random ``test_size`` fraction of the samples forms the test split.
    """
    if task not in _TASKS:
        raise ValueError(f"task={task!r} is unknown; choose one of {', '.join(_TASKS)}.")
    if task == "classification":
        if n_outputs is not None:
            raise ValueError("n_outputs is for task='regression'; use n_classes for classification")
        n_classes = 3 if n_classes is None else n_classes
        _check_int(n_classes, "n_classes", minimum=2)
        out_width = n_classes
    else:
        if n_classes is not None:
            raise ValueError("n_classes is for task='classification'; use n_outputs for regression")
        n_outputs = 1 if n_outputs is None else n_outputs
        _check_int(n_outputs, "n_outputs", minimum=1)
        out_width = n_outputs
    _check_int(n_samples, "n_samples", minimum=2)
    _check_int(n_features, "n_features", minimum=1)
    widths = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
    if not widths:
        raise ValueError("hidden must be a positive int or a non-empty sequence of them")
    for width in widths:
        _check_int(width, "hidden", minimum=1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    if not math.isfinite(noise):
        raise ValueError(f"noise must be finite, got {noise!r}")
    test_size = _check_fraction(test_size, "test_size")
    n_te = math.ceil(test_size * n_samples)
    if not 1 <= n_te <= n_samples - 1:
        raise ValueError(
            f"test_size={test_size} leaves an empty split of n_samples={n_samples}; "
            "use more samples or a test_size further from 0 and 1"
        )
    _check_seed(seed)
    np_dtype = _check_float_dtype(dtype)
    xp = _check_xp(xp)

    rng = host_rng(seed)
    fan_ins = (n_features, *widths)
    fan_outs = (*widths, out_width)
    teacher = [
        (rng.standard_normal((i, o)) / math.sqrt(i), 0.1 * rng.standard_normal(o))
        for i, o in zip(fan_ins, fan_outs, strict=True)
    ]
    x = rng.standard_normal((n_samples, n_features))
    h = x
    for k, (weight, bias) in enumerate(teacher):
        h = h @ weight + bias
        if k < len(teacher) - 1:
            h = np.tanh(h)
    if task == "classification":
        h = (h - h.mean(axis=0)) / np.where(h.std(axis=0) > 0, h.std(axis=0), 1.0)
        y = np.argmax(h + noise * rng.standard_normal(h.shape), axis=1).astype(np.int64)
    else:
        y = (h + noise * rng.standard_normal(h.shape)).astype(np_dtype)
    order = rng.permutation(n_samples)
    test_idx, train_idx = np.sort(order[:n_te]), np.sort(order[n_te:])
    x = x.astype(np_dtype)
    return _finish(
        "synthetic", x[train_idx], y[train_idx], x[test_idx], y[test_idx], xp,
        task=task, n_classes=n_classes if task == "classification" else None,
        input_shape=(n_features,),
        info={"seed": seed, "scale": "none", "hidden": widths, "noise": float(noise),
              "teacher": teacher},
        n_outputs=out_width,
    )  # fmt: skip
