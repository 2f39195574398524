"""Shared fixtures: run a test once per array backend, and once per floating dtype.

``backend`` switches the current backend (``kooplearn_prune.backend.use_backend``) for the
duration of the test and yields its name; ``xp`` yields the matching array namespace. CuPy runs
only where CuPy and a CUDA device are present, and is skipped otherwise. ``dtype`` yields
``"float32"`` or ``"float64"``; a test that takes both ``xp`` and ``dtype`` runs for every pair.
"""

from __future__ import annotations

import functools

import pytest

from kooplearn_prune.backend import backend_namespace, use_backend


@functools.cache
def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # not installed, or no driver / device
        return False


BACKEND_PARAMS = [
    "numpy",
    "array_api_strict",
    pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not cupy_available(), reason="needs CuPy and a CUDA device")]),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """The backend name; the current backend is switched to it while the test runs."""
    with use_backend(request.param):
        yield request.param


@pytest.fixture
def xp(backend):
    """The array namespace of the ``backend`` fixture (``numpy`` itself for NumPy)."""
    return backend_namespace()


DTYPES = ["float32", "float64"]


@pytest.fixture(params=DTYPES, ids=DTYPES)
def dtype(request):
    """The dtype NAME, ``"float32"`` or ``"float64"`` (a string, not a dtype object).

    A name works everywhere: ``getattr(xp, dtype)`` is the backend's dtype,
    ``np.dtype(dtype)`` the host's, and ``MLP(..., dtype=dtype)`` and ``asarray(x, dtype=dtype,
    xp=xp)`` take it as it is. ``np.finfo(dtype).eps`` gives its machine epsilon for tolerances.
    """
    return request.param
