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
* ``"synthetic"``: a random teacher network labels Gaussian inputs (regression or
  classification).

Image scaling (``scale="standardize"``, the default): pixels are divided by their largest
possible value (16 for digits, 255 for MNIST) to lie in [0, 1], then standardized with ONE mean
and ONE standard deviation computed over all pixels of the returned training split. A single
pair (rather than one per pixel) keeps the image intact for a CNN and never divides by the
near-zero spread of an always-blank border pixel; it still centres the inputs at 0 with unit
variance, which is what helps SGD. ``scale="unit"`` stops after [0, 1]; ``scale="none"`` keeps
the raw pixel values. The statistics are in ``Dataset.info`` (``x_unit = x * std + mean``).

``BatchIterator`` / ``iterate_batches`` cut ``(x, y)`` into mini-batches; each epoch's order is
drawn on the host and applied on the backend with ``xp.take``.
"""

from __future__ import annotations

import gzip
import inspect
import math
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .backend import asarray, backend_namespace, host_rng, namespace_of

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
    "make_synthetic",
    "make_fetcher",
    "default_cache_dir",
    "read_idx",
    "BatchIterator",
    "iterate_batches",
]

DATA_ENV_VAR = "KOOPLEARN_PRUNE_DATA"

# The canonical files and their published MD5 sums (the ones torchvision checks against).
# The classic yann.lecun.com MNIST host is gone; torchvision's S3 mirror serves identical files.
IDX_SOURCES: dict[str, dict[str, Any]] = {
    "mnist": {
        "base_url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "files": {
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion_mnist": {
        "base_url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "files": {
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

_SCALES = ("standardize", "unit", "none")
_TASKS = ("classification", "regression")


# --------------------------------------------------------------------------------------------
# The container


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


# --------------------------------------------------------------------------------------------
# Entry point


def load_dataset(name: str = "digits", **options: Any) -> Dataset:
    """Load a dataset by name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"`` or ``"synthetic"``.

    ``options`` go to the matching loader (``load_digits``, ``load_mnist``,
    ``load_fashion_mnist``, ``make_synthetic``); see each for what it accepts. Every loader
    takes ``seed=``, ``dtype=`` and ``xp=`` (the array namespace; the current backend by
    default).
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


# --------------------------------------------------------------------------------------------
# digits


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


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


