"""``TrainingMetadata``: how a trajectory was trained, as one typed, frozen record.

Both recorders produce it (the native ``TrajectoryRecorder`` from a kooplearn optimizer's
``training_metadata()``, ``TorchRecorder`` from ``torch.optim`` param groups), ``Trajectory``
holds it and writes it to JSON, and the equivalence report reads its fields to explain gaps
between Koopman and classical pruning (docs/theory.md §11). The record says what the optimizer
*is*; what that means for the dynamics (e.g. that Adam's update is not a velocity) is the
report's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["TrainingMetadata", "FRAMEWORKS", "ADAM_KINDS"]

FRAMEWORKS = ("native", "torch")
ADAM_KINDS = ("adam", "adamw")
# Keys of the dict format written before this record existed, kept under ``extra`` on load.
_LEGACY_EXTRA_KEYS = ("eps", "dampening", "alpha", "amsgrad", "buffer_device", "dtype")
_OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "betas", "weight_decay",
                     "decoupled_weight_decay")


@dataclass(frozen=True)
class TrainingMetadata:
    """The training settings a recorded trajectory carries (all optional; defaults = unknown).

    * ``optimizer``: lower-case kind, ``"sgd"``, ``"adam"``, ``"adamw"`` or any other name
      (``"rmsprop"``, ...); ``None`` when unknown. ``lr``: the learning rate.
    * ``momentum``/``nesterov``: SGD's heavy-ball coefficient μ (``v ← μ v + g``) and Nesterov
      flag; 0 / False for optimizers without a momentum buffer (Adam: see ``betas``).
    * ``betas``: Adam's ``(β₁, β₂)``, else ``None``. ``weight_decay``: λ;
      ``decoupled_weight_decay``: ``θ ← θ (1 − lr λ)`` outside the gradient (AdamW) instead of L2.
    * ``every``: the snapshot stride Δ in optimizer steps (docs/theory.md §2);
      ``steps_per_epoch``: ``None`` when the recorder cannot know it (torch).
    * ``first_gradient_row``: the first row whose ``gradients`` entry is a real gradient (1 when
      row 0 was taken when recording began, before any step, and its gradient is zero).
    * ``framework``: ``"native"`` or ``"torch"`` (``None``: built by hand); ``device``: where the
      parameters lived (masks go there); ``loss``: the loss name, when known.
    * ``extra``: other settings as JSON scalars (``eps``, ``dampening``, ...).
    """

    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] | None = None
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    every: int = 1
    steps_per_epoch: int | None = None
    first_gradient_row: int = 0
    framework: str | None = None
    device: str | None = None
    loss: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalise in place: the record is frozen
        if self.optimizer is not None:
            set_(self, "optimizer", _text("optimizer", self.optimizer).lower())
        if self.lr is not None:
            set_(self, "lr", _number("lr", self.lr))
        set_(self, "momentum", _number("momentum", self.momentum))
        set_(self, "weight_decay", _number("weight_decay", self.weight_decay))
        for name in ("nesterov", "decoupled_weight_decay"):
            set_(self, name, _flag(name, getattr(self, name)))
        if self.betas is not None:
            set_(self, "betas", _betas(self.betas))
        set_(self, "every", _integer("every", self.every, 1))
        if self.steps_per_epoch is not None:
            set_(self, "steps_per_epoch", _integer("steps_per_epoch", self.steps_per_epoch, 1))
        set_(self, "first_gradient_row", _integer("first_gradient_row",
                                                  self.first_gradient_row, 0))
        if self.framework is not None and self.framework not in FRAMEWORKS:
            raise ValueError(f"metadata: framework must be one of {FRAMEWORKS} or None, "
                             f"got {self.framework!r}")
        for name in ("device", "loss"):
            if getattr(self, name) is not None:
                set_(self, name, _text(name, getattr(self, name)))
        if self.optimizer in ADAM_KINDS and self.momentum != 0:
            raise ValueError(f"metadata: momentum must be 0 for optimizer={self.optimizer!r} "
                             f"(Adam keeps no momentum buffer; its beta1 belongs in betas)")
        set_(self, "extra", MappingProxyType(_extra(self.extra)))

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``betas`` as a list, ``extra`` as a dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["betas"] = None if self.betas is None else list(self.betas)
        out["extra"] = dict(self.extra)
        return out

    def optimizer_settings(self) -> dict[str, Any]:
        """The optimizer fields only, JSON-ready (for summaries such as the demo's)."""
        full = self.to_dict()
        return {**{k: full[k] for k in _OPTIMIZER_FIELDS}, **full["extra"]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingMetadata:
        """Build from ``to_dict()`` output or from the older plain-dict format.

        The old format stored Adam's β₁ as a fake ``"momentum"``; it is dropped here (``betas``
        has it). Unknown keys raise a ``ValueError`` naming them.
        """
        if isinstance(data, TrainingMetadata):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"metadata must be a TrainingMetadata or a mapping, "
                            f"got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        extra = dict(values.pop("extra", None) or {})
        extra.update({k: data[k] for k in _LEGACY_EXTRA_KEYS if k in data and data[k] is not None})
        unknown = sorted(set(data) - known - set(_LEGACY_EXTRA_KEYS), key=str)
        if unknown:
            raise ValueError(f"metadata: unknown key {unknown[0]!r} (of {unknown}); the known keys "
                             f"are {sorted(known)}; put other settings under 'extra'")
        kind = str(values.get("optimizer") or "").lower()
        if kind in ADAM_KINDS:
            values.pop("momentum", None)  # the old format's β₁ under a false name
            values.pop("nesterov", None)
            values.setdefault("decoupled_weight_decay", kind == "adamw")
        for key in ("momentum", "weight_decay"):
            if key in values and values[key] is None:
                values[key] = 0.0
        for key in ("nesterov", "decoupled_weight_decay"):
            if key in values and values[key] is None:
                values[key] = False
        return cls(**values, extra=extra)

    @classmethod
    def coerce(cls, value: TrainingMetadata | Mapping[str, Any] | None) -> TrainingMetadata:
        """``value`` as a record: itself, converted from a mapping, or the empty record."""
        return cls() if value is None else cls.from_dict(value)


# ---------------------------------------------------------------------- validation helpers
def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"metadata: {name} must be a non-empty string or None, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    try:
        number = math.nan if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"metadata: {name} must be a non-negative finite number, got {value!r}")
    return number


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < minimum:
        raise ValueError(f"metadata: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"metadata: {name} must be True or False, got {value!r}")
    return bool(value)


def _betas(value: Any) -> tuple[float, float]:
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"metadata: betas must be a pair (beta1, beta2) or None, got {value!r}")
    b1, b2 = (_number(f"betas[{i}]", b) for i, b in enumerate(pair))
    if b1 >= 1 or b2 >= 1:
        raise ValueError(f"metadata: betas must lie in [0, 1), got {value!r}")
    return b1, b2


def _extra(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"metadata: extra must be a mapping, got {type(value).__name__}")
    out = {}
    for key, item in value.items():
        if hasattr(item, "item") and not isinstance(item, (str, bytes)):
            item = item.item()  # NumPy / torch scalars
        if not isinstance(key, str) or not (item is None or isinstance(item, (str, int, float,
                                                                              bool))):
            raise ValueError(f"metadata: extra[{key!r}] must be a JSON scalar under a string key, "
                             f"got {item!r}")
        out[key] = item
    return out
