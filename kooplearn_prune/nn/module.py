"""``Module`` and ``Parameter``: named containers of trainable tensors.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it, in assignment order, so
``named_parameters()`` yields stable dotted names such as ``"0.weight"`` or ``"encoder.1.bias"``.
Those names key state dicts, masks and the ``ParamLayout`` of recorded trajectories.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._archive import read_npz_checked, save_npz_checked
from ..autograd import Tensor
from ..backend import asarray, namespace_of, to_numpy

__all__ = ["Parameter", "Module", "check_keep_mask"]

STATE_FORMAT = "kooplearn_prune.state_dict"  # the format named in a saved file's manifest


def check_keep_mask(where: str, name: str, mask: Any, shape: tuple[int, ...]) -> None:
    """Raise a clear error unless ``mask`` is a boolean array of exactly ``shape``."""
    if tuple(getattr(mask, "shape", ())) != tuple(shape):
        raise ValueError(f"{where}: mask for {name} has shape {tuple(getattr(mask, 'shape', ()))}, "
                         f"parameter has {tuple(shape)}")
    if not namespace_of(mask).isdtype(mask.dtype, "bool"):
        raise TypeError(f"{where}: mask for {name} must be boolean (True = kept), "
                        f"got dtype {mask.dtype}")


class Parameter(Tensor):
    """A Tensor that a Module trains (``requires_grad=True``), with an optional keep-mask.

    ``mask`` is the one place a native model's pruning lives (docs/theory.md §8): a bool array of
    the parameter's shape (True = kept) or None. Setting it validates it, zeroes the pruned
    entries at once and bumps ``mask_version``; every optimizer then keeps those entries, and their
    optimizer state, at exactly zero. ``keep`` is the same mask as a 0/1 array of the parameter's
    dtype (what the update multiplies by), or None.
    """

    __slots__ = ("_mask", "_keep", "mask_version")

    def __init__(self, data: Any, *, name: str | None = None, xp: Any = None) -> None:
        super().__init__(data, requires_grad=True, name=name, xp=xp)
        self._mask: Any = None
        self._keep: Any = None
        self.mask_version = 0

    @property
    def mask(self) -> Any:
        """The keep-mask (bool, True = kept), or None when nothing is pruned."""
        return self._mask

    @mask.setter
    def mask(self, mask: Any) -> None:
        if mask is not None:
            check_keep_mask("Parameter.mask", self.name or "parameter", mask, self.shape)
            mask = asarray(mask, xp=self.xp)
            if bool(self.xp.all(mask)):
                mask = None  # nothing pruned: nothing to enforce
        self._mask = mask
        self._keep = None if mask is None else self.xp.astype(mask, self.data.dtype)
        if mask is not None:
            self.data = self.xp.where(mask, self.data, self.xp.zeros_like(self.data))
        self.mask_version += 1

    @property
    def keep(self) -> Any:
        """The keep-mask as 0/1 values of the parameter's dtype, or None."""
        return self._keep


class Module:
    """Base class of layers and models: override ``forward``; call the module to run it."""

    #: Names of this module's own parameters that pruning removes by default.
    prunable_parameters: tuple[str, ...] = ()

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call Module.__init__() in {type(self).__name__}.__init__ first")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(dotted name, module)`` for this module and every submodule, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)``: each module's own parameters (in assignment order) before
        its submodules', depth first, as in PyTorch; a shared parameter appears once."""
        seen: set[int] = set()
        for mod_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{mod_name}.{name}" if mod_name else name), param

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """``{dotted name: host NumPy copy}`` of every parameter."""
        return {name: np.array(to_numpy(p.data), copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Module:
        """Copy values into the parameters; shapes are checked before anything is changed."""
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in state]
        unexpected = [n for n in state if n not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected} "
                           f"(pass strict=False to load a subset)")
        for name, value in state.items():
            if name in params and tuple(np.shape(value)) != params[name].shape:
                raise ValueError(f"load_state_dict: {name} has shape {tuple(np.shape(value))} in "
                                 f"the state dict but {params[name].shape} in the model")
        for name, value in state.items():
            if name in params:
                p = params[name]
                p.data = asarray(np.asarray(to_numpy(value), dtype=to_numpy(p.data).dtype), xp=p.xp)
                if p.keep is not None:  # a pruned weight stays pruned
                    p.data = p.data * p.keep
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``state_dict()`` to an ``.npz`` file atomically, one array per parameter name,
        with a manifest of checksums in the zip's comment that ``load`` verifies."""
        return save_npz_checked(path, self.state_dict(), STATE_FORMAT, 2)

    def load(self, path: str | os.PathLike, strict: bool = True) -> Module:
        """Load parameters saved by ``save``; a damaged file is a ``ValueError`` naming it.

        Files with a manifest have every array checked (names, shapes, dtypes, CRC-32); older
        files without one are checked for structure (a readable, complete archive).
        """
        path = Path(path)
        state, _ = read_npz_checked(path, "state-dict", STATE_FORMAT, 2)
        try:
            return self.load_state_dict(state, strict=strict)
        except (KeyError, ValueError) as err:
            detail = err.args[0] if err.args else err
            raise type(err)(f"cannot load {path} into {type(self).__name__}: {detail}") from err

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        if len(lines) == 1:
            return f"{type(self).__name__}({self.extra_repr()})"
        return "\n".join(lines) + ")"

    def extra_repr(self) -> str:
        return ""
