"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW, with pruning masks.

Updates are done in place on the parameter arrays (no graph, no reallocation). With masks set
(``set_masks``), gradients are masked before they enter the optimizer state and the parameters are
masked after the update, so pruned weights and their momentum / Adam moments stay exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .backend import asarray, namespace_of
from .nn.module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _check_nonnegative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def check_keep_mask(where: str, name: str, mask: Any, shape: tuple[int, ...]) -> None:
    """Raise a clear error unless ``mask`` is a boolean array of exactly ``shape``."""
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{where}: mask for {name} has shape {tuple(mask.shape)}, "
                         f"parameter has {tuple(shape)}")
    if not namespace_of(mask).isdtype(mask.dtype, "bool"):
        raise TypeError(f"{where}: mask for {name} must be boolean (True = kept), "
                        f"got dtype {mask.dtype}")


class Optimizer:
    """Base class: holds named parameters, their state and optional keep-masks."""

    def __init__(self, params: Iterable[Parameter] | Iterable[tuple[str, Parameter]] | Any,
                 lr: float) -> None:
        if hasattr(params, "named_parameters"):
            params = params.named_parameters()
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        named = [item if isinstance(item, tuple) else (str(i), item)
                 for i, item in enumerate(items)]
        for name, p in named:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer: {name} is a {type(p).__name__}, not a Parameter")
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.lr = float(lr)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.masks: list[Any] = [None] * len(self.params)
        self._param_masks: list[tuple[Any, Any] | None] = [None] * len(self.params)
        self.step_count = 0

    def zero_grad(self) -> None:
        """Forget the gradients of the last backward pass."""
        for p in self.params:
            p.grad = None

    # ------------------------------------------------------------------ masks
    def set_masks(self, masks: Mapping[str, Any] | None) -> None:
        """Keep-masks by parameter name (``True`` = kept); ``None`` removes all masks.

        Masked parameters and their optimizer state are zeroed now and after every step.
        Every mask is validated (known name, exact shape) before anything changes.
        """
        if masks is None:
            self.masks = [None] * len(self.params)
            return
        unknown = [k for k in masks if k not in self.names]
        if unknown:
            raise KeyError(f"set_masks: unknown parameter names {unknown}; "
                           f"this optimizer holds {self.names}")
        new = list(self.masks)
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            if name not in masks:
                continue
            mask = masks[name]
            if mask is None:
                new[i] = None
                continue
            check_keep_mask("set_masks", name, mask, p.shape)
            new[i] = p.xp.astype(asarray(mask, xp=p.xp), p.data.dtype)
        self.masks = new
        for i, (p, mask) in enumerate(zip(self.params, self.masks)):
            if mask is not None:
                p.data *= mask
                self._mask_state(i, mask)

    def _mask_state(self, i: int, mask: Any) -> None:
        """Zero the masked entries of parameter ``i``'s optimizer state (momentum, moments)."""
        for value in self.state[i].values():
            if hasattr(value, "shape") and tuple(value.shape) == self.params[i].shape:
                value *= mask

    # ------------------------------------------------------------------ stepping
    def _mask_of(self, i: int) -> Any:
        """The float keep-mask of parameter ``i``: from ``set_masks``, else from ``p.mask``."""
        if self.masks[i] is not None:
            return self.masks[i]
        p = self.params[i]
        if p.mask is None:
            self._param_masks[i] = None
            return None
        seen = self._param_masks[i]
        if seen is None or seen[0] is not p.mask:  # a new mask: zero its state entries once
            mask = p.xp.astype(asarray(p.mask, xp=p.xp), p.data.dtype)
            self._mask_state(i, mask)
            seen = self._param_masks[i] = (p.mask, mask)
        return seen[1]

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.step_count += 1
        for i, (p, state) in enumerate(zip(self.params, self.state)):
            if p.grad is None:
                continue
            mask = self._mask_of(i)
            g = p.grad if mask is None else p.grad * mask
            self._update(p, g, state)
            if mask is not None:
                p.data *= mask

    def _update(self, p: Parameter, g: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """The settings a trajectory's metadata records."""
        return {"optimizer": type(self).__name__, "lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent: ``θ ← θ − lr · v`` with ``v = μ v + g`` (PyTorch's form).

    ``nesterov=True`` uses ``g + μ v``; ``weight_decay`` adds ``λ θ`` to the gradient.
    """

    def __init__(self, params: Any, lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        momentum = _check_nonnegative("momentum", momentum)
        weight_decay = _check_nonnegative("weight_decay", weight_decay)
        if momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = momentum, bool(nesterov), weight_decay

    def _update(self, p: Parameter, g: Any, state: dict[str, Any]) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = p.xp.asarray(g, copy=True)
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        if self.lr == 1.0:
            p.data -= g
        else:
            p.data -= self.lr * g

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba): bias-corrected first and second moments; ``weight_decay`` is L2."""

    decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        b1, b2 = betas
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0 <= b < 1:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        weight_decay = _check_nonnegative("weight_decay", weight_decay)
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = (float(b1), float(b2)), float(eps), weight_decay

    def _update(self, p: Parameter, g: Any, state: dict[str, Any]) -> None:
        xp = p.xp
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p.data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        if "exp_avg" not in state:
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            state["step"] = 0
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        step_size = self.lr / (1.0 - b1**t)
        denom = xp.sqrt(v / (1.0 - b2**t)) + self.eps
        p.data -= step_size * (m / denom)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "momentum": self.betas[0]}


class AdamW(Adam):
    """Adam with decoupled weight decay: ``θ ← θ (1 − lr λ)`` before the Adam step."""

    decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
