"""Iterative pruning with rewinding, lottery-ticket style (docs/theory.md §8, §9, §13).

Level 0 trains the dense network. Level ``L = 1..levels``: score the previous run's recorded
window with a method of the registry (``kmp`` by default), remove ``fraction`` of the prunable
weights that remain (``pruning.levels.prune_remaining``: sparsity ``1 − (1 − p)^L``, previously
pruned weights stay pruned), rewind the surviving weights to the dense run's step ``rewind``,
and retrain with the mask held. Each level reports its sparsity, its accuracy after retraining
and the overlap of its mask with the magnitude mask (GMP) of the same level: magnitude scores of
the window's last snapshot, selected with the same previous mask at the same sparsity.

Recording: one recorder per training run. The dense run's recorder covers the scoring window
(the last ``window`` steps, every ``every``) *and* the rewind step: its window starts at
``min(rewind, window start)``, so the rewind point is a row of the same ``Trajectory`` and is
never recorded twice. When ``rewind`` lies before the scoring window this costs the rows in
between, ``(T − rewind) / every + 1`` instead of ``window / every + 1``, for the dense run only
(raise ``every`` to shrink it; a second one-row recorder would be one row cheaper per gap row,
but the rewind point would then not live in the window's trajectory). Later runs record only
their scoring window; the last run records nothing. Only one row (θ_rewind) is kept across
levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .backend import namespace_of
from .data import Dataset
from .layout import ParamLayout
from .methods import PruningMethod, get_method, method_scores
from .nn.masking import apply_masks, remove_masks
from .optim import SGD
from .pruning.levels import check_fraction, level_sparsity, prune_remaining
from .pruning.metrics import overlap, sparsity
from .pruning.scores import magnitude_scores
from .recording import TrajectoryRecorder
from .training import Trainer
from .trajectory import Trajectory

__all__ = ["LevelRecord", "IterativeResult", "RecordPlan", "iterative_pruning", "plan_recording",
           "check_levels", "score_level"]


@dataclass(frozen=True)
class LevelRecord:
    """One level: ``level`` 0 is the dense run; ``overlap_gmp`` is ``None`` there."""

    level: int
    method: str
    sparsity: float          # realized, over the prunable entries
    target_sparsity: float   # 1 − (1 − fraction)^level
    n_kept: int              # kept prunable entries
    accuracy: float          # evaluation after this level's training
    overlap_gmp: float | None


@dataclass(frozen=True)
class IterativeResult:
    """Every level's record, its flat keep-mask (level 1..), and where the runs rewound to."""

    levels: tuple[LevelRecord, ...]
    masks: tuple[Any, ...]
    layout: ParamLayout
    method: str
    fraction: float
    rewind_step: int
    rewind_point: Any                 # flat θ at the rewind step (a copy of that recorded row)
    recorded_steps: tuple[int, ...]   # the dense run's recorded steps

    def to_rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per level."""
        return [asdict(record) for record in self.levels]

    def table(self) -> str:
        """A plain-text table: level, sparsity, kept, accuracy, overlap with GMP."""
        lines = [f"{'level':>5}  {'sparsity':>8}  {'kept':>7}  {'accuracy':>8}  overlap GMP "
                 f"({self.method}, rewind to step {self.rewind_step})"]
        for r in self.levels:
            gmp = "-" if r.overlap_gmp is None else f"{r.overlap_gmp:.4f}"
            lines.append(f"{r.level:>5}  {r.sparsity:>8.4f}  {r.n_kept:>7}  "
                         f"{100 * r.accuracy:>7.2f}%  {gmp}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RecordPlan:
    """Steps of one run of ``total`` steps: scores read steps ``first..total`` every ``every``."""

    total: int
    first: int
    every: int
    rewind_step: int

    @property
    def dense_start(self) -> int:
        """Where the dense run's recorder starts: the rewind step or the scoring window."""
        return min(self.first, self.rewind_step)

    def recorded(self, start: int) -> range:
        return range(start, self.total + 1, self.every)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_levels(levels: Any, fraction: Any, method: str) -> PruningMethod:
    """Validate ``levels`` (≥ 1), ``fraction`` (in (0, 1)) and ``method``; return the method."""
    if not _is_int(levels) or levels < 1:
        raise ValueError(f"levels={levels!r} must be an integer >= 1 (prune-rewind-retrain "
                         f"rounds after the dense run)")
    check_fraction(fraction)
    spec = get_method(method)
    if spec.needs_converged:
        raise ValueError(f"method={method!r} needs the converged weights, which a level's window "
                         f"does not hold; choose another method of the registry")
    return spec


