"""The TOML file of ``kooplearn-prune experiment``: reading it, checking every key, and defaults.

An experiment file has six sections (every key is optional unless marked; unknown sections and
keys are rejected, so a typo never silently falls back to a default)::

    [experiment]  name (default: the file's stem), out (default "results/<name>", relative to
                  the working directory), seeds = [0, 1, 2], backend = "numpy" | "cupy"
    [data]        dataset = "digits" | "mnist" | "fashion_mnist" | "synthetic", plus the options
                  of that loader (n_train, n_test, seed, scale, ...; see kooplearn_prune.data).
                  The data split is fixed across the experiment's seeds ([data] seed, default 0).
    [model]       hidden = [128, 64], activation = "relu"
    [training]    epochs = 10, batch_size = 32, lr = 0.05, momentum = 0.9  (SGD)
    [koopman]     window_epochs = [1, 2, 4, 8], window_steps = 40, every = 1, solver = "auto"
    [pruning]     methods = ["kmp", "magnitude"], compressions = [2, 4, 8, 16, 32],
                  finetune_epochs = 1, finetune_lr = 0.01, finetune_momentum = 0.9,
                  overlap_sparsity (default: each compression's own sparsity),
                  reference (default "kmp" when listed): the method every other one is
                  compared with, seed by seed, in ``paired.csv`` (``app.study``)

A training window (docs/theory.md §2) ends at the end of epoch ``e`` and spans the last
``window_steps`` optimizer steps before it, one snapshot every ``every`` steps. Compressions are
over the prunable set (docs/theory.md §13): sparsity ``p = 1 − 1/c``.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import data as data_module
from ..koopman import ROBUST_SOLVERS, SOLVERS
from ..methods import get_method, method_names

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "parse_config", "bundled_configs",
           "RESULT_KEYS", "result_fingerprint", "first_difference"]

#: Sections whose values change the numbers of a run; an output directory holding results made
#: with other values of these cannot be resumed (seeds, methods, compressions and window epochs
#: may change: each run is independent of the others). The backend is one: numpy and cupy round
#: differently, and a resumed experiment is bit-identical to an uninterrupted one.
RESULT_KEYS = {
    "experiment": ("backend",),
    "data": None,  # the whole section but where the files come from (_DATA_NOT_RESULT)
    "model": ("hidden", "activation"),
    "training": ("epochs", "batch_size", "lr", "momentum"),
    "koopman": ("window_steps", "every", "solver"),
    "pruning": ("finetune_epochs", "finetune_lr", "finetune_momentum", "overlap_sparsity"),
}

# [data] options that say where the (hash-checked) files come from, not what they hold
_DATA_NOT_RESULT = ("cache_dir", "base_url")

_LOADERS: dict[str, Callable[..., Any]] = {
    "digits": data_module.load_digits,
    "mnist": data_module.load_mnist,
    "fashion_mnist": data_module.load_fashion_mnist,
    "synthetic": data_module.make_synthetic,
}
# chosen by the experiment itself, not by the file
_DATA_RESERVED = ("xp", "progress")
_ACTIVATIONS = ("relu", "tanh", "sigmoid")
_BACKENDS = ("numpy", "cupy")


class ConfigError(ValueError):
    """The experiment file is missing, not TOML, or has a key with a bad name, type or value."""


@dataclass(frozen=True)
class ExperimentConfig:
    """A checked experiment file. ``to_dict()`` gives back the six sections, defaults filled in."""

    name: str
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    backend: str = "numpy"
    dataset: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    window_epochs: tuple[int, ...] = (1, 2, 4, 8)
    window_steps: int = 40
    every: int = 1
    kmd_solver: str = "auto"
    methods: tuple[str, ...] = ("kmp", "magnitude")
    compressions: tuple[float, ...] = (2, 4, 8, 16, 32)
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    finetune_momentum: float = 0.9
    overlap_sparsity: float | None = None
    reference: str | None = None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration as TOML-like sections (JSON-serializable)."""
        d = asdict(self)
        return {
            "experiment": {"name": d["name"], "out": str(d["out"]), "seeds": list(d["seeds"]),
                           "backend": d["backend"]},
            "data": {"dataset": d["dataset"], **d["data_options"]},
            "model": {"hidden": list(d["hidden"]), "activation": d["activation"]},
            "training": {k: d[k] for k in ("epochs", "batch_size", "lr", "momentum")},
            "koopman": {"window_epochs": list(d["window_epochs"]),
                        "window_steps": d["window_steps"], "every": d["every"],
                        "solver": d["kmd_solver"]},
            "pruning": {"methods": list(d["methods"]), "compressions": list(d["compressions"]),
                        "finetune_epochs": d["finetune_epochs"], "finetune_lr": d["finetune_lr"],
                        "finetune_momentum": d["finetune_momentum"],
                        "overlap_sparsity": d["overlap_sparsity"],
                        "reference": d["reference"]},
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


# ------------------------------------------------------------------------------------ checking
def _where(section: str, key: str) -> str:
    return f"[{section}] {key}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _int(section: str, key: str, v: Any, minimum: int) -> int:
    if not _is_int(v):
        raise ConfigError(f"{_where(section, key)} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{_where(section, key)} must be >= {minimum}, got {v}")
    return int(v)


def _float(section: str, key: str, v: Any, lo: float, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False, hint: str = "") -> float:
    if not _is_number(v):
        raise ConfigError(f"{_where(section, key)} must be a number, got {v!r}")
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = hi is None or (v < hi if hi_open else v <= hi)
    if not (ok_lo and ok_hi):
        low = f"{'(' if lo_open else '['}{lo}"
        high = "inf)" if hi is None else f"{hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{_where(section, key)} must lie in {low}, {high}, got {v}{hint}")
    return float(v)


