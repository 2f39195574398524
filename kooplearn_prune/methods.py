"""The one registry of pruning methods: name → score function and what it needs (docs/theory.md §8).

Every consumer reads this registry: the demo, the evaluation, the experiment runner, its config
parser and the PyTorch adapter. A method turns a recorded ``Trajectory`` (and, when it needs
them, its KMD or a gradient estimate at the scored snapshot) into flat float64 scores of length
``n``; the masks are then chosen by the one exact-k engine (``pruning.global_mask``, or
``pruning.layerwise_mask`` for a method whose ``scope`` is ``"layerwise"``).

Gradient-based methods (``"gradient"``) need the mean mini-batch gradient ``ḡ`` at ``θ_j``. The
caller may pass it (``gradient=``, e.g. ``pruning.mean_gradient`` of a native model or the
adapter's ``gradient_scores``); otherwise it is the mean of the trajectory's recorded gradients
up to the one evaluated at ``θ_j`` (``recorded_mean_gradient``).

Every method has a ``role`` (docs/theory.md §12), so studies and figures can group them:
``"koopman"`` (scores from the KMD), ``"baseline"`` (the classical rules the Koopman scores reduce
to, §9 and §11), ``"control"`` (window statistics with no Koopman content, and random scores: a
Koopman result is only shown next to its controls) and ``"oracle"`` (magnitude of the converged
weights, an upper bound for studies; it needs ``converged=``, which a window does not hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backend import asarray, namespace_of
from .koopman import KMD, kgp_scores, kmp_scores
from .koopman.scores import trend_scores, window_mean_scores
from .pruning.gradient import gradient_scores_from
from .pruning.masks import global_mask, layerwise_mask
from .pruning.scores import magnitude_scores, random_scores
from .trajectory import Trajectory

__all__ = ["PruningMethod", "METHODS", "ROLES", "method_names", "get_method", "method_scores",
           "method_mask", "recorded_gradient_rows", "recorded_mean_gradient"]

#: What a method is for: Koopman score, classical baseline, control, or oracle upper bound.
ROLES = ("koopman", "baseline", "control", "oracle")


#: Gradient scores weigh the gradient by the weight (``|θ ⊙ g|``) unless ``kind="gradient"``.
KIND = "weight_times_gradient"


@dataclass(frozen=True)
class PruningMethod:
    """One pruning method: its name, what its score needs, and how masks are chosen from it.

    ``label`` is the short name figures and tables show.
    ``score(trajectory, j, kmd=, gradient=, seed=, kind=, strict=, horizon=, converged=)`` returns
    flat float64 scores for the network at snapshot ``j``. ``needs_kmd``: it reads a KMD of the
    window; ``needs_gradient``: it reads a gradient estimate ``ḡ`` at ``θ_j``;
    ``needs_converged``: it reads the converged weights (``converged=``); ``min_snapshots``: the
    fewest snapshots ``θ_0..θ_j`` it can use; ``scope``: ``"global"`` or ``"layerwise"``
    selection; ``role``: one of ``ROLES``.
    """

    name: str
    label: str
    description: str
    score: Callable[..., Any]
    needs_kmd: bool = False
    needs_gradient: bool = False
    scope: str = "global"
    theory: str = "docs/theory.md §8"
    role: str = "baseline"
    needs_converged: bool = False
    min_snapshots: int = 1


def _kmp(trajectory: Trajectory, j: int, *, kmd: KMD, strict: bool = False, **_: Any) -> Any:
    return kmp_scores(kmd, strict=strict)


def _kgp(trajectory: Trajectory, j: int, *, kmd: KMD, kind: str = KIND, **_: Any) -> Any:
    return kgp_scores(kmd, at=j, kind=kind)


def _magnitude(trajectory: Trajectory, j: int, **_: Any) -> Any:
    return magnitude_scores(trajectory.snapshots[j, :])


def _gradient(trajectory: Trajectory, j: int, *, gradient: Any, kind: str = KIND,
              **_: Any) -> Any:
    return gradient_scores_from(trajectory.snapshots[j, :], gradient, kind)


def _random(trajectory: Trajectory, j: int, *, seed: int = 0, **_: Any) -> Any:
    return random_scores(trajectory.snapshots[j, :], seed)


def _trend(fit: str) -> Callable[..., Any]:
    def score(trajectory: Trajectory, j: int, *, horizon: float | None = None, **_: Any) -> Any:
        return trend_scores(trajectory.snapshots[:j + 1, :], horizon, fit=fit)
    return score


def _window_mean(trajectory: Trajectory, j: int, **_: Any) -> Any:
    return window_mean_scores(trajectory.snapshots[:j + 1, :])


def _oracle(trajectory: Trajectory, j: int, *, converged: Any, **_: Any) -> Any:
    return magnitude_scores(converged)


#: Every pruning method, by name, in the order results are shown.
METHODS: dict[str, PruningMethod] = {m.name: m for m in (
    PruningMethod("kmp", "KMP",
                  "Koopman magnitude pruning: |fixed point predicted by the KMD|", _kmp,
                  needs_kmd=True, theory="docs/theory.md §9", role="koopman"),
    PruningMethod("kgp", "KGP",
                  "Koopman gradient pruning: |θ̂_j ⊙ ĝ_j| from the KMD", _kgp,
                  needs_kmd=True, theory="docs/theory.md §11", role="koopman"),
    PruningMethod("magnitude", "GMP (global magnitude)",
                  "global magnitude pruning (GMP): |θ_j|", _magnitude),
    PruningMethod("magnitude_layerwise", "layer-wise magnitude",
                  "magnitude pruning, each layer pruned equally: |θ_j|",
                  _magnitude, scope="layerwise"),
    PruningMethod("gradient", "gradient |θ·g|",
                  "gradient pruning: |θ_j ⊙ ḡ|, ḡ a mean mini-batch gradient",
                  _gradient, needs_gradient=True, theory="docs/theory.md §11"),
    PruningMethod("trend_two_point", "trend (two-point)",
                  "control: |θ_j + h(θ_j − θ_0)/j|, the window's chord h intervals ahead "
                  "(default h = j: |2θ_j − θ_0|)", _trend("two_point"), role="control",
                  min_snapshots=2, theory="docs/theory.md §12"),
    PruningMethod("trend_lstsq", "trend (least squares)",
                  "control: |a + b(j + h)|, the least-squares line through θ_0..θ_j, h intervals "
                  "ahead (default h = j)", _trend("lstsq"), role="control", min_snapshots=2,
                  theory="docs/theory.md §12"),
    PruningMethod("window_mean", "window mean",
                  "control: |mean of θ_0..θ_j|", _window_mean, role="control",
                  theory="docs/theory.md §12"),
    PruningMethod("random", "random",
                  "random scores (a floor every method must beat)", _random, role="control"),
    PruningMethod("oracle", "oracle (converged GMP)",
                  "oracle: |θ_converged|, magnitude of the converged weights (an upper bound for "
                  "studies; needs converged=)", _oracle, role="oracle", needs_converged=True,
                  theory="docs/theory.md §12"),
)}


def method_names(role: str | None = None) -> tuple[str, ...]:
    """The registered method names, in registry order (only those of ``role`` when given)."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role={role!r} is unknown; choose from {', '.join(ROLES)}")
    return tuple(name for name, m in METHODS.items() if role is None or m.role == role)