def load_mnist(
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
    """MNIST handwritten digits: 60000 train / 10000 test images of 28x28, 10 classes.

    Downloaded once (``make_fetcher`` explains the cache, ``base_url`` and ``known_hashes``),
    then read from the cache. ``n_train``/``n_test`` keep a seeded random subset (the subsets
    for a smaller ``n`` are contained in those for a larger one). ``x``: ``(N, 784)``;
    ``input_shape = (1, 28, 28)``.
    """
    return _load_idx_dataset(
        "mnist",
        seed=seed, n_train=n_train, n_test=n_test, scale=scale, dtype=dtype, cache_dir=cache_dir,
        base_url=base_url, known_hashes=known_hashes, progress=progress, xp=xp,
    )  # fmt: skip


def load_fashion_mnist(
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
    """Fashion-MNIST (Zalando article images): the same format and sizes as ``load_mnist``."""
    return _load_idx_dataset(
        "fashion_mnist",
        seed=seed, n_train=n_train, n_test=n_test, scale=scale, dtype=dtype, cache_dir=cache_dir,
        base_url=base_url, known_hashes=known_hashes, progress=progress, xp=xp,
    )  # fmt: skip


def default_cache_dir() -> Path:
    """Where downloads are kept: ``$KOOPLEARN_PRUNE_DATA`` if set, else the OS cache folder."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("kooplearn_prune"))


def make_fetcher(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    known_hashes: Mapping[str, str] | None = None,
) -> Any:
    """The ``pooch.Pooch`` that downloads and caches the IDX files of ``name``.

    Files go to ``<cache_dir>/<name>/`` (``cache_dir`` defaults to ``default_cache_dir()``).
    ``base_url`` replaces the canonical host (a mirror, or a local server in tests).
    ``known_hashes`` maps file names to hashes in pooch's form (``"md5:..."``,
    ``"sha256:..."``; a bare hex string is SHA-256) and replaces the published ones for those
    files. Creating the fetcher touches neither the disk nor the network.
    """
    import pooch

    if name not in IDX_SOURCES:
        raise ValueError(f"name={name!r} has no IDX files; choose one of {', '.join(IDX_SOURCES)}.")
    source = IDX_SOURCES[name]
    registry = dict(source["files"])
    if known_hashes is not None:
        if not isinstance(known_hashes, Mapping):
            raise TypeError("known_hashes must be a mapping {file name: hash}")
        unknown = sorted(set(known_hashes) - set(registry))
        if unknown:
            raise ValueError(
                f"known_hashes names unknown file(s) {unknown}; the files of {name} are "
                f"{', '.join(registry)}."
            )
        for fname, digest in known_hashes.items():
            if not isinstance(digest, str) or not digest.strip():
                raise ValueError(
                    f"known_hashes[{fname!r}] must be a hash string such as 'md5:<hex>', "
                    f"got {digest!r}"
                )
            registry[fname] = digest.strip()
    if base_url is None:
        base_url = source["base_url"]
    elif not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return pooch.create(path=root / name, base_url=base_url, registry=registry)


def _load_idx_dataset(
    name: str,
    *,
    seed: int | None,
    n_train: int | None,
    n_test: int | None,
    scale: str,
    dtype: Any,
    cache_dir: str | os.PathLike | None,
    base_url: str | None,
    known_hashes: Mapping[str, str] | None,
    progress: bool,
    xp: ModuleType | None,
) -> Dataset:
    _check_seed(seed)
    _check_size_or_none(n_train, "n_train")
    _check_size_or_none(n_test, "n_test")
    _check_scale(scale)
    np_dtype = _check_float_dtype(dtype)
    xp = _check_xp(xp)
    fetcher = make_fetcher(name, cache_dir=cache_dir, base_url=base_url, known_hashes=known_hashes)
    paths = {fname: _fetch(fetcher, fname, name, progress) for fname in fetcher.registry}
    x_tr, y_tr = _images_and_labels(
        paths["train-images-idx3-ubyte.gz"], paths["train-labels-idx1-ubyte.gz"], name
    )
    x_te, y_te = _images_and_labels(
        paths["t10k-images-idx3-ubyte.gz"], paths["t10k-labels-idx1-ubyte.gz"], name
    )
    train_rng, test_rng = host_rng(seed).spawn(2)
    keep_tr = _subset(len(y_tr), n_train, train_rng, "n_train", f"{name} training")
    keep_te = _subset(len(y_te), n_test, test_rng, "n_test", f"{name} test")
    height, width = x_tr.shape[1:]
    x_tr = x_tr[keep_tr].reshape(len(keep_tr), -1)
    x_te = x_te[keep_te].reshape(len(keep_te), -1)
    x_tr, x_te, stats = _scale_pixels(x_tr, x_te, 255, scale, np_dtype)
    return _finish(
        name, x_tr, y_tr[keep_tr], x_te, y_te[keep_te], xp,
        task="classification", n_classes=10, input_shape=(1, height, width),
        info={"seed": seed, "source": fetcher.base_url, "cache": str(fetcher.abspath), **stats},
    )  # fmt: skip


def _fetch(fetcher: Any, fname: str, name: str, progress: bool) -> Path:
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=bool(progress), timeout=60)
    url = fetcher.get_url(fname)
    try:
        return Path(fetcher.fetch(fname, downloader=downloader))
    except ValueError as err:  # pooch's hash mismatch; it has already deleted the download
        raise ValueError(
            f"{name}: {fname} downloaded from {url} does not match its known hash "
            f"{fetcher.registry[fname]}; the download was discarded, so {fetcher.abspath} "
            f"holds no copy of it. The mirror may serve a different file: check base_url, or "
            f"pass known_hashes for a trusted mirror. (pooch: {err})"
        ) from err
    except OSError as err:  # requests' connection and HTTP errors derive from OSError
        raise OSError(
            f"{name}: could not download {fname} from {url} ({err}). Check the network or "
            f"base_url, or place the file in {fetcher.abspath} yourself."
        ) from err


def _images_and_labels(images_path: Path, labels_path: Path, name: str) -> tuple[Any, Any]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXFormatError(
            f"{images_path}: expected uint8 images of shape (N, height, width), got "
            f"{images.dtype} {images.shape}; delete the file to download it again."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXFormatError(
            f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} "
            f"{labels.shape}; delete the file to download it again."
        )
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{name}: {images_path.name} has {images.shape[0]} images but {labels_path.name} "
            f"has {labels.shape[0]} labels."
        )
    if labels.size and int(labels.max()) >= 10:
        raise IDXFormatError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# IDX files

# IDX type codes (third byte of the magic number) and their big-endian NumPy types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXFormatError(ValueError):
    """A file is not a valid (optionally gzipped) IDX file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a host NumPy array of its stored shape.

    IDX layout: two zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the values in C order. Anything else raises
    ``IDXFormatError`` naming the file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXFormatError(f"{path}: damaged gzip data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path}: not an IDX file (the magic number must start with 0x0000)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX type code 0x{type_code:02X}")
    if ndim == 0:
        raise IDXFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXFormatError(
            f"{path}: header promises shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header} bytes"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# synthetic teacher-student data


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


# --------------------------------------------------------------------------------------------
# Mini-batches


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


# --------------------------------------------------------------------------------------------
# Shared helpers


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


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "synthetic": make_synthetic,
}
DATASETS = tuple(_LOADERS)
