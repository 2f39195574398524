"""The training loop: ``Trainer.fit`` over epochs and mini-batches, with callbacks.

One optimizer step is one application of the map ``θ_{t+1} = T(θ_t)`` of docs/theory.md §2; the
``on_step_end`` callback sees every one of them, which is where ``TrajectoryRecorder`` records.

``fit`` checks its inputs before the first step (epochs, an empty or mis-shaped data or evaluation
set, labels the model's outputs cannot hold, non-finite starting parameters): a mistake is
reported before any parameter, optimizer state or callback has changed.

Callback order for one step: forward, loss, backward, ``on_before_step`` (gradients are ready,
parameters are still ``θ_t``), ``optimizer.step()``, ``on_step_end`` (parameters are ``θ_{t+1}``,
``p.grad`` still holds the gradient that produced them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._last_finite import LastFinite
from .autograd import Tensor, functional, no_grad
from .backend import namespace_of
from .data import BatchIterator, Dataset
from .nn.module import Module
from .optim import Optimizer

__all__ = ["Trainer", "Callback", "History", "LossFn", "NonFiniteLossError", "PrintProgress"]

LossFn = Callable[[Tensor, Any], Tensor]
LOSSES: dict[str, LossFn] = {"cross_entropy": functional.cross_entropy,
                             "mse": functional.mse_loss}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, or an update made parameters non-finite.

    Either way the model holds its last finite parameters when this is raised, and the optimizer
    the state (momentum, Adam moments, step counts) that goes with them: a non-finite loss stops
    before the backward pass and the update; an update whose result is not finite (a finite loss
    whose step overflows, e.g. MSE with huge targets and a huge learning rate) is undone from a
    copy kept before the step. See ``Trainer`` (``check_finite``) for what that copy costs.
    """


