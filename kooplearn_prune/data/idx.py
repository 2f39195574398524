"""MNIST and Fashion-MNIST: the four gzipped IDX files, downloaded once with ``pooch``,
hash-checked and cached (``default_cache_dir``, or the ``KOOPLEARN_PRUNE_DATA`` folder)."""

from __future__ import annotations

import gzip
import math
import os
import zlib
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

__all__ = ["DATA_ENV_VAR", "IDX_SOURCES", "IDXFormatError", "load_mnist", "load_fashion_mnist",
           "make_fetcher", "default_cache_dir", "read_idx"]


DATA_ENV_VAR = "KOOPLEARN_PRUNE_DATA"


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
