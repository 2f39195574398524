"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW, with pruning masks.

Updates are done in place on the parameter arrays (no graph, no reallocation). A parameter's
keep-mask lives on the parameter (``Parameter.mask``, set by ``nn.apply_masks`` or the sugar
``Optimizer.set_masks``): gradients are masked before they enter the optimizer state and the
parameters are masked after the update, so pruned weights and their momentum / Adam moments stay
exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .metadata import TrainingMetadata
from .nn.module import Parameter, check_keep_mask

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _check_nonnegative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


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
        #: ``Parameter.mask_version`` each parameter's state was last masked at.
        self._masked_version = [p.mask_version for p in self.params]
        self.step_count = 0

    def zero_grad(self) -> None:
        """Forget the gradients of the last backward pass."""
        for p in self.params:
            p.grad = None

    # ------------------------------------------------------------------ masks
    def set_masks(self, masks: Mapping[str, Any] | None) -> None:
        """Sugar for setting ``Parameter.mask`` by name (``True`` = kept); ``None`` removes all.

        Every mask is validated (known name, exact shape, bool) before anything changes; pruned
        weights and their optimizer state are zeroed now, and stay zero after every step.
        """
        if masks is None:
            for p in self.params:
                p.mask = None
            return
        unknown = [k for k in masks if k not in self.names]
        if unknown:
            raise KeyError(f"set_masks: unknown parameter names {unknown}; "
                           f"this optimizer holds {self.names}")
        by_index = {self.names.index(name): mask for name, mask in masks.items()}
        for i, mask in by_index.items():
            if mask is not None:
                check_keep_mask("set_masks", self.names[i], mask, self.params[i].shape)
        for i, mask in by_index.items():
            self.params[i].mask = mask
            self._sync_state(i)

    def _sync_state(self, i: int) -> None:
        """Zero the pruned entries of parameter ``i``'s state (momentum, moments) once per mask."""
        p = self.params[i]
        if self._masked_version[i] == p.mask_version:
            return
        self._masked_version[i] = p.mask_version
        if p.keep is not None:
            for value in self.state[i].values():
                if hasattr(value, "shape") and tuple(value.shape) == p.shape:
                    value *= p.keep

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.step_count += 1
        for i, (p, state) in enumerate(zip(self.params, self.state)):
            if p.grad is None:
                continue
            self._sync_state(i)
            keep = p.keep
            g = p.grad if keep is None else p.grad * keep
            self._update(p, g, state)
            if keep is not None:
                p.data *= keep

    def _update(self, p: Parameter, g: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def training_metadata(self) -> TrainingMetadata:
        """This optimizer's part of a trajectory's metadata (kind, lr, and its own settings)."""
        return TrainingMetadata(optimizer=type(self).__name__.lower(), lr=self.lr)


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

    def training_metadata(self) -> TrainingMetadata:
        return replace(super().training_metadata(), momentum=self.momentum,
                       nesterov=self.nesterov, weight_decay=self.weight_decay)


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

    def training_metadata(self) -> TrainingMetadata:
        return replace(super().training_metadata(), betas=self.betas,
                       weight_decay=self.weight_decay, decoupled_weight_decay=self.decoupled,
                       extra={"eps": self.eps})


class AdamW(Adam):
    """Adam with decoupled weight decay: ``θ ← θ (1 − lr λ)`` before the Adam step."""

    decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