def _choice(section: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{_where(section, key)} = {v!r} is unknown; choose one of "
                          f"{', '.join(repr(c) for c in choices)}")
    return v


def _list(section: str, key: str, v: Any, item: Callable[[Any], Any], what: str, *,
          allow_empty: bool = False, unique: bool = True) -> tuple[Any, ...]:
    if not isinstance(v, list):
        raise ConfigError(f"{_where(section, key)} must be a list of {what}, got {v!r}")
    if not v and not allow_empty:
        raise ConfigError(f"{_where(section, key)} must list at least one of {what}")
    values = tuple(item(x) for x in v)
    if unique and len(set(values)) != len(values):
        raise ConfigError(f"{_where(section, key)} lists a value twice: {v}")
    return values


def _items(section: str, key: str, checker: Callable[[str, str, Any], Any]) -> Callable:
    def check(x: Any) -> Any:
        try:
            return checker(section, key, x)
        except ConfigError as err:
            raise ConfigError(f"{err} (in the list {_where(section, key)})") from None
    return check


def _table(raw: Mapping[str, Any], section: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    table = raw.get(section, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{section}] must be a table (a [{section}] header), got {table!r}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in [{section}]; allowed keys: "
                          f"{', '.join(allowed)}")
    return dict(table)


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

    t = _table(raw, "experiment", ("name", "out", "seeds", "backend"))
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
        kw["seeds"] = _list("experiment", "seeds", t["seeds"],
                            _items("experiment", "seeds", lambda s, k, x: _int(s, k, x, 0)),
                            "non-negative integers")
    if "backend" in t:
        kw["backend"] = _choice("experiment", "backend", t["backend"], _BACKENDS)

    kw.update(_parse_data(raw))

    t = _table(raw, "model", ("hidden", "activation"))
    if "hidden" in t:
        kw["hidden"] = _list("model", "hidden", t["hidden"],
                             _items("model", "hidden", lambda s, k, x: _int(s, k, x, 1)),
                             "positive layer widths", allow_empty=True, unique=False)
    if "activation" in t:
        kw["activation"] = _choice("model", "activation", t["activation"], _ACTIVATIONS)

    t = _table(raw, "training", ("epochs", "batch_size", "lr", "momentum"))
    for key in ("epochs", "batch_size"):
        if key in t:
            kw[key] = _int("training", key, t[key], 1)
    if "lr" in t:
        kw["lr"] = _float("training", "lr", t["lr"], 0.0, lo_open=True)
    if "momentum" in t:
        kw["momentum"] = _float("training", "momentum", t["momentum"], 0.0, 1.0, hi_open=True)
    epochs = kw.get("epochs", d["epochs"].default)

    if isinstance(raw.get("koopman"), Mapping) and "method" in raw["koopman"]:
        raise ConfigError(f"{source}: [koopman] method is now called solver (\"auto\", \"svd\" "
                          f"or \"gram\"); 'method' names a pruning method, under [pruning]")
    t = _table(raw, "koopman", ("window_epochs", "window_steps", "every", "solver"))
    if "window_epochs" in t:
        kw["window_epochs"] = tuple(sorted(_list(
            "koopman", "window_epochs", t["window_epochs"],
            _items("koopman", "window_epochs", lambda s, k, x: _int(s, k, x, 1)),
            "epoch numbers")))
    windows = kw.get("window_epochs", d["window_epochs"].default)
    if max(windows) > epochs:
        raise ConfigError(f"[koopman] window_epochs {list(windows)} go beyond [training] epochs "
                          f"= {epochs}; drop the later windows or train longer")
    for key in ("window_steps", "every"):
        if key in t:
            kw[key] = _int("koopman", key, t[key], 1)
    steps = kw.get("window_steps", d["window_steps"].default)
    every = kw.get("every", d["every"].default)
    if steps % every:
        raise ConfigError(f"[koopman] window_steps = {steps} must be a multiple of every = "
                          f"{every}, so that the window's last snapshot is the end of its epoch")
    if "solver" in t:
        kw["kmd_solver"] = _choice("koopman", "solver", t["solver"], SOLVERS + ROBUST_SOLVERS)

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
    table = raw.get("data", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"[data] must be a table (a [data] header), got {table!r}")
    dataset = table.get("dataset", "digits")
    dataset = _choice("data", "dataset", dataset, tuple(_LOADERS))
    accepted = tuple(p for p in inspect.signature(_LOADERS[dataset]).parameters
                     if p not in _DATA_RESERVED)
    options = _table(raw, "data", ("dataset", *accepted))
    options.pop("dataset", None)
    return {"dataset": dataset, "data_options": options}