def plan_recording(total: int, window: int, every: int, rewind: Any) -> RecordPlan:
    """The recorded steps of a run of ``total`` steps, checking that ``rewind`` is among them.

    Scores use steps ``total − every·⌊window/every⌋ … total`` every ``every``; the dense run also
    records back to ``rewind`` on the same grid. ``rewind``: ``"init"`` (step 0) or a step.
    """
    for name, value in (("every", every), ("window", window)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer number of steps")
    if window < every or window > total:
        raise ValueError(f"window={window} must lie between every={every} (two snapshots) and "
                         f"the {total} steps of a run")
    first = total - every * (window // every)
    if isinstance(rewind, str) and rewind == "init":
        step = 0
    elif _is_int(rewind):
        step = rewind
    else:
        raise ValueError(f"rewind={rewind!r} must be 'init' (step 0) or an optimizer step")
    plan = RecordPlan(total, first, every, step)
    if not 0 <= step <= total or (total - step) % every:
        grid = plan.recorded(total % every)
        shown = ", ".join(map(str, grid[:6])) + (", ..." if len(grid) > 6 else "")
        raise ValueError(f"rewind={rewind!r} (step {step}) is not a recorded step: each run "
                         f"takes {total} steps and records every {every} steps ending at step "
                         f"{total}, so the steps that can be recorded are {shown} (up to {total}); "
                         f"choose one of them, or set every to a divisor of {total} - {step}")
    return plan


def score_level(method: str, window: Trajectory, level: int, fraction: float, keep: Any,
                options: Mapping[str, Any] | None = None) -> tuple[Any, float]:
    """Level ``level``'s keep-mask from ``window``'s scores, and its overlap with GMP's.

    ``keep``: the previous level's keep-mask (``None`` at level 1). ``options`` go to
    ``methods.method_scores`` (``seed``, ``strict``, ``kind``, ``horizon``, ...).
    """
    spec = get_method(method)
    target = level_sparsity(fraction, level)
    scores = method_scores(method, window, **dict(options or {}))
    mask = prune_remaining(scores, target, keep, window.layout, scope=spec.scope)
    gmp = prune_remaining(magnitude_scores(window.last), target, keep, window.layout)
    return mask, overlap(mask, gmp, window.layout)


def level_record(level: int, method: str, fraction: float, mask: Any, layout: ParamLayout,
                 accuracy: float, overlap_gmp: float | None) -> LevelRecord:
    """The frozen record of one level (``mask=None``: the dense run)."""
    if mask is None:
        return LevelRecord(0, method, 0.0, 0.0, layout.n_prunable, float(accuracy), None)
    p = sparsity(mask, layout)
    kept = layout.n_prunable - round(p * layout.n_prunable)
    return LevelRecord(level, method, p, level_sparsity(fraction, level), int(kept),
                       float(accuracy), overlap_gmp)


def _rewind(model: Any, point: Any, layout: ParamLayout, mask: Any) -> None:
    """Every parameter back to ``point`` (bit for bit), then ``mask`` set on ``Parameter.mask``."""
    remove_masks(model)
    values = layout.unflatten(point)
    for name, p in model.named_parameters():
        p.data = p.xp.asarray(values[name], copy=True)
    apply_masks(model, mask, layout=layout)


def iterative_pruning(model: Any, optimizer_factory: Callable[[Any], Any],
                      data: Dataset | tuple[Any, Any], *, levels: int, fraction: float = 0.2,
                      method: str = "kmp", rewind: str | int = "init", epochs: int = 10,
                      batch_size: int = 32, window: int | None = None, every: int = 1,
                      seed: int = 0, evaluate: Callable[[Any], float] | None = None,
                      method_options: Mapping[str, Any] | None = None,
                      loss: Any = "cross_entropy") -> IterativeResult:
    """Train, then ``levels`` times: prune ``fraction`` of what remains, rewind, retrain.

    ``optimizer_factory(model)`` builds a fresh optimizer for every run, so the optimizer state
    (momentum, Adam moments) is reset at each rewind. Every run trains ``epochs`` epochs of
    ``batch_size`` with data order ``seed``. ``window`` (default: one epoch) steps at the end of a
    run, every ``every`` steps, are scored by ``method`` (any method of ``methods.METHODS`` but
    the oracle; ``method_options`` go to ``method_scores``). ``rewind``: ``"init"`` or a step of
    the dense run on the recorded grid (module docstring). ``evaluate(model) -> float`` (default:
    accuracy on the Dataset's test split) runs after each run. Masks live on
    ``Parameter.mask``; ``model`` ends with the last level's mask and weights. Every argument is
    checked before the model changes.
    """
    spec = check_levels(levels, fraction, method)
    if not callable(optimizer_factory):
        raise TypeError("optimizer_factory must be a callable model -> optimizer, e.g. "
                        "lambda m: SGD(m, lr=0.05, momentum=0.9)")
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    x = data.x_train if isinstance(data, Dataset) else data[0]
    steps_per_epoch = math.ceil(int(x.shape[0]) / batch_size)
    total = epochs * steps_per_epoch
    plan = plan_recording(total, steps_per_epoch if window is None else window, every, rewind)
    evaluate = _default_evaluation(data) if evaluate is None else evaluate
    if not callable(evaluate):
        raise TypeError("evaluate must be a callable model -> float")
    options = {"seed": seed, **dict(method_options or {})}

    def run(start: int | None) -> tuple[Trajectory | None, float]:
        recorder = None if start is None else TrajectoryRecorder(
            model, every=every, start=start, stop=total, record_gradients=spec.needs_gradient)
        trainer = Trainer(model, optimizer_factory(model), loss, progress=False,
                          callbacks=[] if recorder is None else [recorder])
        trainer.fit(data, epochs, batch_size, seed=seed, eval_data=None)
        return (None if recorder is None else recorder.trajectory()), float(evaluate(model))

    dense, accuracy = run(plan.dense_start)
    layout = dense.layout
    rows = [int(s) for s in dense.steps]
    point = namespace_of(dense.snapshots).asarray(dense.snapshots[rows.index(plan.rewind_step), :],
                                                  copy=True)  # the one row kept across levels
    window_traj = dense.window(rows.index(plan.first))
    del dense  # the window's views keep what scoring needs
    records = [level_record(0, method, fraction, None, layout, accuracy, None)]
    masks: list[Any] = []
    keep = None
    for level in range(1, levels + 1):
        keep, gmp = score_level(method, window_traj, level, fraction, keep, options)
        window_traj = None  # the previous run's buffer can go before the next run records
        _rewind(model, point, layout, keep)
        window_traj, accuracy = run(plan.first if level < levels else None)
        masks.append(keep)
        records.append(level_record(level, method, fraction, keep, layout, accuracy, gmp))
    return IterativeResult(tuple(records), tuple(masks), layout, method, float(fraction),
                           plan.rewind_step, point, tuple(rows))


def _default_evaluation(data: Any) -> Callable[[Any], float]:
    if not isinstance(data, Dataset):
        raise ValueError("evaluate= is needed when data is a tuple (x, y): without a Dataset "
                         "there is no test split to measure accuracy on")

    def accuracy(model: Any) -> float:
        # A throwaway trainer only for its evaluate(); its optimizer is never stepped.
        return Trainer(model, SGD(model, lr=1.0), progress=False).evaluate(
            data.x_test, data.y_test)["accuracy"]

    return accuracy
