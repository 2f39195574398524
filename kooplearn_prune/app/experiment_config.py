"""The TOML file of ``kooplearn-prune experiment``: reading it, checking every key, and defaults.

An experiment file has six sections (every key is optional unless marked; unknown sections and
keys are rejected, so a typo never silently falls back to a default)::

    [experiment]  name (default: the file's stem), out (default "results/<name>", relative to
                  the working directory), seeds = [0, 1, 2], backend = "numpy" | "cupy"
    [data]        dataset = "digits" | "mnist" | "fashion_mnist" | "cifar10" | "cifar100" |
                  "synthetic", plus the options
                  of that loader (n_train, n_test, seed, scale, ...; see kooplearn_prune.data).
                  The data split is fixed across the experiment's seeds ([data] seed, default 0).
    [model]       hidden = [128, 64], activation = "relu"
    [training]    epochs = 10, batch_size = 32, lr = 0.05, momentum = 0.9  (SGD)
    [koopman]     window_epochs = [1, 2, 4, 8], window_steps = 40, every = 1, solver = "auto",
                  rank = "full"
    [pruning]     methods = ["kmp", "magnitude"], compressions = [2, 4, 8, 16, 32],
                  finetune_epochs = 1, finetune_lr = 0.01, finetune_momentum = 0.9,
                  overlap_sparsity (default: each compression's own sparsity),
                  reference (default "kmp" when listed): the method every other one is
                  compared with, seed by seed, in ``paired.csv`` (``app.study``)

PyTorch models (``[model] framework = "torch"``), optimizers, rate schedules, the device, the
KMD rank and the prunable-tensor conventions are read by ``experiment_torch_config``, which
lists those keys.

A training window (docs/theory.md §2) ends at the end of epoch ``e`` and spans the last
``window_steps`` optimizer steps before it, one snapshot every ``every`` steps. Compressions are
over the prunable set (docs/theory.md §13): sparsity ``p = 1 − 1/c``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import data as data_module
from ..koopman import ROBUST_SOLVERS, SOLVERS
from ..methods import get_method, method_names
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
from .experiment_torch_config import (
    EXTENDED_DEFAULTS,
    parse_conventions,
    parse_data_shape,
    parse_device,
    parse_model,
    parse_rank,
    parse_training,
)

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "parse_config", "bundled_configs",
           "RESULT_KEYS", "result_fingerprint", "first_difference"]

#: Sections whose values change the numbers of a run; an output directory holding results made
#: with other values of these cannot be resumed (seeds, methods, compressions and window epochs
#: may change: each run is independent of the others). The backend is one: numpy and cupy round
#: differently, and a resumed experiment is bit-identical to an uninterrupted one.
RESULT_KEYS = {
    "experiment": ("backend", "device"),
    "data": None,  # the whole section but where the files come from (_DATA_NOT_RESULT)
    "model": ("framework", "hidden", "activation", "name", "kwargs"),
    "training": ("epochs", "batch_size", "lr", "momentum", "optimizer", "weight_decay",
                 "schedule", "milestones", "gamma"),
    "koopman": ("window_steps", "every", "solver", "rank"),
    "pruning": ("finetune_epochs", "finetune_lr", "finetune_momentum", "overlap_sparsity",
                "conventions"),
}

# [data] options that say where the (hash-checked) files come from, not what they hold
_DATA_NOT_RESULT = ("cache_dir", "base_url")

_LOADERS: dict[str, Callable[..., Any]] = {
    "digits": data_module.load_digits,
    "mnist": data_module.load_mnist,
    "fashion_mnist": data_module.load_fashion_mnist,
    "cifar10": data_module.load_cifar10,
    "cifar100": data_module.load_cifar100,
    "synthetic": data_module.make_synthetic,
}
# chosen by the experiment itself, not by the file
_DATA_RESERVED = ("xp", "progress")
_BACKENDS = ("numpy", "cupy")


@dataclass(frozen=True)
class ExperimentConfig:
    """A checked experiment file. ``to_dict()`` gives back the six sections, defaults filled in."""

    name: str
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    backend: str = "numpy"
    device: str = "cpu"
    dataset: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None
    channels: int | None = None
    framework: str = "native"
    model_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    window_epochs: tuple[int, ...] = (1, 2, 4, 8)
    window_steps: int = 40
    every: int = 1
    kmd_solver: str = "auto"
    kmd_rank: int | str = "full"
    methods: tuple[str, ...] = ("kmp", "magnitude")
    compressions: tuple[float, ...] = (2, 4, 8, 16, 32)
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    finetune_momentum: float = 0.9
    overlap_sparsity: float | None = None
    reference: str | None = None
    conventions: str = "library"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration as TOML-like sections (JSON-serializable)."""
        d = asdict(self)
        return {
            "experiment": {"name": d["name"], "out": str(d["out"]), "seeds": list(d["seeds"]),
                           "backend": d["backend"], "device": d["device"]},
            "data": {"dataset": d["dataset"], **d["data_options"], "resize": d["resize"],
                     "channels": d["channels"]},
            "model": {"framework": d["framework"], "hidden": list(d["hidden"]),
                      "activation": d["activation"], "name": d["model_name"],
                      "kwargs": d["model_kwargs"]},
            "training": {**{k: d[k] for k in ("epochs", "batch_size", "lr", "momentum",
                                              "optimizer", "weight_decay", "schedule")},
                         "milestones": list(d["milestones"]), "gamma": d["gamma"]},
            "koopman": {"window_epochs": list(d["window_epochs"]),
                        "window_steps": d["window_steps"], "every": d["every"],
                        "solver": d["kmd_solver"], "rank": d["kmd_rank"]},
            "pruning": {"methods": list(d["methods"]), "compressions": list(d["compressions"]),
                        "finetune_epochs": d["finetune_epochs"], "finetune_lr": d["finetune_lr"],
                        "finetune_momentum": d["finetune_momentum"],
                        "overlap_sparsity": d["overlap_sparsity"],
                        "reference": d["reference"], "conventions": d["conventions"]},
        }

    @property
    def paired_reference(self) -> str | None:
        """The method of the paired comparison: ``reference``, else ``"kmp"`` when listed."""
        if self.reference is not None:
            return self.reference
        return "kmp" if "kmp" in self.methods and len(self.methods) > 1 else None

    @property
    def sparsities(self) -> tuple[float, ...]:
        """``p = 1 − 1/c`` for each compression ``c`` (docs/theory.md §13)."""
        return tuple(1.0 - 1.0 / c for c in self.compressions)