def _parse_pruning(raw: Mapping[str, Any]) -> dict[str, Any]:
    t = _table(raw, "pruning", ("methods", "compressions", "finetune_epochs", "finetune_lr",
                                "finetune_momentum", "overlap_sparsity", "reference"))
    kw: dict[str, Any] = {}
    if "methods" in t:
        kw["methods"] = _list("pruning", "methods", t["methods"],
                              _items("pruning", "methods",
                                     lambda s, k, x: _choice(s, k, x, method_names())),
                              "method names")

    def compression(s: str, k: str, x: Any) -> float:
        value = _float(s, k, x, 1.0, hint=" (compression = prunable / kept >= 1)")
        return int(value) if _is_int(x) else value

    if "compressions" in t:
        kw["compressions"] = _list("pruning", "compressions", t["compressions"],
                                   _items("pruning", "compressions", compression),
                                   "compression ratios")
    if "finetune_epochs" in t:
        kw["finetune_epochs"] = _int("pruning", "finetune_epochs", t["finetune_epochs"], 0)
    if "finetune_lr" in t:
        kw["finetune_lr"] = _float("pruning", "finetune_lr", t["finetune_lr"], 0.0, lo_open=True)
    if "finetune_momentum" in t:
        kw["finetune_momentum"] = _float("pruning", "finetune_momentum", t["finetune_momentum"],
                                         0.0, 1.0, hi_open=True)
    if "overlap_sparsity" in t:
        kw["overlap_sparsity"] = _float("pruning", "overlap_sparsity", t["overlap_sparsity"],
                                        0.0, 1.0, lo_open=True, hi_open=True)
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
    """The values of ``RESULT_KEYS``: two configs with equal fingerprints give the same runs."""
    sections = config.to_dict()
    sections["data"] = {k: v for k, v in sections["data"].items() if k not in _DATA_NOT_RESULT}
    return {sec: (sections[sec] if keys is None else {k: sections[sec][k] for k in keys})
            for sec, keys in RESULT_KEYS.items()}


def first_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """``"[section] key: A there, B here"`` for the first differing key, or None."""
    for sec in sorted(set(saved) | set(current)):
        a, b = saved.get(sec, {}), current.get(sec, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"[{sec}] {key}: {a.get(key)!r} there, {b.get(key)!r} here"
    return None
