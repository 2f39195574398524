"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the "python version" archives from the canonical
source, downloaded once with ``pooch``, md5-checked against the published sums and cached
(``default_cache_dir``, or the ``KOOPLEARN_PRUNE_DATA`` folder), read without extracting.

Each batch in the archive is a pickled dict whose ``data`` is a ``uint8`` array ``(N, 3072)``:
1024 red, then 1024 green, then 1024 blue values, each a 32x32 image in row-major order, i.e.
one image in ``(channel, height, width)`` order. The rows are returned as they are, so
``x.reshape(N, 3, 32, 32)`` gives NCHW images (``input_shape = (3, 32, 32)``), scaled as every
image loader of the package scales pixels (``kooplearn_prune.data``: one mean and one standard
deviation over the training split). The pickles are read with an unpickler that accepts only
NumPy arrays, lists, numbers and strings: an archive that asks for anything else is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import host_rng
from .dataset import (
    Dataset,
    _check_float_dtype,
    _check_scale,
    _check_seed,
    _check_size_or_none,
    _check_xp,
    _finish,
    _scale_pixels,
    _subset,
)
from .idx import _fetch, default_cache_dir

__all__ = ["CIFAR_SOURCES", "CIFARFormatError", "load_cifar10", "load_cifar100"]

_BASE_URL = "https://www.cs.toronto.edu/~kriz/"

#: Archive, published md5 (https://www.cs.toronto.edu/~kriz/cifar.html), folder inside it,
#: training and test members, and the label key(s) of each dataset.
CIFAR_SOURCES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "hash": "md5:c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "labels": {"fine": ("labels", "label_names", 10)},
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "hash": "md5:eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "labels": {"fine": ("fine_labels", "fine_label_names", 100),
                   "coarse": ("coarse_labels", "coarse_label_names", 20)},
    },
}