# ------------------------------------------------------------------------------------ reading
def bundled_configs() -> dict[str, Path]:
    """The experiment files shipped with the package, by stem (``quick``, ``paper_mnist``)."""
    folder = Path(__file__).parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError as err:  # pragma: no cover - depends on the interpreter
        raise ConfigError("reading TOML on Python 3.10 needs tomli: pip install tomli") from err
    return tomli


def load_config(path: str | Path, out: str | Path | None = None) -> ExperimentConfig:
    """Read and check the experiment file ``path`` (or a bundled one by name, e.g. ``"quick"``).

    ``out`` replaces ``[experiment] out``. Raises ``ConfigError`` naming the file and key.
    """
    path = Path(path)
    if not path.is_file():
        bundled = bundled_configs()
        if len(path.parts) == 1 and path.suffix in ("", ".toml") and path.stem in bundled:
            path = bundled[path.stem]
        elif path.is_dir():
            raise ConfigError(f"config {path} is a directory; pass the path of a .toml file")
        else:
            raise ConfigError(f"config file {path} does not exist; pass the path of a TOML file "
                              f"or a bundled config name ({', '.join(bundled)})")
    toml = _toml_module()
    try:
        with open(path, "rb") as fh:
            raw = toml.load(fh)
    except toml.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    return parse_config(raw, source=path, out=out)


