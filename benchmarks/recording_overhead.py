"""Cost of recording the trajectory: ``Trainer.fit`` with and without a ``TrajectoryRecorder``.

The benchmark MLP of ``train_throughput.py`` regime (a): 784-300-100-10, ReLU, plain SGD, float32,
batch 256, on MNIST-sized random data. Variants, alternated round by round in one process (the
order rotates), median seconds per epoch reported:

* ``none``            no recorder
* ``every_step``      a snapshot of θ after every optimizer step, in backend memory, the buffer
                      allocated when ``fit`` starts (the default; target: at most 5 % slower than
                      ``none``). From the second round on it takes the memory a dead recorder of
                      the same size left in the pool (``kooplearn_prune._hostmemory``)
* ``every_step_fresh`` the same without taking memory from the pool: the first recorder of a
                      process, which maps its buffer when ``fit`` starts (16 MiB faulted in at
                      once, the rest by a background thread)
* ``every_step_prealloc`` the same with ``capacity=`` given, so the buffer is allocated before
                      ``fit``: what remains is the per-step cost of recording (the floor)
* ``every_step_grad`` the same as ``every_step`` plus the gradients (target: at most 10 %)
* ``every_step_disk`` every step into ``.npy`` files on disk (target: at most 10 %)
* ``every_step_gram`` ``every_step`` with ``gram=True``: the Gram matrix streamed block by block
                      in the training thread (``koopman.streaming``)
* ``every_step_gram_bg`` the same with ``gram="background"``: the passes in a worker thread
                      (a second core; training keeps ``--threads``)

The overhead is paired: variant / ``none`` - 1 within each round, median over rounds (so a
drift of a shared machine's load hits both sides alike). Besides it, ``in_recorder`` is the
time spent inside the recorder's callbacks (allocation + copies), as a fraction of the ``none``
epoch: the direct cost, without what the copies do to the training step's caches.

    python benchmarks/recording_overhead.py [--quick] [--rounds 7] [--threads 1] [--json out.json]
    python benchmarks/recording_overhead.py --variants none,every_step,every_step_gram_bg

Prints one JSON document and then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

VARIANTS = ("none", "every_step", "every_step_fresh", "every_step_prealloc", "every_step_grad",
            "every_step_disk", "every_step_gram", "every_step_gram_bg")
SIZES = (784, 300, 100, 10)
BATCH = 256
TARGETS = {"every_step": 0.05, "every_step_grad": 0.10, "every_step_disk": 0.10}


class Timed:
    """Forwards every trainer hook to ``inner`` and adds the seconds spent there to ``seconds``."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def _call(self, name: str, *args) -> None:
        start = time.perf_counter()
        getattr(self.inner, name)(*args)
        self.seconds += time.perf_counter() - start

    def on_fit_start(self, trainer) -> None:
        self._call("on_fit_start", trainer)

    def on_epoch_start(self, trainer) -> None:
        self._call("on_epoch_start", trainer)

    def on_before_step(self, trainer) -> None:
        self._call("on_before_step", trainer)

    def on_step_end(self, trainer) -> None:
        self._call("on_step_end", trainer)

    def on_epoch_end(self, trainer, logs) -> None:
        self._call("on_epoch_end", trainer, logs)

    def on_fit_end(self, trainer) -> None:
        self._call("on_fit_end", trainer)


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, SIZES[0]), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((SIZES[0], SIZES[-1]), dtype=np.float32), axis=1)
    return x, y.astype(np.int64)


def one_run(variant: str, x: np.ndarray, y: np.ndarray, epochs: int,
            workdir: str) -> tuple[float, float]:
    """Seconds per epoch of one fit (a fresh model each time, same seed), and of them the
    seconds spent inside the recorder."""
    from kooplearn_prune.nn import MLP
    from kooplearn_prune.optim import SGD
    from kooplearn_prune.recording import TrajectoryRecorder
    from kooplearn_prune.training import Callback, Trainer

    class TimedCallback(Timed, Callback):
        pass

    model = MLP(list(SIZES), seed=0)
    callbacks = []
    rows = epochs * -(-int(x.shape[0]) // BATCH) + 1
    try:
        from kooplearn_prune import _hostmemory
    except ImportError:  # a version without the pool (to compare): every buffer is fresh
        _hostmemory = None
    if variant != "none":
        callbacks.append(TrajectoryRecorder(
            model, every=1, record_gradients=variant == "every_step_grad",
            storage="disk" if variant == "every_step_disk" else "memory",
            directory=tempfile.mkdtemp(dir=workdir),
            capacity=rows if variant == "every_step_prealloc" else None,
            gram={"every_step_gram": True, "every_step_gram_bg": "background"}.get(variant, False)))
    timed = [TimedCallback(cb) for cb in callbacks]
    trainer = Trainer(model, SGD(model, lr=0.01), callbacks=timed, progress=False)
    if _hostmemory is not None:
        _hostmemory.REUSE = variant != "every_step_fresh"
    start = time.perf_counter()
    trainer.fit((x, y), epochs=epochs, batch_size=BATCH, seed=0, eval_data=None)
    seconds = (time.perf_counter() - start) / epochs
    if _hostmemory is not None:
        _hostmemory.REUSE = True
    if callbacks:
        assert len(callbacks[0]) == epochs * trainer.steps_per_epoch + 1
    if variant.startswith("every_step_gram"):  # the pass left after training, not timed above
        assert callbacks[0].gram.shape == (rows, rows)
    return seconds, sum(t.seconds for t in timed) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10000 samples instead of 60000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed fit")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset (always with none)")
    args = parser.parse_args()
    variants = tuple(dict.fromkeys(["none"] + args.variants.split(",")))
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")

    from threadpoolctl import threadpool_limits

    x, y = make_data(10000 if args.quick else 60000)
    times: dict[str, list[float]] = {v: [] for v in variants}
    inside: dict[str, list[float]] = {v: [] for v in variants}
    with threadpool_limits(args.threads), tempfile.TemporaryDirectory() as workdir:
        one_run("none", x[:2048], y[:2048], 1, workdir)  # warm-up
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                seconds, in_recorder = one_run(variant, x, y, args.epochs, workdir)
                times[variant].append(seconds)
                inside[variant].append(in_recorder)
    median = {v: statistics.median(t) for v, t in times.items()}
    # Paired within each round (the same machine load), then the median over rounds.
    overhead = {v: statistics.median(a / b - 1 for a, b in zip(times[v], times["none"]))
                for v in variants}
    in_recorder = {v: statistics.median(inside[v]) / median["none"] for v in variants}
    result = {
        "benchmark": "recording_overhead", "sizes": SIZES, "batch": BATCH,
        "samples": int(x.shape[0]), "threads": args.threads, "rounds": args.rounds,
        "seconds_per_epoch_median": median, "seconds_per_epoch_all": times,
        "overhead_vs_none_paired": overhead, "in_recorder_vs_none": in_recorder,
        "targets_max_overhead": TARGETS,
        "target_met": {v: overhead[v] <= limit for v, limit in TARGETS.items() if v in variants},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(f"\n{'variant':<22}{'s/epoch (median)':>18}{'overhead':>12}{'in recorder':>13}"
          f"{'target':>10}")
    for v in variants:
        target = f"<={100 * TARGETS[v]:.0f}% " + ("met" if result["target_met"][v] else "NOT") \
            if v in TARGETS else ""
        print(f"{v:<22}{median[v]:>18.4f}{100 * overhead[v]:>11.1f}%{100 * in_recorder[v]:>12.1f}%"
              f"  {target}")


if __name__ == "__main__":
    main()