def get_method(name: str) -> PruningMethod:
    """The registered method ``name``; a clear error lists the choices."""
    if name not in METHODS:
        raise ValueError(f"method={name!r} is unknown; choose from {', '.join(METHODS)}")
    return METHODS[name]


def recorded_gradient_rows(trajectory: Trajectory, j: int, n_batches: int = 10) -> list[int]:
    """Rows of the last ``n_batches`` recorded gradients up to the one evaluated at ``θ_j``.

    ``gradients[i]`` is the mini-batch gradient of the step that produced snapshot ``i``, taken at
    ``θ_{i-1}``; so the gradient at ``θ_j`` is row ``j + 1`` (docs/theory.md §11). Rows before
    ``metadata.first_gradient_row`` and rows at step 0 hold no gradient.
    """
    if trajectory.gradients is None:
        raise ValueError("the 'gradient' method needs recorded gradients: record with "
                         "record_gradients=True, or compute gradient_scores(model, batches) "
                         "yourself (native or torch) and make masks from those scores")
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}")
    m = trajectory.n_snapshots - 1
    if not 0 <= j < m:
        raise ValueError(f"at={j} must be a snapshot index in [0, {m - 1}] for the 'gradient' "
                         f"method (the gradient at θ_j is stored with snapshot j + 1)")
    first = trajectory.metadata.first_gradient_row or 0
    rows = [i for i in range(first, j + 2) if int(trajectory.steps[i]) > 0][-n_batches:]
    if not rows:
        raise ValueError("no recorded gradient up to snapshot at+1; record a longer window")
    return rows


