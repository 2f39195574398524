"""Datasets and mini-batches: the first box of the data path (``kooplearn_prune/__init__.py``).

Every loader returns a ``Dataset``: flat inputs ``x`` of shape ``(N, n_features)`` and targets
``y`` on the current array backend, plus what a model needs to know (``task``, ``n_classes``,
``n_outputs``, and ``input_shape`` so a CNN can reshape the flat rows to ``(N, 1, H, W)``).
All preparation (splitting, subsetting, scaling, the synthetic teacher) happens on the host
with NumPy and one seeded generator, and the arrays move to the backend once at the end, so a
seed gives the same numbers on NumPy, CuPy and ``array_api_strict``.

* ``"digits"``: scikit-learn's bundled 8x8 digits (no download), a seeded stratified split.
* ``"mnist"``, ``"fashion_mnist"``: the four gzipped IDX files, downloaded once with ``pooch``,
  hash-checked and cached.
* ``"cifar10"``, ``"cifar100"``: the python-pickle archives, the same way (module ``cifar``);
  ``input_shape = (3, 32, 32)``.
* ``"synthetic"``: a random teacher network labels Gaussian inputs (regression or
  classification).

Image scaling (``scale="standardize"``, the default): pixels are divided by their largest
possible value (16 for digits, 255 for MNIST) to lie in [0, 1], then standardized with ONE mean
and ONE standard deviation computed over all pixels of the returned training split. A single
pair (rather than one per pixel) keeps the image intact for a CNN and never divides by the
near-zero spread of an always-blank border pixel; it still centres the inputs at 0 with unit
variance, which is what helps SGD. ``scale="unit"`` stops after [0, 1]; ``scale="none"`` keeps
the raw pixel values. The statistics are in ``Dataset.info`` (``x_unit = x * std + mean``).

The modules: ``dataset`` (``Dataset``, ``BatchIterator``, the shared checks and scaling),
``builtin`` (digits, synthetic), ``idx`` (MNIST and Fashion-MNIST files).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .builtin import load_digits, make_synthetic
from .cifar import CIFAR_SOURCES, CIFARFormatError, load_cifar10, load_cifar100
from .dataset import BatchIterator, Dataset, iterate_batches
from .idx import (
    DATA_ENV_VAR,
    IDX_SOURCES,
    IDXFormatError,
    default_cache_dir,
    load_fashion_mnist,
    load_mnist,
    make_fetcher,
    read_idx,
)

__all__ = [
    "DATASETS",
    "IDX_SOURCES",
    "DATA_ENV_VAR",
    "Dataset",
    "IDXFormatError",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "CIFAR_SOURCES",
    "CIFARFormatError",
    "make_synthetic",
    "make_fetcher",
    "default_cache_dir",
    "read_idx",
    "BatchIterator",
    "iterate_batches",
]


def load_dataset(name: str = "digits", **options: Any) -> Dataset:
    """Load a dataset by name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
    ``"cifar100"`` or ``"synthetic"``.

    ``options`` go to the matching loader (``load_digits``, ``load_mnist``,
    ``load_fashion_mnist``, ``load_cifar10``, ``load_cifar100``, ``make_synthetic``); see each
    for what it accepts. Every loader takes ``seed=``, ``dtype=`` and ``xp=`` (the array
    namespace; the current backend by default).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'digits', got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(f"name={name!r} is unknown; choose one of {', '.join(DATASETS)}.")
    loader = _LOADERS[key]
    accepted = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"load_dataset({key!r}) got unexpected option(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(accepted)}."
        )
    return loader(**options)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "synthetic": make_synthetic,
}


DATASETS = tuple(_LOADERS)
