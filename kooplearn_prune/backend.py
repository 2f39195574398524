"""Which array library the framework computes with, and moving arrays between host and device.

Library code never imports NumPy for arrays that may live on the GPU. It asks the arrays it is
given for their namespace (``namespace_of``) and calls only functions of the Python array API
standard on it, so the same code runs on NumPy, CuPy and (in the tests) ``array_api_strict``.

Randomness always comes from one seeded *host* generator (``host_rng``): initial weights and batch
orders are drawn with NumPy and then moved to the backend, so a seed means the same numbers on
every backend.

Choose the backend with ``set_backend("cupy")`` or the environment variable
``KOOPLEARN_PRUNE_BACKEND=cupy`` (read once, at the first use).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "set_backend",
    "get_backend",
    "use_backend",
    "backend_namespace",
    "namespace_of",
    "is_numpy_namespace",
    "asarray",
    "to_numpy",
    "host_rng",
    "resolve_dtype",
]

BACKENDS = ("numpy", "cupy", "array_api_strict")
ENV_VAR = "KOOPLEARN_PRUNE_BACKEND"

_GPU_HINT = (
    "Install the GPU extra that matches your CUDA toolkit, e.g. "
    "pip install 'kooplearn-prune[gpu]' (CuPy for CUDA 12), and make sure a CUDA device is visible."
)


class BackendUnavailableError(RuntimeError):
    """The requested array backend cannot be used on this machine."""


_current: dict[str, Any] = {"name": None, "xp": None}


def _load_namespace(name: str) -> ModuleType:
    if name == "numpy":
        # NumPy >= 2 implements the array API standard in its main namespace; using it directly
        # avoids the per-call cost of compatibility wrappers in the training loop.
        return np
    if name == "cupy":
        try:
            import cupy
        except ImportError as err:
            raise BackendUnavailableError(
                f"backend='cupy' needs CuPy, which is not installed. {_GPU_HINT}"
            ) from err
        try:
            n_devices = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # CUDA driver missing or broken
            raise BackendUnavailableError(
                f"backend='cupy': CuPy is installed but no usable CUDA device was found ({err}). "
                f"{_GPU_HINT}"
            ) from err
        if n_devices < 1:
            raise BackendUnavailableError(f"backend='cupy': no CUDA device is visible. {_GPU_HINT}")
        import array_api_compat.cupy as cupy_xp

        return cupy_xp
    if name == "array_api_strict":
        try:
            import array_api_strict
        except ImportError as err:
            raise BackendUnavailableError(
                "backend='array_api_strict' is for testing; install it with "
                "pip install 'kooplearn-prune[test]'."
            ) from err
        return array_api_strict
    raise ValueError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}.")


def set_backend(name: str) -> ModuleType:
    """Select the array backend (``"numpy"``, ``"cupy"``, or ``"array_api_strict"`` for tests).

    Returns the backend's array namespace. Raises ``BackendUnavailableError`` (naming the ``gpu``
    extra) when CuPy or a CUDA device is missing; the current backend is then left unchanged.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string such as 'numpy', got {type(name).__name__}")
    name = name.strip().lower()
    xp = _load_namespace(name)
    _current["name"], _current["xp"] = name, xp
    return xp


def get_backend() -> str:
    """Name of the current backend (from ``set_backend`` or ``KOOPLEARN_PRUNE_BACKEND``)."""
    if _current["name"] is None:
        set_backend(os.environ.get(ENV_VAR, "numpy") or "numpy")
    return _current["name"]


def backend_namespace() -> ModuleType:
    """Array namespace of the current backend (``numpy`` itself for NumPy)."""
    get_backend()
    return _current["xp"]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[ModuleType]:
    """Temporarily switch backend: ``with use_backend("array_api_strict") as xp: ...``."""
    previous = get_backend()
    xp = set_backend(name)
    try:
        yield xp
    finally:
        set_backend(previous)


def namespace_of(*arrays: Any) -> ModuleType:
    """Array-API namespace of the given arrays (``numpy`` itself for NumPy arrays).

    Python scalars and ``None`` are ignored. Resolve this once at the boundary (user input)
    and pass the namespace down; it costs about a microsecond per call.
    """
    arrays = tuple(a for a in arrays if a is not None and not isinstance(a, (int, float, bool)))
    if not arrays:
        return backend_namespace()
    if all(isinstance(a, (np.ndarray, np.generic)) for a in arrays):
        return np
    from array_api_compat import array_namespace

    return array_namespace(*arrays)


def is_numpy_namespace(xp: ModuleType) -> bool:
    """True when ``xp`` computes with NumPy arrays (NumPy itself or its compat wrapper)."""
    return xp is np or getattr(xp, "__name__", "") in ("array_api_compat.numpy", "numpy")


def resolve_dtype(dtype: Any, xp: ModuleType) -> Any:
    """Turn ``"float32"``, ``numpy.float32`` or a namespace dtype into ``xp``'s dtype object."""
    if dtype is None or not isinstance(dtype, (str, type, np.dtype)):
        return dtype
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    try:
        return getattr(xp, name)
    except AttributeError as err:
        raise ValueError(f"dtype={dtype!r} is not available in {xp.__name__}") from err


def asarray(x: Any, dtype: Any = None, xp: ModuleType | None = None) -> Any:
    """Put ``x`` (a NumPy array, list, scalar, or backend array) on the backend ``xp``.

    ``xp`` defaults to the current backend. Host data is transferred once; data already in
    ``xp`` is not copied unless the dtype changes.
    """
    xp = backend_namespace() if xp is None else xp
    dtype = resolve_dtype(dtype, xp)
    if is_numpy_namespace(xp):
        return np.asarray(to_numpy(x) if _is_device_array(x) else x, dtype=dtype)
    if _module_root(x) not in ("numpy", "builtins") and namespace_of(x) is not xp:
        x = to_numpy(x)
    if isinstance(x, (np.ndarray, np.generic)) and _module_root_ns(xp) == "array_api_strict":
        # array_api_strict only takes nested sequences or its own arrays; go through DLPack.
        x = np.ascontiguousarray(x)
        return xp.asarray(xp.from_dlpack(x), dtype=dtype)
    return xp.asarray(x, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy array with the values of ``x`` (copied from the GPU when needed)."""
    if isinstance(x, np.ndarray):
        return x
    root = _module_root(x)
    if root == "cupy":
        return x.get()
    if root == "torch":
        return x.detach().cpu().numpy()
    if root == "array_api_strict":
        return np.from_dlpack(x)
    return np.asarray(x)


def host_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """The one seeded host random generator used for initialization and shuffling."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(seed)


def _module_root(x: Any) -> str:
    return type(x).__module__.split(".", 1)[0]


def _module_root_ns(xp: ModuleType) -> str:
    return xp.__name__.split(".", 1)[0]


def _is_device_array(x: Any) -> bool:
    return _module_root(x) in ("cupy", "torch", "array_api_strict")

