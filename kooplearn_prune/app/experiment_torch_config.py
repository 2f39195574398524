"""The experiment file's keys for PyTorch models, optimizers, schedules, devices and the KMD rank.

These keys extend the six sections of ``experiment_config`` (every one optional)::

    [experiment]  device = "cpu" | "cuda"   (torch models; the recording buffer lives there too)
    [data]        resize = 28 (square images of 28x28, bilinear), channels = 3 (grey images
                  repeated over 3 channels): so that the embedded 8x8 digits feed MnistNet or
                  a CIFAR ResNet; torch models only
    [model]       framework = "native" (the MLP of hidden / activation) | "torch";
                  name = "mnistnet" | "resnet20" | ... | "package.module:function" (torch);
                  kwargs = { ... } handed to the factory (torch)
    [training]    optimizer = "sgd" | "adam" | "adamw", weight_decay = 0.0,
                  schedule = "constant" | "step" | "cosine" (torch), milestones = [epochs]
                  and gamma = 0.1 for "step" (the rate is multiplied by gamma at each milestone)
    [koopman]     rank = "full" (every direction above the precision floor, KMD()'s default)
                  | "optimal" (the Gavish-Donoho rank, docs/theory.md §6) | an integer
    [pruning]     conventions = "library" (every Linear / Conv weight prunable) |
                  "shrinkbench" (ShrinkBench's choice: the classifier is not pruned)

``EXTENDED_DEFAULTS`` lists them with their defaults: a key at its default is left out of the
result fingerprint, so results made before these keys existed still resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_checks import (
    ConfigError,
    choice,
    float_value,
    int_value,
    is_int,
    items,
    list_of,
    table,
)

__all__ = ["FRAMEWORKS", "CONVENTIONS", "OPTIMIZERS", "SCHEDULES", "DEVICES", "EXTENDED_DEFAULTS",
           "parse_model", "parse_training", "parse_rank", "parse_device", "parse_data_shape",
           "parse_conventions", "kmd_rank"]

FRAMEWORKS = ("native", "torch")
CONVENTIONS = ("library", "shrinkbench")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("cpu", "cuda")
_ACTIVATIONS = ("relu", "tanh", "sigmoid")
_RANK_WORDS = ("optimal", "full")

#: ``(section, key): default`` of every key this module adds (see the module docstring).
EXTENDED_DEFAULTS: dict[tuple[str, str], Any] = {
    ("experiment", "device"): "cpu",
    ("data", "resize"): None,
    ("data", "channels"): None,
    ("model", "framework"): "native",
    ("model", "name"): None,
    ("model", "kwargs"): {},
    ("training", "optimizer"): "sgd",
    ("training", "weight_decay"): 0.0,
    ("training", "schedule"): "constant",
    ("training", "milestones"): [],
    ("training", "gamma"): 0.1,
    ("koopman", "rank"): "full",
    ("pruning", "conventions"): "library",
}

_TORCH_ONLY = "applies to [model] framework = 'torch'"


def _framework(raw: Mapping[str, Any]) -> str:
    model = raw.get("model", {})
    value = model.get("framework", "native") if isinstance(model, Mapping) else "native"
    return choice("model", "framework", value, FRAMEWORKS)


def parse_model(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``[model]``: the native MLP (hidden, activation) or a torch model (name, kwargs)."""
    t = table(raw, "model", ("framework", "hidden", "activation", "name", "kwargs"))
    kw: dict[str, Any] = {"framework": _framework(raw)}
    if kw["framework"] == "torch":
        for key in ("hidden", "activation"):
            if key in t:
                raise ConfigError(f"[model] {key} describes the native MLP; a torch model's "
                                  f"layers come from [model] name: remove {key}, or set "
                                  f"framework = 'native'")
        name = t.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"[model] name must name the torch model: a built-in such as "
                              f"'mnistnet' or 'resnet20', or 'package.module:function' returning "
                              f"a torch.nn.Module; got {name!r}")
        kw["model_name"] = name.strip()
        kwargs = t.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"[model] kwargs must be a table of keyword arguments for the "
                              f"model factory, e.g. kwargs = {{ num_classes = 10 }}; got "
                              f"{kwargs!r}")
        kw["model_kwargs"] = dict(kwargs)
        return kw
    for key in ("name", "kwargs"):
        if key in t:
            raise ConfigError(f"[model] {key} {_TORCH_ONLY}; the native MLP is described by "
                              f"hidden and activation: set framework = 'torch' or remove {key}")
    if "hidden" in t:
        kw["hidden"] = list_of("model", "hidden", t["hidden"],
                               items("model", "hidden", lambda s, k, x: int_value(s, k, x, 1)),
                               "positive layer widths", allow_empty=True, unique=False)
    if "activation" in t:
        kw["activation"] = choice("model", "activation", t["activation"], _ACTIVATIONS)
    return kw


