"""Standard weight initializers, drawn on the host from one seeded generator.

Drawing on the host and then transferring makes the same seed give the same initial weights on
NumPy, CuPy and array_api_strict. ``fan_in``/``fan_out`` follow the ``(out, in)`` weight shape.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import host_rng

__all__ = ["kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "fans"]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``."""
    if len(shape) < 2:
        raise ValueError(f"fan-in/fan-out need a weight with at least 2 dimensions, got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def kaiming_uniform(shape, rng=None, gain: float = math.sqrt(2.0), dtype="float32") -> np.ndarray:
    """He initialization: U(−a, a) with a = gain·√(3 / fan_in) (gain √2 suits ReLU)."""
    bound = gain * math.sqrt(3.0 / fans(shape)[0])
    return host_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_normal(shape, rng=None, gain: float = math.sqrt(2.0), dtype="float32") -> np.ndarray:
    """He initialization: N(0, gain² / fan_in)."""
    std = gain / math.sqrt(fans(shape)[0])
    return (host_rng(rng).standard_normal(size=shape) * std).astype(dtype)


def xavier_uniform(shape, rng=None, gain: float = 1.0, dtype="float32") -> np.ndarray:
    """Glorot initialization: U(−a, a) with a = gain·√(6 / (fan_in + fan_out)) (suits tanh)."""
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return host_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def xavier_normal(shape, rng=None, gain: float = 1.0, dtype="float32") -> np.ndarray:
    """Glorot initialization: N(0, 2 gain² / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return (host_rng(rng).standard_normal(size=shape) * std).astype(dtype)


INITIALIZERS = {
    "kaiming_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
}
