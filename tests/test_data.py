"""Tests for kooplearn_prune.data: the datasets, the IDX reader, the downloads, the batches.

No test touches the network: MNIST-style files are written by the tests themselves and served
from a loopback HTTP server, and an autouse guard refuses any connection off 127.0.0.1.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kooplearn_prune.backend import to_numpy, use_backend
from kooplearn_prune.data import (
    DATA_ENV_VAR,
    DATASETS,
    IDX_SOURCES,
    BatchIterator,
    Dataset,
    IDXFormatError,
    iterate_batches,
    load_dataset,
    load_digits,
    make_fetcher,
    make_synthetic,
    read_idx,
)

array_api_strict = pytest.importorskip("array_api_strict")

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# --------------------------------------------------------------------------------------------
# Fixtures: no network, a loopback server, hand-written IDX files


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Refuse every connection or name lookup that is not the loopback interface."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", None):
            raise OSError(f"test tried to resolve {host!r}: the tests must not use the network")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise OSError(f"test tried to connect to {address!r}: no network in the tests")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    # A proxy from the environment must not intercept the loopback server.
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)


class LoopbackServer:
    """A static file server on 127.0.0.1 (a free port) that counts the GET requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = LoopbackServer(root)
    yield srv
    srv.stop()


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode an array as IDX: 0x0000, type code, ndim, big-endian uint32 dims, values."""
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=big_endian[type_code]).tobytes()


def write_file(path: Path, payload: bytes) -> str:
    """Write bytes and return their SHA-256 in pooch's form."""
    path.write_bytes(payload)
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def write_fake_mnist(root: Path, seed: int, n_train: int = 50, n_test: int = 20):
    """Four small gzipped IDX files of random 28x28 images; returns (arrays, hashes)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    hashes = {
        name: write_file(root / name, gzip.compress(idx_bytes(a), mtime=0))
        for name, a in arrays.items()
    }
    return arrays, hashes


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_and_metadata():
    data = load_dataset("digits")
    assert isinstance(data, Dataset)
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.y_train.shape == (1347,) and data.y_test.shape == (450,)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert (data.name, data.task, data.n_classes, data.n_outputs) == (
        "digits",
        "classification",
        10,
        10,
    )
    assert data.input_shape == (1, 8, 8) and data.n_features == 64
    assert (data.n_train, data.n_test) == (1347, 450)
    assert set(np.unique(data.y_train)) == set(range(10))
    assert "digits" in repr(data) and "(1347, 64)" in repr(data)


def test_digits_split_is_stratified():
    data = load_digits(test_size=0.3, seed=3)
    y_all = np.concatenate([data.y_train, data.y_test])
    share = len(data.y_test) / len(y_all)
    expected = share * np.bincount(y_all, minlength=10)
    # Stratification puts each class's share into the test split, up to rounding.
    assert np.all(np.abs(np.bincount(data.y_test, minlength=10) - expected) <= 1.0)


def test_digits_split_is_seeded():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    # Whatever the seed, train and test together are the whole digits set.
    totals = [np.sort(np.concatenate([d.y_train, d.y_test])) for d in (a, c)]
    np.testing.assert_array_equal(*totals)


def test_digits_scaling_uses_training_statistics():
    std = load_digits(seed=0)
    unit = load_digits(seed=0, scale="unit")
    raw = load_digits(seed=0, scale="none")
    # raw pixels are the integers 0..16; unit is raw / 16
    assert raw.x_train.min() == 0 and raw.x_train.max() == 16
    np.testing.assert_array_equal(raw.x_train, np.round(raw.x_train))
    np.testing.assert_allclose(unit.x_test, raw.x_test / 16, rtol=1e-6)
    # standardize: one mean and std of the training pixels, applied to both splits
    mean, sd = std.info["mean"], std.info["std"]
    assert mean == pytest.approx(unit.x_train.astype(np.float64).mean(), rel=1e-9)
    assert sd == pytest.approx(unit.x_train.astype(np.float64).std(), rel=1e-9)
    assert abs(std.x_train.astype(np.float64).mean()) < 1e-6
    assert std.x_train.astype(np.float64).std() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(std.x_test, (unit.x_test - mean) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.x_test * sd + mean, unit.x_test, atol=1e-5)
    assert load_digits(dtype="float64").x_train.dtype == np.float64


def test_digits_same_split_on_numpy_and_array_api_strict():
    on_numpy = load_digits(seed=5)
    on_strict = load_digits(seed=5, xp=array_api_strict)
    assert type(on_strict.x_train).__module__.startswith("array_api_strict")
    assert on_strict.x_train.dtype == array_api_strict.float32
    assert on_strict.y_train.dtype == array_api_strict.int64
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(on_numpy, field), to_numpy(getattr(on_strict, field)))
    # xp defaults to the current backend
    with use_backend("array_api_strict"):
        default = load_dataset("digits", seed=5)
    assert type(default.x_train).__module__.startswith("array_api_strict")


def test_digits_subsets_are_seeded_nested_and_checked():
    full = load_digits(seed=0, scale="none")
    small = load_digits(seed=0, n_train=100, n_test=40, scale="none")
    larger = load_digits(seed=0, n_train=300, scale="none")
    assert small.x_train.shape == (100, 64) and small.x_test.shape == (40, 64)
    assert larger.x_test.shape == full.x_test.shape
    rows = {r.tobytes() + bytes([y]) for r, y in zip(full.x_train, full.y_train, strict=True)}
    assert all(
        r.tobytes() + bytes([y]) in rows for r, y in zip(small.x_train, small.y_train, strict=True)
    )
    larger_rows = {r.tobytes() for r in larger.x_train}
    assert all(r.tobytes() in larger_rows for r in small.x_train)
    with pytest.raises(ValueError, match="n_train=5000 exceeds the 1347"):
        load_digits(n_train=5000)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"test_size": 0.0}, ValueError, "test_size"),
        ({"test_size": 1.0}, ValueError, "test_size"),
        ({"test_size": -0.2}, ValueError, "test_size"),
        ({"test_size": "half"}, TypeError, "test_size"),
        ({"n_train": 0}, ValueError, "n_train"),
        ({"n_test": 2.5}, TypeError, "n_test"),
        ({"scale": "minmax"}, ValueError, "scale"),
        ({"dtype": "int32"}, ValueError, "dtype"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"xp": "numpy"}, TypeError, "xp"),
        ({"noise": 0.1}, TypeError, "noise"),
    ],
)
def test_digits_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="digits, mnist, fashion_mnist, cifar10, cifar100, "
                                         "synthetic"):
        load_dataset("imagenet")
    with pytest.raises(TypeError, match="name"):
        load_dataset(3)
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100",
                             "synthetic"}


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST through a loopback server


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "fashion-mnist"])
def test_idx_dataset_downloads_once_then_uses_the_cache(name, server, tmp_path):
    arrays, hashes = write_fake_mnist(server.root, seed=7)
    cache = tmp_path / "cache"
    opts = dict(
        cache_dir=cache, base_url=server.url, known_hashes=hashes, progress=False, scale="none"
    )
    data = load_dataset(name, **opts)
    key = name.replace("-", "_")
    assert data.name == key and data.input_shape == (1, 28, 28) and data.n_classes == 10
    assert data.x_train.shape == (50, 784) and data.x_test.shape == (20, 784)
    np.testing.assert_array_equal(
        data.x_train, arrays["train-images-idx3-ubyte.gz"].reshape(50, -1)
    )
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert data.y_train.dtype == np.int64
    assert sorted(server.requests) == sorted("/" + f for f in IDX_FILES)
    assert sorted(p.name for p in (cache / key).iterdir()) == sorted(IDX_FILES)

    server.stop()  # the second load must come from the cache alone
    again = load_dataset(name, **opts)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    assert len(server.requests) == 4


def test_idx_dataset_is_standardized_with_training_statistics(server, tmp_path):
    arrays, hashes = write_fake_mnist(server.root, seed=8)
    opts = dict(cache_dir=tmp_path, base_url=server.url, known_hashes=hashes, progress=False)
    data = load_dataset("mnist", **opts)
    unit_train = arrays["train-images-idx3-ubyte.gz"].reshape(50, -1) / 255.0
    unit_test = arrays["t10k-images-idx3-ubyte.gz"].reshape(20, -1) / 255.0
    assert data.info["mean"] == pytest.approx(unit_train.mean(), rel=1e-12)
    assert data.info["std"] == pytest.approx(unit_train.std(), rel=1e-12)
    expected = (unit_test - unit_train.mean()) / unit_train.std()
    np.testing.assert_allclose(data.x_test, expected, rtol=1e-5, atol=1e-5)
    assert data.x_train.dtype == np.float32


def test_idx_dataset_subsets_and_backend(server, tmp_path):
    arrays, hashes = write_fake_mnist(server.root, seed=9)
    opts = dict(
        cache_dir=tmp_path, base_url=server.url, known_hashes=hashes, progress=False, scale="none"
    )
    sub = load_dataset("mnist", n_train=12, n_test=5, seed=4, **opts)
    same = load_dataset("mnist", n_train=12, n_test=5, seed=4, xp=array_api_strict, **opts)
    other = load_dataset("mnist", n_train=12, n_test=5, seed=5, **opts)
    assert sub.x_train.shape == (12, 784) and sub.y_test.shape == (5,)
    np.testing.assert_array_equal(sub.x_train, to_numpy(same.x_train))
    np.testing.assert_array_equal(sub.y_train, to_numpy(same.y_train))
    assert not np.array_equal(sub.x_train, other.x_train)
    images = arrays["train-images-idx3-ubyte.gz"].reshape(50, -1)
    labels = arrays["train-labels-idx1-ubyte.gz"]
    full = {(img.tobytes(), int(lab)) for img, lab in zip(images, labels, strict=True)}
    picked = {
        (img.astype(np.uint8).tobytes(), int(lab))
        for img, lab in zip(sub.x_train, sub.y_train, strict=True)
    }
    assert len(picked) == 12 and picked <= full  # distinct samples, each with its own label
    with pytest.raises(ValueError, match="n_train=51 exceeds the 50"):
        load_dataset("mnist", n_train=51, **opts)


def test_cache_dir_defaults_to_the_environment_variable(server, tmp_path, monkeypatch):
    _, hashes = write_fake_mnist(server.root, seed=10)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "from_env"))
    load_dataset("fashion_mnist", base_url=server.url, known_hashes=hashes, progress=False)
    assert sorted(p.name for p in (tmp_path / "from_env" / "fashion_mnist").iterdir()) == sorted(
        IDX_FILES
    )


def test_wrong_hash_raises_and_leaves_nothing_in_the_cache(server, tmp_path):
    _, hashes = write_fake_mnist(server.root, seed=11)
    wrong = dict(hashes)
    wrong["train-images-idx3-ubyte.gz"] = "sha256:" + "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*does not match"):
        load_dataset("mnist", cache_dir=cache, base_url=server.url, known_hashes=wrong,
                     progress=False)  # fmt: skip
    assert len(server.requests) >= 1  # it did download, then rejected the file
    leftovers = [p for p in (cache / "mnist").rglob("*") if p.is_file()] if cache.exists() else []
    assert all(p.name in IDX_FILES for p in leftovers)  # no temporary or partial files
    assert not (cache / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_corrupt_idx_file_raises_a_clear_error(server, tmp_path):
    _, hashes = write_fake_mnist(server.root, seed=12)
    # A header that promises more images than the file holds; its hash is the served file's.
    bad = bytes([0, 0, 8, 3]) + np.asarray([99, 28, 28], ">u4").tobytes() + bytes(28 * 28 * 3)
    hashes["t10k-images-idx3-ubyte.gz"] = write_file(
        server.root / "t10k-images-idx3-ubyte.gz", gzip.compress(bad)
    )
    with pytest.raises(IDXFormatError, match=r"t10k-images-idx3-ubyte\.gz.*promises shape"):
        load_dataset("mnist", cache_dir=tmp_path, base_url=server.url, known_hashes=hashes,
                     progress=False)  # fmt: skip


def test_mismatched_image_and_label_counts_are_reported(server, tmp_path):
    _, hashes = write_fake_mnist(server.root, seed=13)
    labels = np.zeros(7, np.uint8)
    hashes["train-labels-idx1-ubyte.gz"] = write_file(
        server.root / "train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels))
    )
    with pytest.raises(IDXFormatError, match="50 images but train-labels-idx1-ubyte.gz has 7"):
        load_dataset("mnist", cache_dir=tmp_path, base_url=server.url, known_hashes=hashes,
                     progress=False)  # fmt: skip


def test_unreachable_host_gives_a_clear_error(tmp_path):
    # The autouse guard refuses the canonical host: this checks the guard and the message.
    with pytest.raises(OSError, match="could not download .*ossci-datasets"):
        load_dataset("mnist", cache_dir=tmp_path, progress=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_fetcher_uses_the_canonical_sources_by_default(tmp_path):
    mnist = make_fetcher("mnist", cache_dir=tmp_path)
    assert mnist.base_url == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert mnist.registry["train-images-idx3-ubyte.gz"] == "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert Path(mnist.abspath) == (tmp_path / "mnist").resolve()
    fashion = make_fetcher("fashion_mnist", cache_dir=tmp_path)
    assert fashion.base_url == IDX_SOURCES["fashion_mnist"]["base_url"]
    assert fashion.registry["t10k-labels-idx1-ubyte.gz"] == "md5:bb300cfdad3c16e7a12a480ee83cd310"
    assert sorted(fashion.registry) == sorted(IDX_FILES)
    assert not (tmp_path / "mnist").exists()  # creating a fetcher writes nothing


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"known_hashes": {"train.gz": "md5:00"}}, ValueError, "known_hashes"),
        ({"known_hashes": {"train-images-idx3-ubyte.gz": ""}}, ValueError, "known_hashes"),
        ({"known_hashes": ["md5:00"]}, TypeError, "known_hashes"),
        ({"base_url": "ftp://mirror/"}, ValueError, "base_url"),
    ],
)
def test_fetcher_bad_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        make_fetcher("mnist", cache_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="mnist, fashion_mnist"):
        make_fetcher("digits")


# --------------------------------------------------------------------------------------------
# The IDX reader


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    compress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_idx_round_trip(tmp_path_factory, shape, type_code, compress, seed):
    native = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32,
              0x0D: np.float32, 0x0E: np.float64}[type_code]  # fmt: skip
    values = np.random.default_rng(seed).integers(-100, 100, size=shape) % 128
    array = values.astype(native)
    payload = idx_bytes(array, type_code)
    path = tmp_path_factory.mktemp("idx") / "a.idx"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    back = read_idx(path)
    assert back.shape == tuple(shape) and back.dtype == native
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x00", "magic number"),
        (b"\x00\x00", "magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "promises shape"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "promises shape"),
        (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")[:-6], "damaged gzip"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, payload, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(payload)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert "bad.idx" in str(info.value)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------------
# synthetic teacher-student data


def teacher_forward(teacher, x):
    h = x
    for k, (weight, bias) in enumerate(teacher):
        h = h @ weight + bias
        if k < len(teacher) - 1:
            h = np.tanh(h)
    return h


def test_synthetic_regression_targets_are_the_teacher_outputs():
    data = make_synthetic(task="regression", n_samples=200, n_features=6, n_outputs=2, hidden=8,
                          seed=1, dtype="float64")  # fmt: skip
    assert data.task == "regression" and data.n_classes is None and data.n_outputs == 2
    assert data.x_train.shape == (150, 6) and data.x_test.shape == (50, 6)
    assert data.y_train.shape == (150, 2) and data.y_train.dtype == np.float64
    assert data.input_shape == (6,)
    teacher = data.info["teacher"]
    np.testing.assert_allclose(data.y_test, teacher_forward(teacher, data.x_test), rtol=1e-12)
    noisy = make_synthetic(task="regression", n_samples=200, n_features=6, n_outputs=2, hidden=8,
                           seed=1, dtype="float64", noise=0.5)  # fmt: skip
    np.testing.assert_array_equal(noisy.x_train, data.x_train)
    residual = noisy.y_train - teacher_forward(teacher, noisy.x_train)
    assert 0.35 < residual.std() < 0.65


def test_synthetic_classification_labels_are_the_teacher_argmax():
    data = make_synthetic(n_samples=600, n_features=5, n_classes=4, hidden=(16, 8), seed=2)
    assert data.task == "classification" and data.n_classes == 4 and data.n_outputs == 4
    assert data.y_train.dtype == np.int64 and data.y_train.shape == (450,)
    assert data.x_train.dtype == np.float32
    assert set(np.unique(data.y_train)) == {0, 1, 2, 3}  # every class gets a share
    x_all = np.concatenate([data.x_train, data.x_test]).astype(np.float64)
    y_all = np.concatenate([data.y_train, data.y_test])
    logits = teacher_forward(data.info["teacher"], x_all)
    z = (logits - logits.mean(axis=0)) / logits.std(axis=0)
    # float32 inputs vs the float64 draw: allow the rare near-tie to flip
    assert np.mean(np.argmax(z, axis=1) == y_all) > 0.99


def test_synthetic_is_seeded_and_backend_independent():
    a = load_dataset("synthetic", seed=3)
    b = load_dataset("synthetic", seed=3, xp=array_api_strict)
    c = load_dataset("synthetic", seed=4)
    np.testing.assert_array_equal(a.x_train, to_numpy(b.x_train))
    np.testing.assert_array_equal(a.y_test, to_numpy(b.y_test))
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (750, 20) and a.n_classes == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "ranking"}, ValueError, "task"),
        ({"n_classes": 1}, ValueError, "n_classes"),
        ({"task": "regression", "n_classes": 3}, ValueError, "n_classes"),
        ({"n_outputs": 2}, ValueError, "n_outputs"),
        ({"n_samples": 1}, ValueError, "n_samples"),
        ({"n_features": 0}, ValueError, "n_features"),
        ({"hidden": 0}, ValueError, "hidden"),
        ({"hidden": ()}, ValueError, "hidden"),
        ({"noise": -0.1}, ValueError, "noise"),
        ({"noise": float("inf")}, ValueError, "noise"),
        ({"n_samples": 3, "test_size": 0.9}, ValueError, "test_size"),
        ({"test_size": 2}, ValueError, "test_size"),
    ],
)
def test_synthetic_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_synthetic(**kwargs)


# --------------------------------------------------------------------------------------------
# Mini-batches


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 120), batch_size=st.integers(1, 50), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 1000))  # fmt: skip
def test_every_sample_once_per_epoch(n, batch_size, drop_last, shuffle, seed):
    if drop_last and batch_size > n:
        return  # rejected; see test_batch_iterator_bad_inputs
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(n, dtype=np.int64)
    batches = BatchIterator(x, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    for _ in range(2):
        seen = list(batches)
        assert len(seen) == len(batches)
        sizes = [len(yb) for _, yb in seen]
        assert all(s == batch_size for s in sizes[:-1]) and 1 <= sizes[-1] <= batch_size
        if drop_last:
            assert sizes[-1] == batch_size
        labels = np.concatenate([yb for _, yb in seen])
        expected = n - n % batch_size if drop_last else n
        assert len(labels) == expected and len(np.unique(labels)) == expected
        for xb, yb in seen:  # rows stay paired with their labels
            np.testing.assert_array_equal(xb[:, 0], yb.astype(np.float32))
        if not shuffle:
            np.testing.assert_array_equal(labels, np.arange(expected))


def test_same_seed_same_order_and_epochs_differ():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20)
    first = BatchIterator(x, y, 6, seed=42)
    second = BatchIterator(x, y, 6, seed=42)
    epochs_a = [np.concatenate([yb for _, yb in first]) for _ in range(3)]
    epochs_b = [np.concatenate([yb for _, yb in second]) for _ in range(3)]
    for a, b in zip(epochs_a, epochs_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(epochs_a[0], epochs_a[1])
    assert first.epoch == 3
    other = np.concatenate([yb for _, yb in BatchIterator(x, y, 6, seed=43)])
    assert not np.array_equal(other, epochs_a[0])


def test_same_order_on_numpy_and_array_api_strict():
    x = np.random.default_rng(0).standard_normal((23, 4)).astype(np.float32)
    y = np.arange(23)
    xs, ys = array_api_strict.asarray(x.tolist()), array_api_strict.asarray(y.tolist())
    on_numpy = list(iterate_batches(x, y, 5, seed=9))
    on_strict = list(iterate_batches(xs, ys, 5, seed=9))
    assert len(on_numpy) == len(on_strict) == 5
    for (xb, yb), (xsb, ysb) in zip(on_numpy, on_strict, strict=True):
        assert type(xsb).__module__.startswith("array_api_strict")
        np.testing.assert_array_equal(xb, to_numpy(xsb))
        np.testing.assert_array_equal(yb, to_numpy(ysb))


def test_iterate_batches_with_a_generator_reshuffles_each_call():
    x, y = np.zeros((30, 1)), np.arange(30)
    rng = np.random.default_rng(0)
    first = np.concatenate([yb for _, yb in iterate_batches(x, y, 7, seed=rng)])
    second = np.concatenate([yb for _, yb in iterate_batches(x, y, 7, seed=rng)])
    assert not np.array_equal(first, second)
    again = [np.concatenate([yb for _, yb in iterate_batches(x, y, 7, seed=1)]) for _ in range(2)]
    np.testing.assert_array_equal(*again)


def test_batches_without_targets_and_from_a_dataset():
    x = np.arange(10.0)[:, None]
    got = list(iterate_batches(x, None, 4, shuffle=False))
    assert [yb for _, yb in got] == [None, None, None]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got])[:, 0], np.arange(10.0))
    data = make_synthetic(n_samples=40, seed=0)
    batches = data.batches(8, seed=0, drop_last=True)
    assert len(batches) == 3 and sum(len(yb) for _, yb in batches) == 24


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros((5, 2)), np.zeros(5), 0), {}, ValueError, "batch_size"),
        ((np.zeros((5, 2)), np.zeros(5), -3), {}, ValueError, "batch_size"),
        ((np.zeros((5, 2)), np.zeros(5), 2.0), {}, TypeError, "batch_size"),
        ((np.zeros((5, 2)), np.zeros(5), True), {}, TypeError, "batch_size"),
        ((np.zeros((5, 2)), np.zeros(4), 2), {}, ValueError, "same number of samples"),
        ((np.zeros((5, 2)), np.zeros(5), 6), {"drop_last": True}, ValueError, "batch_size=6"),
        ((np.zeros((0, 2)), np.zeros(0), 2), {}, ValueError, "no samples"),
        (([[1.0], [2.0]], [1, 2], 1), {}, TypeError, "x must be an array"),
        ((np.zeros((5, 2)), [1, 2, 3, 4, 5], 1), {}, TypeError, "y must be an array"),
        ((np.zeros((5, 2)), np.zeros(5), 2), {"seed": -1}, ValueError, "seed"),
        ((np.zeros((5, 2)), np.zeros(5), 2), {"shuffle": "yes"}, TypeError, "shuffle"),
    ],
)
def test_batch_iterator_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchIterator(*args, **kwargs)


@pytest.mark.gpu
def test_cupy_gets_the_same_split_and_batches():
    pytest.importorskip("cupy")
    from kooplearn_prune.backend import BackendUnavailableError

    try:
        with use_backend("cupy"):
            on_gpu = load_digits(seed=2)
            gpu_batches = [to_numpy(yb) for _, yb in on_gpu.batches(64, seed=3)]
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    on_host = load_digits(seed=2)
    assert type(on_gpu.x_train).__module__.startswith("cupy")
    np.testing.assert_array_equal(on_host.x_train, to_numpy(on_gpu.x_train))
    for host, gpu in zip([yb for _, yb in on_host.batches(64, seed=3)], gpu_batches, strict=True):
        np.testing.assert_array_equal(host, gpu)