def parse_training(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``[training]``: epochs, batch size, optimizer and its settings, the rate schedule."""
    t = table(raw, "training", ("epochs", "batch_size", "lr", "momentum", "optimizer",
                                "weight_decay", "schedule", "milestones", "gamma"))
    framework = _framework(raw)
    kw: dict[str, Any] = {}
    for key in ("epochs", "batch_size"):
        if key in t:
            kw[key] = int_value("training", key, t[key], 1)
    if "lr" in t:
        kw["lr"] = float_value("training", "lr", t["lr"], 0.0, lo_open=True)
    if "optimizer" in t:
        kw["optimizer"] = choice("training", "optimizer", t["optimizer"], OPTIMIZERS)
    if "momentum" in t:
        if kw.get("optimizer", "sgd") != "sgd":
            raise ConfigError(f"[training] momentum applies to optimizer = 'sgd' ("
                              f"{kw['optimizer']} keeps its own moment estimates): remove "
                              f"momentum or set optimizer = 'sgd'")
        kw["momentum"] = float_value("training", "momentum", t["momentum"], 0.0, 1.0,
                                     hi_open=True)
    if "weight_decay" in t:
        kw["weight_decay"] = float_value("training", "weight_decay", t["weight_decay"], 0.0)
    schedule = choice("training", "schedule", t.get("schedule", "constant"), SCHEDULES)
    if schedule != "constant" and framework != "torch":
        raise ConfigError(f"[training] schedule = {schedule!r} {_TORCH_ONLY} (the native trainer "
                          f"keeps a constant rate): set schedule = 'constant'")
    kw["schedule"] = schedule
    for key in ("milestones", "gamma"):
        if key in t and schedule != "step":
            raise ConfigError(f"[training] {key} applies to schedule = 'step': remove it or "
                              f"set schedule = 'step'")
    if schedule == "step":
        if "milestones" not in t:
            raise ConfigError("[training] schedule = 'step' needs milestones = [epoch, ...], the "
                              "epochs after which the rate is multiplied by gamma")
        kw["milestones"] = tuple(sorted(list_of(
            "training", "milestones", t["milestones"],
            items("training", "milestones", lambda s, k, x: int_value(s, k, x, 1)),
            "epoch numbers")))
        if "gamma" in t:
            kw["gamma"] = float_value("training", "gamma", t["gamma"], 0.0, 1.0, lo_open=True)
    return kw


def parse_rank(value: Any) -> int | str:
    """``[koopman] rank``: ``"optimal"``, ``"full"`` or a positive integer."""
    if is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, str) and value in _RANK_WORDS:
        return value
    raise ConfigError(f"[koopman] rank = {value!r} is unknown; choose 'full' (every "
                      f"direction above the precision floor, KMD()'s default), 'optimal' (the "
                      f"Gavish-Donoho rank) or a positive integer")


def kmd_rank(rank: int | str) -> int | str | None:
    """The ``KMD(rank=...)`` argument of ``[koopman] rank`` (``"full"`` is ``None``)."""
    return None if rank == "full" else rank


def parse_device(raw: Mapping[str, Any], t: Mapping[str, Any]) -> dict[str, Any]:
    """``[experiment] device`` (``t`` is the checked ``[experiment]`` table)."""
    if "device" not in t:
        return {}
    device = choice("experiment", "device", t["device"], DEVICES)
    if device != "cpu" and _framework(raw) != "torch":
        raise ConfigError(f"[experiment] device = {device!r} {_TORCH_ONLY}; the native MLP "
                          f"runs on a GPU through backend = 'cupy'")
    return {"device": device}


def parse_data_shape(raw: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``[data] resize`` and ``channels``, taken out of the loader's ``options``."""
    kw: dict[str, Any] = {}
    for key in ("resize", "channels"):
        if key not in options:
            continue
        value = options.pop(key)
        if _framework(raw) != "torch":
            raise ConfigError(f"[data] {key} {_TORCH_ONLY} (the native MLP reads flat rows): "
                              f"remove {key}")
        kw[key] = int_value("data", key, value, 1)
    return kw


def parse_conventions(raw: Mapping[str, Any], t: Mapping[str, Any]) -> dict[str, Any]:
    """``[pruning] conventions`` (``t`` is the checked ``[pruning]`` table)."""
    if "conventions" not in t:
        return {}
    conventions = choice("pruning", "conventions", t["conventions"], CONVENTIONS)
    if conventions != "library" and _framework(raw) != "torch":
        raise ConfigError(f"[pruning] conventions = {conventions!r} {_TORCH_ONLY}; the native "
                          f"MLP prunes every weight matrix ('library')")
    return {"conventions": conventions}
