"""Benchmark: what recording a PyTorch model's training costs, and the KMD of what was recorded.

A small CNN (conv 1→c, ReLU, max-pool, conv c→2c stride 2, ReLU, linear → 10) trains on the
digits as 1x8x8 images with SGD + momentum on the CPU. Timed, per optimizer step:

* ``baseline``   the training loop alone;
* ``hook``       the same loop with ``TorchRecorder(every=1)`` on the optimizer's step post-hook,
                 buffer on the model's device (here the CPU);
* ``manual``     the same with explicit ``recorder.step()`` calls;
* ``hook+grad``  the hook, also recording gradients;
* ``hook_grow``  the hook without ``stop=``: the buffer is not sized up front and grows by
                 doubling (amortised O(1) per row, no row dropped).

The variants alternate within every round (the order rotates) and the median over rounds is
reported, so drifts of a shared machine hit all alike. Overhead = (variant − baseline) /
baseline, paired within each round, median over rounds; the target is at most 5 % for ``hook``.
The recording alone is also timed in isolation (``recorder.step()`` with no training), which is
the lower-noise number on a busy machine. Then ``KMD().fit`` and ``kmp_scores`` run on the
recorded trajectory (the window of the last round), and ``koopman_masks(..., "kmp")`` end to end.

    python benchmarks/torch_recording.py [--steps 300] [--rounds 7] [--width 16] [--threads 1]
                                         [--json out.json]

Prints one JSON document, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from torch import nn  # noqa: E402

from kooplearn_prune._io import write_json_atomic  # noqa: E402
from kooplearn_prune.adapters.torch import TorchRecorder, koopman_masks  # noqa: E402
from kooplearn_prune.data import load_dataset  # noqa: E402
from kooplearn_prune.koopman import KMD, kmp_scores  # noqa: E402

VARIANTS = ("baseline", "hook", "manual", "hook+grad", "hook_grow")
TARGET_OVERHEAD = 0.05


def small_cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(2 * width * 4, 10))


def run(variant: str, x: torch.Tensor, y: torch.Tensor, steps: int, width: int,
        batch_size: int) -> tuple[float, TorchRecorder | None]:
    """Seconds per optimizer step of one training run (data batches prepared beforehand)."""
    model = small_cnn(width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, x.shape[0], (batch_size,), generator=g) for _ in range(steps)]
    data = [(x[i], y[i]) for i in idx]
    rec = None
    if variant != "baseline":
        rec = TorchRecorder(model, every=1, stop=None if variant == "hook_grow" else steps,
                            record_gradients=variant == "hook+grad")
        rec.attach(None if variant == "manual" else opt)
    start = time.perf_counter()
    for xb, yb in data:
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
        if variant == "manual":
            rec.step()
    seconds = (time.perf_counter() - start) / steps
    if rec is not None:
        rec.detach()
    return seconds, rec


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    # The same thread count for torch and for NumPy's BLAS (the KMD): on a shared machine
    # oversubscribed BLAS threads make the small eigenproblems 30 times slower.
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    ds = load_dataset("digits")
    x = torch.from_numpy(np.asarray(ds.x_train)).reshape(-1, *ds.input_shape)
    y = torch.from_numpy(np.asarray(ds.y_train))

    run("baseline", x, y, 20, args.width, args.batch_size)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    recorder = None
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            seconds, rec = run(variant, x, y, args.steps, args.width, args.batch_size)
            times[variant].append(seconds)
            if variant == "hook":
                recorder = rec
    median = {v: statistics.median(t) for v, t in times.items()}
    # Paired within each round (same machine load), then the median over rounds.
    overhead = {v: statistics.median(a / b - 1.0 for a, b in zip(times[v], times["baseline"]))
                for v in VARIANTS[1:]}
    # The recording alone, away from the training noise: one snapshot (and gradients) per call.
    isolated = {}
    for grads in (False, True):
        model = small_cnn(args.width)
        rec = TorchRecorder(model, stop=2000, record_gradients=grads).attach()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        start = time.perf_counter()
        for _ in range(2000):
            rec.step()
        isolated["hook+grad" if grads else "hook"] = (time.perf_counter() - start) / 2000

    traj = recorder.trajectory()
    t0 = time.perf_counter()
    kmd = KMD().fit(traj)
    kmp_scores(kmd)
    kmd_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    koopman_masks(traj, "kmp", sparsity=0.9)
    masks_seconds = time.perf_counter() - t0

    result = {
        "device": "cpu", "torch": torch.__version__, "threads": args.threads,
        "steps": args.steps, "rounds": args.rounds, "batch_size": args.batch_size,
        "width": args.width, "n_params": traj.n_params, "n_snapshots": traj.n_snapshots,
        "ms_per_step": {v: 1e3 * s for v, s in median.items()},
        "overhead": overhead, "target_overhead": TARGET_OVERHEAD,
        "record_us_per_snapshot": {k: 1e6 * v for k, v in isolated.items()},
        "isolated_overhead": {k: v / median["baseline"] for k, v in isolated.items()},
        "meets_target": overhead["hook"] <= TARGET_OVERHEAD,
        "kmd_fit_and_kmp_s": kmd_seconds, "kmd_solver": str(kmd.solver_), "kmd_rank": kmd.rank_,
        "koopman_masks_kmp_s": masks_seconds,
    }
    print(json.dumps(result, indent=2))
    print()
    print(f"small CNN, n = {traj.n_params} parameters, batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<10} {'ms/step':>9} {'overhead':>9} {'record alone':>14}")
    for v in VARIANTS:
        extra = "" if v == "baseline" else f"{100 * overhead[v]:8.2f}%"
        alone = f"{1e6 * isolated[v]:6.1f} us {100 * isolated[v] / median['baseline']:4.1f}%" \
            if v in isolated else ""
        print(f"{v:<10} {1e3 * median[v]:9.3f} {extra:>9} {alone:>14}")
    print(f"KMD fit + KMP scores on {traj.n_snapshots} x {traj.n_params} snapshots "
          f"({kmd.solver_}, rank {kmd.rank_}): {1e3 * kmd_seconds:.1f} ms; "
          f"koopman_masks('kmp') end to end: {1e3 * masks_seconds:.1f} ms")
    print(f"target: recording overhead <= {100 * TARGET_OVERHEAD:.0f}% -> "
          f"{'met' if result['meets_target'] else 'NOT met'}")
    if args.json is not None:
        write_json_atomic(args.json, result)
    return result


if __name__ == "__main__":
    main()
