"""The backend switch, namespaces, host/device transfers and the seeded host generator."""

from __future__ import annotations

import numpy as np
import pytest

from kooplearn_prune import backend as B
from kooplearn_prune.backend import (
    BackendUnavailableError,
    asarray,
    backend_namespace,
    get_backend,
    host_rng,
    is_numpy_namespace,
    namespace_of,
    resolve_dtype,
    set_backend,
    to_numpy,
    use_backend,
)


# --------------------------------------------------------------------------- switching
def test_use_backend_switches_and_restores():
    before = get_backend()
    with use_backend("array_api_strict") as xp:
        import array_api_strict

        assert xp is array_api_strict
        assert get_backend() == "array_api_strict"
        assert backend_namespace() is array_api_strict
    assert get_backend() == before


def test_use_backend_restores_after_an_exception():
    before = get_backend()
    with pytest.raises(RuntimeError, match="boom"):
        with use_backend("array_api_strict"):
            raise RuntimeError("boom")
    assert get_backend() == before


def test_numpy_backend_is_numpy_itself():
    with use_backend("numpy") as xp:
        assert xp is np
        assert is_numpy_namespace(xp)


def test_set_backend_normalizes_the_name():
    before = get_backend()
    try:
        assert set_backend("  NumPy ") is np
        assert get_backend() == "numpy"
    finally:
        set_backend(before)


def test_unknown_backend_name_raises_and_changes_nothing():
    before = get_backend()
    with pytest.raises(ValueError, match=r"backend='jax' is unknown; choose one of numpy, cupy"):
        set_backend("jax")
    assert get_backend() == before


def test_backend_name_must_be_a_string():
    with pytest.raises(TypeError, match="must be a string"):
        set_backend(np)


def test_missing_cupy_raises_a_helpful_error_and_keeps_the_backend():
    before = get_backend()
    try:
        set_backend("cupy")
    except BackendUnavailableError as err:
        assert "kooplearn-prune[gpu]" in str(err)
        assert get_backend() == before
    else:
        set_backend(before)
        pytest.skip("CuPy and a CUDA device are present here")


def test_environment_variable_picks_the_first_backend(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "array_api_strict")
    monkeypatch.setitem(B._current, "name", None)
    monkeypatch.setitem(B._current, "xp", None)
    assert get_backend() == "array_api_strict"


def test_bad_environment_variable_is_reported(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "tensorflow")
    monkeypatch.setitem(B._current, "name", None)
    monkeypatch.setitem(B._current, "xp", None)
    with pytest.raises(ValueError, match="tensorflow"):
        get_backend()


# --------------------------------------------------------------------------- namespaces
def test_namespace_of_numpy_strict_and_scalars():
    import array_api_strict

    a = np.ones(3)
    s = array_api_strict.ones(3)
    assert namespace_of(a) is np
    assert namespace_of(np.float32(1.0)) is np
    assert namespace_of(s) is array_api_strict
    assert namespace_of(s, 2.0, None, 3) is array_api_strict  # scalars are ignored
    with use_backend("array_api_strict"):
        assert namespace_of(1.0) is array_api_strict  # only scalars: the current backend


def test_namespace_of_mixed_libraries_raises():
    import array_api_strict

    with pytest.raises(TypeError):
        namespace_of(np.ones(2), array_api_strict.ones(2))


@pytest.mark.parametrize("spec", ["float32", np.float32, np.dtype("float32")])
def test_resolve_dtype_accepts_names_types_and_dtypes(spec):
    import array_api_strict

    assert resolve_dtype(spec, array_api_strict) == array_api_strict.float32
    assert resolve_dtype(spec, np) is np.float32
    assert resolve_dtype(None, np) is None


def test_resolve_dtype_unknown_name():
    import array_api_strict

    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16", array_api_strict)


# --------------------------------------------------------------------------- transfers
def test_asarray_round_trip_through_every_backend(xp):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    dev = asarray(host, xp=xp)
    assert namespace_of(dev) is xp
    assert dev.dtype == xp.float32
    back = to_numpy(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)


def test_asarray_defaults_to_the_current_backend(xp):
    dev = asarray([1, 2, 3], dtype="int64")
    assert namespace_of(dev) is xp
    assert dev.dtype == xp.int64
    np.testing.assert_array_equal(to_numpy(dev), [1, 2, 3])


def test_asarray_changes_dtype_only_when_asked(xp):
    dev = asarray(np.ones(4, dtype=np.float64), xp=xp)
    assert dev.dtype == xp.float64
    assert asarray(dev, xp=xp).dtype == xp.float64
    assert asarray(dev, dtype="float32", xp=xp).dtype == xp.float32


def test_asarray_does_not_copy_numpy_arrays():
    host = np.zeros(5, dtype=np.float32)
    assert asarray(host, xp=np) is host


def test_asarray_moves_arrays_between_libraries():
    import array_api_strict

    strict = array_api_strict.asarray([1.0, 2.0])
    on_numpy = asarray(strict, xp=np)
    assert isinstance(on_numpy, np.ndarray)
    np.testing.assert_array_equal(on_numpy, [1.0, 2.0])


def test_to_numpy_of_a_torch_tensor():
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.float32, requires_grad=True) * 2
    np.testing.assert_array_equal(to_numpy(t), [0.0, 2.0, 4.0, 6.0])


def test_to_numpy_of_scalars_and_lists():
    assert to_numpy([1, 2]).tolist() == [1, 2]
    assert to_numpy(3.5) == np.float64(3.5)


# --------------------------------------------------------------------------- randomness
def test_host_rng_is_seeded():
    a = host_rng(7).standard_normal(5)
    b = host_rng(7).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, host_rng(8).standard_normal(5))


def test_host_rng_passes_a_generator_through():
    g = np.random.default_rng(0)
    assert host_rng(g) is g
    assert isinstance(host_rng(None), np.random.Generator)
    assert isinstance(host_rng(np.int64(3)), np.random.Generator)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_host_rng_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        host_rng(seed)