def parse_config(raw: Mapping[str, Any], *, source: str | Path = "config",
                 out: str | Path | None = None) -> ExperimentConfig:
    """Check the mapping of a parsed TOML file and fill in defaults (see the module docstring)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections")
    sections = ("experiment", "data", "model", "training", "koopman", "pruning")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(f'[{s}]' for s in unknown)} in "
                          f"{source}; allowed sections: {', '.join(f'[{s}]' for s in sections)}")
    d = ExperimentConfig.__dataclass_fields__
    kw: dict[str, Any] = {}

    t = table(raw, "experiment", ("name", "out", "seeds", "backend", "device"))
    name = t.get("name", Path(str(source)).stem)
    if (not isinstance(name, str) or name.strip() in ("", ".", "..")
            or any(c in name for c in "/\\\0")):
        raise ConfigError(f"[experiment] name must be a directory name (not empty, not '.' or "
                          f"'..', no '/' or '\\'), got {name!r}")
    kw["name"] = name.strip()
    out_value = t.get("out", f"results/{kw['name']}")
    if not isinstance(out_value, str) or not out_value.strip():
        raise ConfigError(f"[experiment] out must be a directory path (a string), got "
                          f"{out_value!r}")
    kw["out"] = Path(out if out is not None else out_value)
    if "seeds" in t:
        kw["seeds"] = list_of("experiment", "seeds", t["seeds"],
                              items("experiment", "seeds", lambda s, k, x: int_value(s, k, x, 0)),
                              "non-negative integers")
    if "backend" in t:
        kw["backend"] = choice("experiment", "backend", t["backend"], _BACKENDS)
    kw.update(parse_device(raw, t))

    kw.update(_parse_data(raw))

    kw.update(parse_model(raw))
    kw.update(parse_training(raw))
    epochs = kw.get("epochs", d["epochs"].default)

    if isinstance(raw.get("koopman"), Mapping) and "method" in raw["koopman"]:
        raise ConfigError(f"{source}: [koopman] method is now called solver (\"auto\", \"svd\" "
                          f"or \"gram\"); 'method' names a pruning method, under [pruning]")
    t = table(raw, "koopman", ("window_epochs", "window_steps", "every", "solver", "rank"))
    if "window_epochs" in t:
        kw["window_epochs"] = tuple(sorted(list_of(
            "koopman", "window_epochs", t["window_epochs"],
            items("koopman", "window_epochs", lambda s, k, x: int_value(s, k, x, 1)),
            "epoch numbers")))
    windows = kw.get("window_epochs", d["window_epochs"].default)
    if max(windows) > epochs:
        raise ConfigError(f"[koopman] window_epochs {list(windows)} go beyond [training] epochs "
                          f"= {epochs}; drop the later windows or train longer")
    for key in ("window_steps", "every"):
        if key in t:
            kw[key] = int_value("koopman", key, t[key], 1)
    steps = kw.get("window_steps", d["window_steps"].default)
    every = kw.get("every", d["every"].default)
    if steps % every:
        raise ConfigError(f"[koopman] window_steps = {steps} must be a multiple of every = "
                          f"{every}, so that the window's last snapshot is the end of its epoch")
    if "solver" in t:
        kw["kmd_solver"] = choice("koopman", "solver", t["solver"], SOLVERS + ROBUST_SOLVERS)
    if "rank" in t:
        kw["kmd_rank"] = parse_rank(t["rank"])

    kw.update(_parse_pruning(raw))
    _check_snapshots(steps // every + 1, kw.get("methods", d["methods"].default))
    return ExperimentConfig(**kw)


def _check_snapshots(snapshots: int, methods: tuple[str, ...]) -> None:
    """Every method can be scored from a window of ``snapshots`` snapshots (KMD: 3, trend: 2)."""
    for name in methods:
        method = get_method(name)
        needed = max(method.min_snapshots, 3 if method.needs_kmd else 1)
        if snapshots < needed:
            what = "the KMD" if method.needs_kmd else "a trend"
            raise ConfigError(
                f"[koopman] window_steps / every gives {snapshots} snapshot(s) per window; "
                f"[pruning] method {name!r} needs at least {needed} ({what} needs "
                f"{needed} points): raise window_steps or lower every")


def _parse_data(raw: Mapping[str, Any]) -> dict[str, Any]:
    section = raw.get("data", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"[data] must be a table (a [data] header), got {section!r}")
    dataset = section.get("dataset", "digits")
    dataset = choice("data", "dataset", dataset, tuple(_LOADERS))
    accepted = tuple(p for p in inspect.signature(_LOADERS[dataset]).parameters
                     if p not in _DATA_RESERVED)
    options = table(raw, "data", ("dataset", *accepted, "resize", "channels"))
    options.pop("dataset", None)
    shape = parse_data_shape(raw, options)
    return {"dataset": dataset, "data_options": options, **shape}


def _parse_pruning(raw: Mapping[str, Any]) -> dict[str, Any]:
    t = table(raw, "pruning", ("methods", "compressions", "finetune_epochs", "finetune_lr",
                               "finetune_momentum", "overlap_sparsity", "reference",
                               "conventions"))
    kw: dict[str, Any] = parse_conventions(raw, t)
    if "methods" in t:
        kw["methods"] = list_of("pruning", "methods", t["methods"],
                                items("pruning", "methods",
                                      lambda s, k, x: choice(s, k, x, method_names())),
                                "method names")

    def compression(s: str, k: str, x: Any) -> float:
        value = float_value(s, k, x, 1.0, hint=" (compression = prunable / kept >= 1)")
        return int(value) if is_int(x) else value

    if "compressions" in t:
        kw["compressions"] = list_of("pruning", "compressions", t["compressions"],
                                     items("pruning", "compressions", compression),
                                     "compression ratios")
    if "finetune_epochs" in t:
        kw["finetune_epochs"] = int_value("pruning", "finetune_epochs", t["finetune_epochs"], 0)
    if "finetune_lr" in t:
        kw["finetune_lr"] = float_value("pruning", "finetune_lr", t["finetune_lr"], 0.0,
                                        lo_open=True)
    if "finetune_momentum" in t:
        kw["finetune_momentum"] = float_value("pruning", "finetune_momentum",
                                              t["finetune_momentum"], 0.0, 1.0, hi_open=True)
    if "overlap_sparsity" in t:
        kw["overlap_sparsity"] = float_value("pruning", "overlap_sparsity",
                                             t["overlap_sparsity"], 0.0, 1.0, lo_open=True,
                                             hi_open=True)
    if "reference" in t:
        methods = kw.get("methods", ExperimentConfig.__dataclass_fields__["methods"].default)
        reference = t["reference"]
        if not isinstance(reference, str) or reference not in methods:
            raise ConfigError(f"[pruning] reference = {reference!r} must be one of [pruning] "
                              f"methods {list(methods)}: add it to methods or pick one of them")
        if len(methods) < 2:
            raise ConfigError(f"[pruning] reference = {reference!r} has nothing to be compared "
                              f"with: list at least one more method in [pruning] methods")
        kw["reference"] = reference
    return kw


def result_fingerprint(config: ExperimentConfig) -> dict[str, Any]:
    """The values of ``RESULT_KEYS``: two configs with equal fingerprints give the same runs.

    A key of ``EXTENDED_DEFAULTS`` at its default is left out, so that results made before
    that key existed keep their fingerprint.
    """
    sections = config.to_dict()
    sections["data"] = {k: v for k, v in sections["data"].items() if k not in _DATA_NOT_RESULT}
    found = {sec: (sections[sec] if keys is None else {k: sections[sec][k] for k in keys})
             for sec, keys in RESULT_KEYS.items()}
    for (sec, key), default in EXTENDED_DEFAULTS.items():
        if key in found[sec] and found[sec][key] == default:
            del found[sec][key]
    return found


def first_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """``"[section] key: A there, B here"`` for the first differing key, or None."""
    for sec in sorted(set(saved) | set(current)):
        a, b = saved.get(sec, {}), current.get(sec, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"[{sec}] {key}: {a.get(key)!r} there, {b.get(key)!r} here"
    return None


def load_data(config: ExperimentConfig, progress: bool) -> data_module.Dataset:
    """The dataset of ``[data]``, for both the native and the PyTorch runner."""
    options = dict(config.data_options)
    if config.dataset in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        options["progress"] = progress
    try:
        data = data_module.load_dataset(config.dataset, **options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"[data] {err}") from err
    if data.task != "classification":
        raise ConfigError(f"[data] dataset {config.dataset!r} gives a {data.task} task; the "
                          f"experiment measures accuracy: set task = 'classification'")
    return data
