"""The exercise checks of ``kooplearn_prune.course``: each passes on a right answer, says "wrong"
with its hint on a typical wrong one, "not attempted" on the placeholder, and raises only in
strict mode. Small fixtures stand in for the notebooks' state (which ``test_notebooks`` runs with
the worked solutions)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kooplearn_prune.autograd import define_op, walk
from kooplearn_prune.course import (
    ExerciseError,
    Verdict,
    lesson01,
    lesson02,
    lesson03,
    lesson04,
    lesson05,
    lesson06,
    lesson07,
    lesson08,
)
from kooplearn_prune.data import load_dataset
from kooplearn_prune.koopman import KMD, horizon_scores, kmp_scores
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD
from kooplearn_prune.pruning import global_mask, magnitude_scores
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Trainer


def is_right(v: Verdict) -> bool:
    return isinstance(v, Verdict) and v.passed and "✓" in str(v)


def is_wrong(v: Verdict, hint_word: str) -> bool:
    return (isinstance(v, Verdict) and v.status == "wrong" and "Hint:" in str(v)
            and hint_word in v.hint)


@pytest.fixture(autouse=True)
def lenient(monkeypatch):
    monkeypatch.delenv("KOOPLEARN_PRUNE_EXERCISES_STRICT", raising=False)


@pytest.fixture(scope="module")
def traj():
    data = load_dataset("digits", seed=0)
    model = MLP([64, 8, 10], seed=0)
    rec = TrajectoryRecorder(model, every=5, record_gradients=True, record_updates=True)
    trainer = Trainer(model, SGD(model, lr=0.05), callbacks=[rec], progress=False)
    trainer.fit(data, epochs=1, batch_size=64, seed=0, eval_data=None)
    return rec.trajectory(), trainer.steps_per_epoch


def quadratic(eta=0.25, steps=24, n=40, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    h = np.linspace(0.5, 4.0, n)
    h[:4] = [0.5, 1.5, 2.5, 4.0]
    H, star = (q * h) @ q.T, rng.normal(size=n)
    theta = [star + q[:, :4] @ rng.normal(size=4)]
    for _ in range(steps):
        theta.append(theta[-1] - eta * (H @ theta[-1] - H @ star))
    return np.array(theta), h[:4]


# ------------------------------------------------------------------ verdicts
def test_verdict_is_readable_and_strict_mode_raises(monkeypatch):
    v = lesson01.chain_rule(None, None)
    assert v.status == "missing" and not v and "not attempted" in repr(v)
    with pytest.raises(ExerciseError, match="01.1"):
        lesson01.chain_rule(1.0, 1.0, strict=True)
    monkeypatch.setenv("KOOPLEARN_PRUNE_EXERCISES_STRICT", "1")
    with pytest.raises(ExerciseError):
        lesson01.chain_rule(None, None)


# ------------------------------------------------------------------ 01
def test_lesson01_checks():
    x, y = 0.5, -1.0
    e = np.exp(x * y)
    assert is_right(lesson01.chain_rule(e + x * y * e, x * x * e))
    assert is_wrong(lesson01.chain_rule(x * y * e, x * x * e), "product rule")
    good = define_op(lambda x: np.log1p(np.exp(x)), lambda g, out, x: g / (1 + np.exp(-x)))
    forgot_g = define_op(lambda x: np.log1p(np.exp(x)),
                         lambda g, out, x: 1 / (1 + np.exp(-x)))
    assert is_right(lesson01.softplus_op(good))
    assert is_wrong(lesson01.softplus_op(forgot_g), "incoming gradient")
    assert lesson01.softplus_op(lambda t: None).status == "missing"

    def count(root):
        out = {}
        for n in walk(root):
            if n.op:
                out[n.op] = out.get(n.op, 0) + 1
        return out

    def count_with_leaves(root):
        out = {}
        for n in walk(root):
            out[n.op] = out.get(n.op, 0) + 1
        return out

    def count_paths(root):   # recursion over parents: shared nodes counted twice
        out = {}
        for p in root.parents:
            for k, v in count_paths(p).items():
                out[k] = out.get(k, 0) + v
        if root.op:
            out[root.op] = out.get(root.op, 0) + 1
        return out

    assert is_right(lesson01.count_ops(count))
    assert is_wrong(lesson01.count_ops(count_with_leaves), "leaves")
    assert is_wrong(lesson01.count_ops(count_paths), "counted twice")


# ------------------------------------------------------------------ 02
def test_lesson02_checks(traj):
    t, steps_per_epoch = traj
    steps = np.arange(0, steps_per_epoch + 1, 5)
    assert is_right(lesson02.snapshot_steps(steps, t))
    assert is_wrong(lesson02.snapshot_steps(steps[1:], t), "θ_0")
    bias = t.layout.unflatten(t.snapshots[-1])["2.bias"]
    assert is_right(lesson02.last_bias(bias, t))
    assert is_wrong(lesson02.last_bias(t.layout.unflatten(t.snapshots[0])["2.bias"], t), "first")
    u, g = np.asarray(t.updates)[1:].astype(float), np.asarray(t.gradients)[1:].astype(float)
    eta = -np.sum(u * g) / np.sum(g * g)
    assert abs(eta - 0.05) < 1e-3
    assert is_right(lesson02.learning_rate(eta, t))
    assert is_wrong(lesson02.learning_rate(-eta, t), "MINUS")


# ------------------------------------------------------------------ 03
def test_lesson03_checks():
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((30, 3)))
    z, rows = np.ones(3), []
    for _ in range(15):
        rows.append(Q @ z)
        z = np.array([1.0, 0.8, -0.5]) * z
    W = np.array(rows)
    assert is_right(lesson03.chosen_spectrum(W))
    assert is_wrong(lesson03.chosen_spectrum(W.T), "ROWS")
    no_stationary = W - np.outer(np.ones(15), Q[:, 0])      # the λ = 1 part left out
    assert is_wrong(lesson03.chosen_spectrum(no_stationary), "excite")
    h = np.array([0.5, 2.0, 7.0])
    assert is_right(lesson03.largest_stable_lr(2 / 7, h))
    assert is_wrong(lesson03.largest_stable_lr(1 / 7, h), "negative")
    W_gd, _ = quadratic(eta=0.15)
    kmd = KMD().fit(W_gd)
    lam = np.delete(np.abs(kmd.eigenvalues_), kmd.fixed_point_info_.index).max()
    assert is_right(lesson03.half_life(np.log(2) / -np.log(lam), kmd))
    assert is_wrong(lesson03.half_life(-1 / np.log(lam), kmd), "shrink by e")


# ------------------------------------------------------------------ 04
def test_lesson04_checks(traj):
    t, _ = traj
    kmd = KMD().fit(t)
    layout: ParamLayout = t.layout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # an unreliable fixed point warns; not tested here
        kmp = np.asarray(kmp_scores(kmd))
    k = int(np.argmin(np.abs(kmd.eigenvalues_ - 1)))
    assert is_right(lesson04.kmp_by_hand(np.abs(np.asarray(kmd.modes_)[k].real), kmd))
    assert lesson04.kmp_by_hand(np.abs(np.asarray(t.last, dtype=float)), kmd).status == "wrong"
    gmp = np.asarray(magnitude_scores(t.last))
    keep_k = np.asarray(global_mask(kmp, 0.5, layout=layout))
    keep_g = np.asarray(global_mask(gmp, 0.5, layout=layout))
    n = int(np.sum(keep_g & ~keep_k))
    assert n > 0
    assert is_right(lesson04.disputed_count(n, kmp, gmp, layout, 0.5))
    assert is_wrong(lesson04.disputed_count(2 * n, kmp, gmp, layout, 0.5), "both directions")
    m = kmd.n_snapshots_ - 1
    lam, modes = np.asarray(kmd.eigenvalues_), np.asarray(kmd.modes_)
    assert is_right(lesson04.horizon_by_hand(np.abs((lam ** (m + 5) @ modes).real), kmd, 5))
    assert np.allclose(np.abs((lam ** (m + 5) @ modes).real), horizon_scores(kmd, 5))
    assert is_wrong(lesson04.horizon_by_hand(np.abs((lam ** 5 @ modes).real), kmd, 5), "FIRST")


# ------------------------------------------------------------------ 05
def test_lesson05_checks():
    W, h = quadratic(eta=0.25)
    kmd = KMD().fit(W)
    g_hat = -(np.asarray(kmd.predict(11)) - np.asarray(kmd.predict(10)))
    assert is_right(lesson05.gradient_by_hand(g_hat, kmd, 10))
    assert is_wrong(lesson05.gradient_by_hand(-g_hat, kmd, 10), "AGAINST")
    lam = np.sort(np.delete(kmd.eigenvalues_, kmd.fixed_point_info_.index).real)
    eta = np.mean((1 - lam) / np.sort(h)[::-1])
    assert abs(eta - 0.25) < 1e-8
    assert is_right(lesson05.eta_from_spectrum(eta, kmd, h))
    assert is_wrong(lesson05.eta_from_spectrum(-eta, kmd, h), "positive")
    strided = KMD().fit(quadratic(eta=0.1, steps=72)[0][::3]).eigenvalues_.real
    predicted = np.concatenate([[1.0], (1 - 0.1 * h) ** 3])
    assert np.allclose(np.sort(strided), np.sort(predicted), atol=1e-8)
    assert is_right(lesson05.strided_eigenvalues(predicted, 0.1, h, 3))
    linear = np.concatenate([[1.0], 1 - 3 * 0.1 * h])
    assert is_wrong(lesson05.strided_eigenvalues(linear, 0.1, h, 3), "powers")


# ------------------------------------------------------------------ 06
def test_lesson06_checks(traj):
    from scipy import stats

    kmp, gmp = [0.71, 0.69, 0.74, 0.70, 0.72], [0.65, 0.64, 0.66, 0.66, 0.67]
    d = np.subtract(kmp, gmp)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert is_right(lesson06.paired_interval((d.mean() - half, d.mean() + half), kmp, gmp))
    z = 1.959963984540054 * d.std(ddof=1) / np.sqrt(5)
    assert is_wrong(lesson06.paired_interval((d.mean() - z, d.mean() + z), kmp, gmp), "Student")
    t, _ = traj
    rows = np.asarray(t.snapshots, dtype=float)
    assert is_right(lesson06.trend_scores(np.abs(2 * rows[-1] - rows[0]), t))
    assert is_wrong(lesson06.trend_scores(np.abs(rows[-1] - rows[0]), t), "forecasts")
    assert is_right(lesson06.random_overlap(0.105, 0.9, 470))
    assert is_wrong(lesson06.random_overlap(0.9, 0.9, 470), "1 − p")


# ------------------------------------------------------------------ 07
def test_lesson07_checks():
    torch = pytest.importorskip("torch")
    masks = {"0.weight": torch.tensor([[True, False], [False, False]]),
             "2.weight": torch.tensor([True, True, True, False, False, True])}
    assert is_right(lesson07.pruned_per_layer({"0.weight": 3, "2.weight": 2}, masks))
    assert is_wrong(lesson07.pruned_per_layer({"0.weight": 1, "2.weight": 4}, masks), "KEPT")
    assert is_right(lesson07.most_pruned_layer("0.weight", masks))
    big = {"0.weight": torch.tensor([True, False]),
           "2.weight": torch.tensor([False] * 3 + [True] * 7)}
    assert is_wrong(lesson07.most_pruned_layer("2.weight", big), "fractions")


# ------------------------------------------------------------------ 08
def test_lesson08_checks():
    from kooplearn_prune.backend import namespace_of

    def center(x):
        return x - namespace_of(x).mean(x, axis=0, keepdims=True)

    def numpy_only(x):
        return np.asarray(x) - np.mean(np.asarray(x), axis=0)

    assert is_right(lesson08.center_rows(center))
    pytest.importorskip("array_api_strict")
    assert is_wrong(lesson08.center_rows(numpy_only), "namespace_of")
    assert is_right(lesson08.memory_bytes((4 * 65 * 1000, 8 * 65 * 65), 65, 1000))
    assert is_wrong(lesson08.memory_bytes((8 * 65 * 1000, 8 * 65 * 65), 65, 1000), "float32")
    assert lesson08.memory_bytes((None, None), 65, 1000).status == "missing"