def recorded_mean_gradient(trajectory: Trajectory, j: int, n_batches: int = 10) -> Any:
    """Mean of the gradients ``recorded_gradient_rows`` selects, float64 ``(n,)``."""
    rows = recorded_gradient_rows(trajectory, j, n_batches)
    xp = namespace_of(trajectory.gradients)
    total = xp.zeros((trajectory.n_params,), dtype=xp.float64)
    for i in rows:
        total = total + xp.astype(trajectory.gradients[i, :], xp.float64)
    return total / len(rows)


def method_scores(name: str, trajectory: Trajectory, *, at: int | None = None,
                  kmd: KMD | None = None, gradient: Any = None, n_batches: int = 10,
                  seed: int = 0, kind: str = KIND, strict: bool = False,
                  horizon: float | None = None, converged: Any = None) -> Any:
    """Flat float64 scores (length ``n``) of method ``name`` for the network at snapshot ``at``.

    ``at`` defaults to the last snapshot (``"gradient"``: the last one with a recorded gradient
    after it, unless ``gradient=`` is given). ``kmd``: a KMD fitted to ``trajectory`` (fitted here
    with the default settings when a method needs one and none is given). ``gradient``: the mean
    gradient at ``θ_at``; otherwise the recorded gradients are averaged (``n_batches`` rows).
    ``kind``: ``|θ ⊙ g|`` or ``|g|`` for the gradient-based methods; ``strict``: KMP raises when
    the predicted fixed point is unreliable (docs/theory.md §7). ``horizon``: for the trend
    controls, snapshot intervals past ``θ_at`` (default ``at``: one window length ahead,
    docs/theory.md §12). ``converged``: the converged weights, flat ``(n,)``, for ``"oracle"``.
    """
    method = get_method(name)
    last = trajectory.n_snapshots - 1
    if method.needs_converged:
        converged = _converged(name, converged, trajectory)
    if method.needs_gradient and gradient is None:
        j = last - 1 if at is None else int(at)
        gradient = recorded_mean_gradient(trajectory, j, n_batches)
    else:
        j = last if at is None else int(at)
        if not 0 <= j <= last:
            raise ValueError(f"at={at} must be a snapshot index in [0, {last}]")
    if j + 1 < method.min_snapshots:
        raise ValueError(f"method={name!r} needs at least {method.min_snapshots} snapshots up to "
                         f"the scored one (a trend needs two points), got {j + 1} (at={j}): "
                         f"record a longer window or score a later snapshot")
    if method.needs_kmd and kmd is None:
        kmd = KMD().fit(trajectory)
    return method.score(trajectory, j, kmd=kmd, gradient=gradient, seed=seed, kind=kind,
                        strict=strict, horizon=horizon, converged=converged)


def _converged(name: str, converged: Any, trajectory: Trajectory) -> Any:
    """``converged`` checked: a flat vector of the trajectory's length, on its backend."""
    if converged is None:
        raise ValueError(f"method={name!r} needs the converged weights, which a training window "
                         f"does not hold: pass converged= (flat, length {trajectory.n_params}, "
                         f"e.g. the full run's last snapshot) to method_scores; it is an upper "
                         f"bound for studies, not a method you can run before training ends")
    xp = namespace_of(trajectory.snapshots)
    converged = asarray(converged, xp=xp)
    if tuple(converged.shape) != (trajectory.n_params,):
        raise ValueError(f"converged= must be a flat vector of length {trajectory.n_params} (the "
                         f"trajectory's parameters), got shape {tuple(converged.shape)}")
    return converged


def method_mask(name: str, scores: Any, sparsity: float, trajectory: Trajectory) -> Any:
    """Keep-mask of method ``name`` at ``sparsity`` over the prunable set, with its scope."""
    if get_method(name).scope == "layerwise":
        return layerwise_mask(scores, sparsity, layout=trajectory.layout)
    return global_mask(scores, sparsity, layout=trajectory.layout)