class Callback:
    """Hooks called by ``Trainer.fit``; override the ones you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_before_step(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


class PrintProgress(Callback):
    """Print one line per epoch: training loss, test loss and test accuracy."""

    def __init__(self, printer: Callable[[str], None] = print) -> None:
        self.printer = printer

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        parts = [f"epoch {logs['epoch']:3d}", f"train loss {logs['train_loss']:.4f}"]
        if "test_loss" in logs:
            parts.append(f"test loss {logs['test_loss']:.4f}")
        if "test_accuracy" in logs:
            parts.append(f"test acc {100 * logs['test_accuracy']:.2f}%")
        parts.append(f"{logs['seconds']:.2f}s")
        self.printer("  ".join(parts))


@dataclass
class History:
    """Per-epoch records: ``history["test_accuracy"]`` is a list with one value per epoch."""

    records: list[dict[str, float]] = field(default_factory=list)

    def append(self, logs: dict[str, float]) -> None:
        self.records.append(dict(logs))

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def __len__(self) -> int:
        return len(self.records)

    def last(self) -> dict[str, float]:
        return dict(self.records[-1]) if self.records else {}


class Trainer:
    """Train ``model`` with ``optimizer`` on mini-batches.

    ``loss`` is ``"cross_entropy"`` (integer labels), ``"mse"`` (real targets) or a callable
    ``loss(output, target) -> scalar Tensor``. ``progress=False`` turns off the tqdm bar (which
    uses the notebook widget inside Jupyter). ``callbacks`` must be distinct objects.

    ``check_finite`` (default True) raises ``NonFiniteLossError`` at the first non-finite loss
    (before its backward pass and update) or at the first update that leaves a parameter
    non-finite; the model then holds its last finite parameters and the optimizer their state.
    A finite loss does not imply a finite update (``θ − lr·g`` can overflow), so every step is
    checked and, when needed, undone from a copy (``_last_finite.LastFinite``): before
    ``optimizer.step()`` the parameters and the optimizer's per-parameter state
    (``Optimizer.state``: momentum, Adam moments) are copied into buffers allocated once per
    ``fit``; after it, one sum of squares per parameter tests them (the exact ``isfinite`` test
    runs only when that sum is not finite). Undoing the update arithmetically instead is not
    exact (``(θ − lr·g) + lr·g ≠ θ`` in floating point, and momentum cannot be undone), and
    checking the update before applying it would need every optimizer's cooperation. Measured
    cost (1 BLAS thread): for the 64-128-10 MLP at batch 32 (``benchmarks/train_throughput.py
    --regimes b32``), 5 µs per step with plain SGD, 11-14 µs with momentum or Adam state to copy
    (about 6 % and 10-12 % of a step; the benchmark's fastest epoch went from 3.9-4.0 ms to
    4.4 ms); for 784-300-100-10 at batch 256, 1.5-2.3 %. Memory: one more copy of θ and of the
    optimizer state. ``check_finite=False`` skips the checks and the copies.
    """

    def __init__(self, model: Module, optimizer: Optimizer, loss: str | LossFn = "cross_entropy",
                 *, callbacks: Sequence[Callback] = (), progress: bool = True,
                 check_finite: bool = True) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model must be a kooplearn_prune.nn.Module, "
                            f"got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an Optimizer, got {type(optimizer).__name__}")
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"loss={loss!r} is unknown; choose from {sorted(LOSSES)} or pass "
                                 f"a callable")
            self.loss_name, self.loss_fn = loss, LOSSES[loss]
        elif callable(loss):
            self.loss_name, self.loss_fn = getattr(loss, "__name__", "custom"), loss
        else:
            raise TypeError("loss must be a name or a callable")
        _check_callbacks(callbacks)
        self.model, self.optimizer = model, optimizer
        self.callbacks = list(callbacks)
        self.progress, self.check_finite = bool(progress), bool(check_finite)
        self.history = History()
        self._guard: LastFinite | None = None
        self.epoch = 0          # epochs completed
        self.step = 0           # optimizer steps completed (global, across fit calls)
        self.step_in_epoch = 0
        self.steps_per_epoch = 0
        self.epochs_planned = 0
        self.last_loss = math.nan

    # ------------------------------------------------------------------ main loop
    def fit(self, data: Dataset | tuple[Any, Any], epochs: int = 1, batch_size: int = 32, *,
            seed: Any = 0, eval_data: tuple[Any, Any] | None | str = "test",
            eval_batch_size: int = 2048) -> History:
        """Train for ``epochs`` passes over the training split; returns the ``History``.

        ``data`` is a ``Dataset`` or ``(x_train, y_train)``. ``eval_data="test"`` evaluates on
        the Dataset's test split after every epoch; pass ``(x, y)`` or ``None`` instead.
        Before the first step the inputs are checked: the model (and a built-in loss) runs once,
        without a graph and in eval mode, on the first sample of each set (input width, target
        shape), and ``cross_entropy`` labels are checked against the model's number of outputs.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (passes over the data), got "
                             f"{epochs!r}")
        _check_callbacks(self.callbacks)
        x, y, evaluation = self._unpack(data, eval_data)
        batches = BatchIterator(x, y, batch_size, shuffle=True, seed=seed)
        self._check_fit(x, y, "data")
        if evaluation is not None:
            self._check_fit(*evaluation, "eval_data")
        guard = LastFinite(self.optimizer, self.xp) if self.check_finite else None
        if guard is not None:
            bad = guard.non_finite()
            if bad:
                raise ValueError(f"the model's parameters {bad} are not finite before training; "
                                 f"initialize or load finite values first")
        self._guard = guard
        self.steps_per_epoch = len(batches)
        self.epochs_planned = epochs
        bar = _progress_bar(epochs, self.progress)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            for _ in range(epochs):
                self.model.train()
                for cb in self.callbacks:
                    cb.on_epoch_start(self)
                start = time.perf_counter()
                total, count = 0.0, 0
                for self.step_in_epoch, (xb, yb) in enumerate(batches):
                    total += self._train_step(xb, yb) * int(xb.shape[0])
                    count += int(xb.shape[0])
                self.epoch += 1
                logs = {"epoch": self.epoch, "step": self.step, "train_loss": total / count}
                if evaluation is not None:
                    logs.update({f"test_{k}": v for k, v in
                                 self.evaluate(*evaluation, batch_size=eval_batch_size).items()})
                logs["seconds"] = time.perf_counter() - start
                self.history.append(logs)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, logs)
                if bar is not None:
                    bar.set_postfix({k: round(v, 4) for k, v in logs.items()
                                     if k in ("train_loss", "test_accuracy")})
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _train_step(self, xb: Any, yb: Any) -> float:
        opt = self.optimizer
        opt.zero_grad()
        try:
            loss = self.loss_fn(self.model(Tensor(xb, xp=self.xp)), yb)
        except (ValueError, TypeError) as err:  # e.g. a custom loss meeting a bad label
            if type(err) not in (ValueError, TypeError):
                raise
            raise type(err)(f"{err} ({self._where()}, before its update)") from err
        value = float(loss.data)
        if self.check_finite and not math.isfinite(value):
            self._stop(f"loss is {value}")
        loss.backward()
        for cb in self.callbacks:
            cb.on_before_step(self)
        guard = self._guard
        if guard is None:
            opt.step()
        else:
            guard.save()
            opt.step()
            if not guard.finite_after_step():
                bad = guard.non_finite()
                if bad:
                    guard.restore()
                    self._stop(f"the update made parameters {bad} non-finite (the loss before it "
                               f"was {value:.6g})", undone=True)
        self.step += 1
        self.last_loss = value
        for cb in self.callbacks:
            cb.on_step_end(self)
        return value

    def _stop(self, what: str, undone: bool = False) -> None:
        how = ("that update was undone, so the model is back at its last finite parameters and "
               "the optimizer at its state" if undone else
               "training stopped before the update, so the model keeps its last finite "
               "parameters and the optimizer its state")
        raise NonFiniteLossError(f"{what} {self._where()}; {how} (after global step "
                                 f"{self.step}). Lower the learning rate or check the data.")

    def _where(self) -> str:
        """Where the current step is: ``at epoch E, step S of that epoch (global step G)``."""
        return (f"at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of that epoch "
                f"(global step {self.step + 1})")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, x: Any, y: Any, batch_size: int = 2048) -> dict[str, float]:
        """Mean loss and (for integer labels) accuracy on ``(x, y)``, without a graph."""
        xp = self.xp
        n = int(x.shape[0])
        if n == 0:
            raise ValueError("evaluate: x holds no samples; pass a non-empty evaluation set")
        self.model.eval()
        total_loss, correct = 0.0, 0
        classify = xp.isdtype(y.dtype, "integral")
        with no_grad():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)  # out-of-range stops are not array-API
                xb, yb = x[start:stop, ...], y[start:stop, ...]
                out = self.model(Tensor(xb, xp=xp))
                total_loss += float(self.loss_fn(out, yb).data) * int(xb.shape[0])
                if classify:
                    correct += int(xp.sum(xp.astype(xp.argmax(out.data, axis=1) == yb, xp.int64)))
        self.model.train()
        metrics = {"loss": total_loss / n}
        if classify:
            metrics["accuracy"] = correct / n
        return metrics

    # ------------------------------------------------------------------ input handling
    @property
    def xp(self) -> Any:
        return self.optimizer.params[0].xp

    def _unpack(self, data: Any, eval_data: Any) -> tuple[Any, Any, tuple[Any, Any] | None]:
        if isinstance(data, Dataset):
            x, y = data.x_train, data.y_train
            if isinstance(eval_data, str) and eval_data == "test":
                eval_data = (data.x_test, data.y_test)
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = data
            if isinstance(eval_data, str):
                eval_data = None
        else:
            raise TypeError("data must be a Dataset or a tuple (x_train, y_train)")
        if isinstance(eval_data, str):
            raise ValueError(f"eval_data={eval_data!r}: use 'test', (x, y) or None")
        x, y = self._check_xy(x, y, "data")
        if eval_data is not None:
            eval_data = self._check_xy(*eval_data, "eval_data")
        return x, y, eval_data

    def _check_xy(self, x: Any, y: Any, what: str) -> tuple[Any, Any]:
        xp = self.xp
        if namespace_of(x) is not xp and type(x).__module__.split(".")[0] != \
                type(self.optimizer.params[0].data).__module__.split(".")[0]:
            raise TypeError(f"{what}: inputs live in {type(x).__module__}, the model in "
                            f"{type(self.optimizer.params[0].data).__module__}; load the data on "
                            f"the same backend")
        dtype = self.optimizer.params[0].data.dtype
        if x.dtype != dtype:
            x = xp.astype(x, dtype)  # cast once here, never silently promote inside the loop
        if self.loss_name == "cross_entropy" and not xp.isdtype(y.dtype, "integral"):
            raise TypeError(f"{what}: cross_entropy needs integer class labels, got {y.dtype}")
        n, m = int(x.shape[0]), int(y.shape[0])
        if n != m:
            raise ValueError(f"{what}: x holds {n} samples but y holds {m}; pass one label or "
                             f"target per sample")
        if n == 0:
            fix = "pass eval_data=None to skip evaluation" if what == "eval_data" else \
                "pass a non-empty training set"
            raise ValueError(f"{what} holds no samples; {fix}")
        return x, y

    def _check_fit(self, x: Any, y: Any, what: str) -> None:
        """Run the model and the loss on the first sample (no graph); check the labels' range."""
        self.model.eval()
        try:
            with no_grad():
                out = self._run_checked(lambda: self.model(Tensor(x[:1, ...], xp=self.xp)), what)
                if self.loss_fn is functional.cross_entropy:
                    self._check_labels(y, tuple(out.data.shape), what)
                if self.loss_fn in LOSSES.values():  # a user's loss may need a larger batch
                    self._run_checked(lambda: self.loss_fn(out, y[:1, ...]), what)
        finally:
            self.model.train()

    @staticmethod
    def _run_checked(run: Callable[[], Any], what: str) -> Any:
        try:
            return run()
        except (ValueError, TypeError) as err:
            raise type(err)(f"{what} does not fit the model or the loss: {err}") from err

    def _check_labels(self, y: Any, out_shape: tuple[int, ...], what: str) -> None:
        if len(out_shape) != 2:
            raise ValueError(f"{what}: cross_entropy needs model outputs of shape (batch, "
                             f"classes), got {out_shape}")
        if y.ndim != 1:
            raise ValueError(f"{what}: cross_entropy needs labels of shape (samples,), got "
                             f"{tuple(y.shape)}")
        classes = out_shape[1]
        low, high = int(self.xp.min(y)), int(self.xp.max(y))
        if low < 0 or high >= classes:
            raise ValueError(f"{what}: labels must lie in [0, {classes}) for the model's "
                             f"{classes} outputs, got values in [{low}, {high}]; give the output "
                             f"layer {max(high + 1, classes)} units or fix the labels")


def _check_callbacks(callbacks: Sequence[Any]) -> None:
    """Callback instances, each object once (a recorder given twice would see every step twice)."""
    first: dict[int, int] = {}
    for j, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
        i = first.setdefault(id(cb), j)
        if i != j:
            raise ValueError(f"callbacks[{j}] is the same {type(cb).__name__} object as "
                             f"callbacks[{i}]; pass each callback once")


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="epoch", leave=False)

