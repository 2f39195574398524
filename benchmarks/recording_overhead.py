"""Cost of recording the trajectory: ``Trainer.fit`` with and without a ``TrajectoryRecorder``.

The benchmark MLP of ``train_throughput.py`` regime (a): 784-300-100-10, ReLU, plain SGD, float32,
batch 256, on MNIST-sized random data. Variants, alternated round by round in one process (the
order rotates), median seconds per epoch reported:

* ``none``            no recorder
* ``every_step``      a snapshot of θ after every optimizer step, in backend memory, the buffer
                      allocated when ``fit`` starts (the target: at most 5 % slower than ``none``)
* ``every_step_prealloc`` the same with ``capacity=`` given, so the buffer is allocated before
                      ``fit``: what remains is the per-step cost of recording
* ``every_step_grad`` the same plus the gradients
* ``every_step_disk`` every step into an on-disk memmap

    python benchmarks/recording_overhead.py [--quick] [--rounds 7] [--threads 1] [--json out.json]

Prints one JSON document and then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

VARIANTS = ("none", "every_step", "every_step_prealloc", "every_step_grad", "every_step_disk")
SIZES = (784, 300, 100, 10)
BATCH = 256
TARGET = 1.05


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, SIZES[0]), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((SIZES[0], SIZES[-1]), dtype=np.float32), axis=1)
    return x, y.astype(np.int64)


def one_run(variant: str, x: np.ndarray, y: np.ndarray, epochs: int, workdir: str) -> float:
    """Seconds per epoch of one fit (a fresh model each time, same seed)."""
    from kooplearn_prune.nn import MLP
    from kooplearn_prune.optim import SGD
    from kooplearn_prune.recording import TrajectoryRecorder
    from kooplearn_prune.training import Trainer

    model = MLP(list(SIZES), seed=0)
    callbacks = []
    rows = epochs * -(-int(x.shape[0]) // BATCH) + 1
    if variant != "none":
        callbacks.append(TrajectoryRecorder(
            model, every=1, record_gradients=variant == "every_step_grad",
            storage="disk" if variant == "every_step_disk" else "memory",
            directory=tempfile.mkdtemp(dir=workdir),
            capacity=rows if variant == "every_step_prealloc" else None))
    trainer = Trainer(model, SGD(model, lr=0.01), callbacks=callbacks, progress=False)
    start = time.perf_counter()
    trainer.fit((x, y), epochs=epochs, batch_size=BATCH, seed=0, eval_data=None)
    seconds = (time.perf_counter() - start) / epochs
    if callbacks:
        assert len(callbacks[0]) == epochs * trainer.steps_per_epoch + 1
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10000 samples instead of 60000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed fit")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    x, y = make_data(10000 if args.quick else 60000)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with threadpool_limits(args.threads), tempfile.TemporaryDirectory() as workdir:
        one_run("none", x[:2048], y[:2048], 1, workdir)  # warm-up
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for variant in order:
                times[variant].append(one_run(variant, x, y, args.epochs, workdir))
    median = {v: statistics.median(t) for v, t in times.items()}
    result = {
        "benchmark": "recording_overhead", "sizes": SIZES, "batch": BATCH,
        "samples": int(x.shape[0]), "threads": args.threads, "rounds": args.rounds,
        "seconds_per_epoch_median": median, "seconds_per_epoch_all": times,
        "overhead_vs_none": {v: median[v] / median["none"] - 1 for v in VARIANTS},
        "target_every_step_max_overhead": TARGET - 1,
        "target_met": median["every_step"] / median["none"] <= TARGET,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(f"\n{'variant':<22}{'s/epoch (median)':>18}{'overhead':>12}")
    for v in VARIANTS:
        print(f"{v:<22}{median[v]:>18.4f}{100 * (median[v] / median['none'] - 1):>11.1f}%")
    print(f"\ntarget: every_step overhead <= {100 * (TARGET - 1):.0f}%  ->  "
          f"{'met' if result['target_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
