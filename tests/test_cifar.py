"""CIFAR-10 and CIFAR-100 loaders, against small archives in the real format on a loopback server.

Each archive is written by the test: a ``tar.gz`` of pickled batches (``data`` uint8
``(N, 3072)``, ``labels`` or ``fine_labels``/``coarse_labels``, and the meta file), laid out as
``cifar-10-batches-py/`` and ``cifar-100-python/`` are.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import test_data

from kooplearn_prune.data import (
    CIFAR_SOURCES,
    CIFARFormatError,
    load_cifar10,
    load_cifar100,
    load_dataset,
)

# the fixtures of test_data: no network but the loopback interface, and a loopback file server
_no_network = test_data._no_network
server = test_data.server


def batch(rng, n, label_keys, n_classes):
    out = {"batch_label": "a test batch", "filenames": [f"img_{i}.png" for i in range(n)],
           "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
    for key, k in zip(label_keys, n_classes):
        out[key] = [int(v) for v in rng.integers(0, k, size=n)]
    return out


def write_archive(path: Path, folder: str, members: dict[str, dict]) -> str:
    """A tar.gz of pickled dicts (protocol 2, as the published files); its md5 in pooch's form."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def fake_cifar10(root: Path, seed: int = 0, per_batch: int = 4, n_test: int = 6):
    rng = np.random.default_rng(seed)
    members = {f"data_batch_{i}": batch(rng, per_batch, ["labels"], [10]) for i in range(1, 6)}
    members["test_batch"] = batch(rng, n_test, ["labels"], [10])
    members["batches.meta"] = {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                               "dog", "frog", "horse", "ship", "truck"],
                               "num_cases_per_batch": per_batch, "num_vis": 3072}
    digest = write_archive(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    return members, digest


def fake_cifar100(root: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys, sizes = ["fine_labels", "coarse_labels"], [100, 20]
    members = {"train": batch(rng, 12, keys, sizes), "test": batch(rng, 5, keys, sizes),
               "meta": {"fine_label_names": [f"fine{i}" for i in range(100)],
                        "coarse_label_names": [f"coarse{i}" for i in range(20)]}}
    digest = write_archive(root / "cifar-100-python.tar.gz", "cifar-100-python", members)
    return members, digest


def test_published_hashes_are_md5_of_the_canonical_archives():
    assert CIFAR_SOURCES["cifar10"]["hash"] == "md5:c58f30108f718f92721af3b95e74349a"
    assert CIFAR_SOURCES["cifar100"]["hash"] == "md5:eb9058c3a382ffc7106e4002c42a8d85"


def test_cifar10_reads_the_real_format_then_uses_the_cache(server, tmp_path):
    members, digest = fake_cifar10(server.root)
    options = dict(cache_dir=tmp_path / "cache", base_url=server.url, progress=False,
                   known_hashes={"cifar-10-python.tar.gz": digest}, scale="none")
    data = load_cifar10(**options)
    train = np.concatenate([members[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    labels = np.concatenate([members[f"data_batch_{i}"]["labels"] for i in range(1, 6)])
    assert data.x_train.shape == (20, 3072) and data.x_train.dtype == np.float32
    assert data.input_shape == (3, 32, 32) and data.n_classes == 10
    assert np.array_equal(data.x_train, train.astype(np.float32))
    assert np.array_equal(data.y_train, labels) and data.y_train.dtype == np.int64
    assert np.array_equal(data.x_test, members["test_batch"]["data"].astype(np.float32))
    # row = 1024 red, 1024 green, 1024 blue values: NCHW after a reshape
    image = data.x_train.reshape(-1, 3, 32, 32)[0]
    assert image[1, 0, 0] == train[0, 1024] and image[2, 31, 31] == train[0, 3071]
    assert data.info["label_names"][0] == "airplane"
    assert server.requests == ["/cifar-10-python.tar.gz"]
    again = load_dataset("cifar10", **options)  # from the cache: no second request
    assert server.requests == ["/cifar-10-python.tar.gz"]
    assert np.array_equal(again.x_train, data.x_train)
    scaled = load_cifar10(**{**options, "scale": "standardize"}, n_train=8)
    assert scaled.x_train.shape == (8, 3072)
    assert abs(float(scaled.x_train.mean())) < 1e-5  # one mean and std over the training split


def test_cifar100_fine_and_coarse_labels(server, tmp_path):
    members, digest = fake_cifar100(server.root)
    options = dict(cache_dir=tmp_path / "cache", base_url=server.url, progress=False,
                   known_hashes={"cifar-100-python.tar.gz": digest})
    fine = load_cifar100(**options)
    assert fine.n_classes == 100 and fine.x_train.shape == (12, 3072)
    assert np.array_equal(fine.y_train, members["train"]["fine_labels"])
    assert np.array_equal(fine.y_test, members["test"]["fine_labels"])
    coarse = load_cifar100(labels="coarse", **options)
    assert coarse.n_classes == 20 and coarse.info["label_names"][3] == "coarse3"
    assert np.array_equal(coarse.y_train, members["train"]["coarse_labels"])
    with pytest.raises(ValueError, match="labels='medium' must be one of fine, coarse"):
        load_cifar100(labels="medium", **options)


def test_hash_mismatch_is_named_and_nothing_is_cached(server, tmp_path):
    fake_cifar10(server.root)
    cache = tmp_path / "cache"
    wrong = "md5:" + "0" * 32
    with pytest.raises(ValueError, match="does not match its known hash") as err:
        load_cifar10(cache_dir=cache, base_url=server.url, progress=False,
                     known_hashes={"cifar-10-python.tar.gz": wrong})
    assert "cifar-10-python.tar.gz" in str(err.value)
    assert not list(cache.rglob("*.tar.gz"))
    with pytest.raises(ValueError, match="known_hashes names unknown file"):
        load_cifar10(cache_dir=cache, base_url=server.url, known_hashes={"x.tar.gz": wrong})


def test_an_archive_that_asks_for_other_objects_is_refused(server, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    rng = np.random.default_rng(0)
    members = {f"data_batch_{i}": batch(rng, 2, ["labels"], [10]) for i in range(1, 6)}
    members["test_batch"] = {"data": Evil()}
    members["batches.meta"] = {"label_names": []}
    digest = write_archive(server.root / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                           members)
    with pytest.raises(CIFARFormatError, match="print, which a CIFAR batch never holds"):
        load_cifar10(cache_dir=tmp_path / "cache", base_url=server.url, progress=False,
                     known_hashes={"cifar-10-python.tar.gz": digest})
