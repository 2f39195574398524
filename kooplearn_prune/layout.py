"""Which named tensors make up the flat parameter vector θ (docs/theory.md §2).

``ParamLayout`` says where each tensor sits in θ and which entries are prunable; it maps flat
scores and masks back to per-tensor arrays. Recorders, masks, metrics, the KMD, the report and the
PyTorch adapter all share it, and it imports nothing of the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from .backend import asarray, backend_namespace, is_numpy_namespace, namespace_of

__all__ = ["ParamLayout", "layout_of"]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and prunability of the tensors concatenated (in this order) into θ.

    ``names[i]`` has shape ``shapes[i]`` and occupies ``slice(offsets[i], offsets[i] + sizes[i])``
    of the flat vector (each tensor flattened in C order). ``prunable[i]`` says whether a pruning
    method may remove entries of that tensor.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    prunable: tuple[bool, ...]
    offsets: tuple[int, ...] = field(init=False, repr=False)
    sizes: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        shapes = tuple(tuple(int(d) for d in s) for s in self.shapes)
        prunable = tuple(bool(p) for p in self.prunable)
        if not (len(names) == len(shapes) == len(prunable)):
            raise ValueError(
                f"ParamLayout: names, shapes and prunable must have equal lengths, got "
                f"{len(names)}, {len(shapes)}, {len(prunable)}"
            )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"ParamLayout: parameter names must be unique, repeated: {dup}")
        if any(d < 0 for s in shapes for d in s):
            raise ValueError("ParamLayout: shapes must have non-negative dimensions")
        sizes = tuple(math.prod(s) for s in shapes)
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)) \
            if sizes else ()
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "prunable", prunable)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "offsets", offsets)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_named_arrays(
        cls,
        named: Iterable[tuple[str, Any]],
        prunable: Sequence[bool] | None = None,
    ) -> ParamLayout:
        """Layout of ``(name, array)`` pairs; by default tensors with ``ndim >= 2`` are prunable."""
        pairs = [(name, tuple(getattr(a, "shape", np.shape(a)))) for name, a in named]
        if prunable is None:
            prunable = [len(shape) >= 2 for _, shape in pairs]
        return cls(tuple(n for n, _ in pairs), tuple(s for _, s in pairs), tuple(prunable))

    # ----------------------------------------------------------------- sizes and indices
    @property
    def size(self) -> int:
        """Total number of parameters ``n`` (length of the flat vector)."""
        return int(sum(self.sizes))

    @property
    def n_prunable(self) -> int:
        """Number of prunable entries."""
        return int(sum(s for s, p in zip(self.sizes, self.prunable) if p))

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError as err:
            raise KeyError(f"no parameter named {name!r}; the layout has {list(self.names)}") \
                from err

    def slice_of(self, name: str) -> slice:
        """Slice of the flat vector holding ``name``."""
        i = self.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def prunable_mask(self, xp: ModuleType | None = None) -> Any:
        """Boolean vector of length ``n``: True where the entry is prunable."""
        mask = np.zeros(self.size, dtype=bool)
        for off, size, p in zip(self.offsets, self.sizes, self.prunable):
            if p:
                mask[off : off + size] = True
        return mask if xp is None or is_numpy_namespace(xp) else asarray(mask, xp=xp)

    def check_vector(self, vector: Any, what: str = "vector") -> None:
        """Raise a clear ``ValueError`` unless ``vector`` has shape ``(..., n)`` for this layout."""
        shape = tuple(getattr(vector, "shape", ()))
        if not shape or shape[-1] != self.size:
            raise ValueError(
                f"{what} has shape {shape}, but the layout describes n={self.size} parameters "
                f"({len(self.names)} tensors: {', '.join(self.names[:4])}"
                f"{', ...' if len(self.names) > 4 else ''}); record and prune with the same layout"
            )

    # ----------------------------------------------------------------- flatten / unflatten
    def flatten(self, tensors: Mapping[str, Any] | Sequence[Any], out: Any = None) -> Any:
        """Concatenate per-tensor arrays (a mapping by name, or a sequence in layout order) into θ.

        With ``out`` (a preallocated vector of length ``n``) the values are written in place.
        """
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise KeyError(f"flatten: missing parameters {missing}")
            arrays = [tensors[n] for n in self.names]
        else:
            arrays = list(tensors)
            if len(arrays) != len(self.names):
                raise ValueError(
                    f"flatten: got {len(arrays)} arrays for a layout of {len(self.names)} tensors"
                )
        for name, shape, a in zip(self.names, self.shapes, arrays):
            if tuple(a.shape) != shape:
                raise ValueError(f"flatten: {name} has shape {tuple(a.shape)}, layout says {shape}")
        xp = namespace_of(*arrays) if arrays else backend_namespace()
        if out is None:
            return xp.concat([xp.reshape(a, (-1,)) for a in arrays]) if arrays else \
                xp.zeros((0,))
        self.check_vector(out, "out")
        for off, size, a in zip(self.offsets, self.sizes, arrays):
            out[off : off + size] = xp.reshape(a, (-1,))
        return out

    def unflatten(self, vector: Any) -> dict[str, Any]:
        """Split θ (length ``n``) into ``{name: array of its shape}`` (views where possible)."""
        self.check_vector(vector)
        xp = namespace_of(vector)
        return {
            name: xp.reshape(vector[..., off : off + size], (*vector.shape[:-1], *shape))
            for name, shape, off, size in zip(self.names, self.shapes, self.offsets, self.sizes)
        }

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "prunable": list(self.prunable)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParamLayout:
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]), tuple(d["prunable"]))

    def table(self) -> list[dict[str, Any]]:
        """One row per tensor: name, shape, size, offset, prunable."""
        return [
            {"name": n, "shape": s, "size": z, "offset": o, "prunable": p}
            for n, s, z, o, p in zip(self.names, self.shapes, self.sizes, self.offsets,
                                     self.prunable)
        ]


def layout_of(model: Any, prunable: Any = None) -> ParamLayout:
    """The ``ParamLayout`` of a native model's ``named_parameters()``.

    ``prunable`` may be ``None`` (each module's ``prunable_parameters``: the weights of
    ``Linear`` layers, not biases), a collection of
    parameter names, or a callable ``(name, parameter) -> bool``.
    """
    named = list(model.named_parameters())
    if prunable is None:
        default = {f"{name}.{own}" if name else own
                   for name, module in model.named_modules()
                   for own in getattr(module, "prunable_parameters", ())}
        flags = [name in default for name, _ in named]
    elif callable(prunable):
        flags = [bool(prunable(name, p)) for name, p in named]
    else:
        chosen = set(prunable)
        unknown = chosen - {name for name, _ in named}
        if unknown:
            raise ValueError(f"prunable names {sorted(unknown)} are not parameters of the model")
        flags = [name in chosen for name, _ in named]
    return ParamLayout.from_named_arrays([(n, p.data) for n, p in named], prunable=flags)