# The globals a CIFAR pickle needs (NumPy's array reconstruction; protocol-2 bytes).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class CIFARFormatError(ValueError):
    """A CIFAR archive or batch is not in the published format."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CIFARFormatError(f"the batch asks for {module}.{name}, which a CIFAR batch "
                                   f"never holds; refusing to unpickle it")
        if module == "numpy.core.multiarray":  # NumPy 2 moved it to numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_pickle(archive: tarfile.TarFile, member: str, path: Path) -> dict[str, Any]:
    try:
        handle = archive.extractfile(member)
    except KeyError:
        handle = None
    if handle is None:
        raise CIFARFormatError(f"{path}: the archive has no file {member!r}; delete it to "
                               f"download it again")
    try:
        batch = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise CIFARFormatError(f"{path}: {member} is not a readable pickled batch ({err})") from err
    if not isinstance(batch, dict):
        raise CIFARFormatError(f"{path}: {member} holds a {type(batch).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _images_and_labels(archive: tarfile.TarFile, members: list[str], label_key: str,
                       n_classes: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for member in members:
        batch = _read_pickle(archive, member, path)
        if "data" not in batch or label_key not in batch:
            raise CIFARFormatError(f"{path}: {member} lacks 'data' or {label_key!r} (has "
                                   f"{sorted(batch)})")
        data = np.asarray(batch["data"])
        label = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise CIFARFormatError(f"{path}: {member} data must be uint8 (N, 3072), got "
                                   f"{data.dtype} {data.shape}")
        if label.shape != (data.shape[0],):
            raise CIFARFormatError(f"{path}: {member} has {data.shape[0]} images but "
                                   f"{label.size} labels")
        if label.size and (label.min() < 0 or label.max() >= n_classes):
            raise CIFARFormatError(f"{path}: {member} labels must lie in 0..{n_classes - 1}")
        images.append(data)
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def _fetcher(name: str, cache_dir: Any, base_url: str | None,
             known_hashes: Mapping[str, str] | None) -> Any:
    import pooch

    source = CIFAR_SOURCES[name]
    registry = {source["archive"]: source["hash"]}
    if known_hashes is not None:
        if not isinstance(known_hashes, Mapping):
            raise TypeError("known_hashes must be a mapping {file name: hash}")
        unknown = sorted(set(known_hashes) - set(registry))
        if unknown:
            raise ValueError(f"known_hashes names unknown file(s) {unknown}; the file of {name} "
                             f"is {source['archive']}.")
        for fname, digest in known_hashes.items():
            if not isinstance(digest, str) or not digest.strip():
                raise ValueError(f"known_hashes[{fname!r}] must be a hash string such as "
                                 f"'md5:<hex>', got {digest!r}")
            registry[fname] = digest.strip()
    if base_url is None:
        base_url = _BASE_URL
    elif not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return pooch.create(path=root / name, base_url=base_url, registry=registry)


def _load_cifar(name: str, labels: str, *, seed: int | None, n_train: int | None,
                n_test: int | None, scale: str, dtype: Any, cache_dir: Any,
                base_url: str | None, known_hashes: Mapping[str, str] | None, progress: bool,
                xp: ModuleType | None) -> Dataset:
    source = CIFAR_SOURCES[name]
    if labels not in source["labels"]:
        raise ValueError(f"labels={labels!r} must be one of {', '.join(source['labels'])} for "
                         f"{name}")
    _check_seed(seed)
    _check_size_or_none(n_train, "n_train")
    _check_size_or_none(n_test, "n_test")
    _check_scale(scale)
    np_dtype = _check_float_dtype(dtype)
    xp = _check_xp(xp)
    fetcher = _fetcher(name, cache_dir, base_url, known_hashes)
    path = _fetch(fetcher, source["archive"], name, progress)
    label_key, names_key, n_classes = source["labels"][labels]
    train, test = ([f"{source['folder']}/{m}" for m in source[side]] for side in ("train", "test"))
    try:
        with tarfile.open(path, "r:gz") as archive:
            x_tr, y_tr = _images_and_labels(archive, train, label_key, n_classes, path)
            x_te, y_te = _images_and_labels(archive, test, label_key, n_classes, path)
            meta = _read_pickle(archive, f"{source['folder']}/{source['meta']}", path)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CIFARFormatError(f"{path}: not a readable tar.gz archive ({err}); delete it to "
                               f"download it again") from err
    train_rng, test_rng = host_rng(seed).spawn(2)
    keep_tr = _subset(len(y_tr), n_train, train_rng, "n_train", f"{name} training")
    keep_te = _subset(len(y_te), n_test, test_rng, "n_test", f"{name} test")
    x_tr, x_te, stats = _scale_pixels(x_tr[keep_tr], x_te[keep_te], 255, scale, np_dtype)
    return _finish(
        name, x_tr, y_tr[keep_tr], x_te, y_te[keep_te], xp,
        task="classification", n_classes=n_classes, input_shape=(3, 32, 32),
        info={"seed": seed, "source": fetcher.base_url, "cache": str(fetcher.abspath),
              "labels": labels, "label_names": [str(n) for n in meta.get(names_key, [])],
              **stats},
    )  # fmt: skip


def load_cifar10(
    *,
    seed: int | None = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    scale: str = "standardize",
    dtype: Any = "float32",
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    known_hashes: Mapping[str, str] | None = None,
    progress: bool = True,
    xp: ModuleType | None = None,
) -> Dataset:
    """CIFAR-10: 50000 train / 10000 test colour images of 32x32, 10 classes.

    One download of ``cifar-10-python.tar.gz`` (163 MB), checked against its published md5;
    ``base_url`` (a mirror) and ``known_hashes`` (``{archive name: "md5:..."}``) as for
    ``load_mnist``. ``n_train``/``n_test`` keep a seeded random subset. ``x``: ``(N, 3072)``,
    each row an image in CHW order; ``input_shape = (3, 32, 32)``; ``info["label_names"]``.
    """
    return _load_cifar(
        "cifar10", "fine", seed=seed, n_train=n_train, n_test=n_test, scale=scale, dtype=dtype,
        cache_dir=cache_dir, base_url=base_url, known_hashes=known_hashes, progress=progress,
        xp=xp,
    )


def load_cifar100(
    *,
    labels: str = "fine",
    seed: int | None = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    scale: str = "standardize",
    dtype: Any = "float32",
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    known_hashes: Mapping[str, str] | None = None,
    progress: bool = True,
    xp: ModuleType | None = None,
) -> Dataset:
    """CIFAR-100: the same images as ``load_cifar10``'s format, 100 fine classes.

    ``labels="fine"`` (100 classes, the default) or ``"coarse"`` (the 20 superclasses). One
    download of ``cifar-100-python.tar.gz`` (161 MB), md5-checked; other options as
    ``load_cifar10``.
    """
    return _load_cifar(
        "cifar100", labels, seed=seed, n_train=n_train, n_test=n_test, scale=scale, dtype=dtype,
        cache_dir=cache_dir, base_url=base_url, known_hashes=known_hashes, progress=progress,
        xp=xp,
    )
