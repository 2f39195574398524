"""Layers: ``Linear``, activations, ``Sequential`` and the ``MLP`` used throughout the tutorials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..autograd import Tensor, functional, ops
from ..backend import asarray, backend_namespace, host_rng
from .init import INITIALIZERS
from .module import Module, Parameter

__all__ = ["Linear", "ReLU", "Tanh", "Sigmoid", "Identity", "Sequential", "MLP"]


class Linear(Module):
    """``y = x Wᵀ + b`` with ``W`` of shape ``(out_features, in_features)`` (PyTorch's layout)."""

    #: The weight is pruned by default; the bias is not (see ``layout.layout_of``).
    prunable_parameters = ("weight",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "kaiming_uniform", rng: Any = None, dtype: str = "float32",
                 xp: Any = None) -> None:
        super().__init__()
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Linear: {arg} must be a positive integer, got {value!r}")
        if init not in INITIALIZERS:
            raise ValueError(f"Linear: init={init!r} is unknown; "
                             f"choose from {sorted(INITIALIZERS)}")
        xp = backend_namespace() if xp is None else xp
        rng = host_rng(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        w = INITIALIZERS[init]((self.out_features, self.in_features), rng, dtype=dtype)
        self.weight = Parameter(asarray(w, xp=xp), xp=xp)
        if bias:
            self.bias = Parameter(asarray(np.zeros(self.out_features, dtype=dtype), xp=xp), xp=xp)
        else:
            self.bias = None

    def forward(self, x: Tensor | Any) -> Tensor:
        weight = self.weight
        if not isinstance(x, Tensor):
            x = Tensor(x, xp=weight.xp)
        if not x.requires_grad and x.data.dtype != weight.data.dtype:
            # Data in another dtype (NumPy's default float64, integer pixels) is cast once to
            # the layer's dtype, as Trainer does: a float32 network's step stays float32.
            x = Tensor(weight.xp.astype(x.data, weight.data.dtype), xp=weight.xp)
        return functional.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "identity": Identity}


class Sequential(Module):
    """Apply modules in order; they are named ``"0"``, ``"1"``, ... like PyTorch."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: item {i} is a {type(module).__name__}, not a Module")
            setattr(self, str(i), module)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def forward(self, x: Any) -> Tensor:
        for module in self._modules.values():
            x = module(x)
        return x


class MLP(Sequential):
    """Fully connected network ``sizes[0] → sizes[1] → … → sizes[-1]``.

    Hidden layers use ``activation`` (``"relu"`` with Kaiming init, ``"tanh"`` with Xavier init);
    the output layer is linear (logits). ``seed`` fixes the initial weights on every backend.
    Parameters are named ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", *, seed: Any = 0,
                 dtype: str = "float32", xp: Any = None) -> None:
        sizes = list(sizes)
        if len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
            raise ValueError(f"MLP: sizes must list at least two positive integers "
                             f"(inputs, ..., outputs), got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation={activation!r} is unknown; choose from "
                             f"{sorted(ACTIVATIONS)}")
        rng = host_rng(seed)
        init = "xavier_uniform" if activation in ("tanh", "sigmoid") else "kaiming_uniform"
        layers: list[Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            layers.append(Linear(fan_in, fan_out, init="xavier_uniform" if last else init,
                                 rng=rng, dtype=dtype, xp=xp))
            if not last:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = tuple(int(s) for s in sizes)
        self.activation = activation
