"""Overhead of the Lightning ``KoopmanPruning`` callback on a small CNN, recording every step.

Each round trains the same CNN from the same initialization twice, in alternating order: a
plain ``Trainer.fit`` and one with ``KoopmanPruning(every=1)`` whose window spans the whole run
(the masks are computed and applied at the last step). The time the callback spends computing
the masks (KMD fit, scores, magnitude overlap) is measured on its own, so the recording overhead
is ``(fit with callback - mask time - plain fit) / plain fit``. Prints one JSON document (every
round and the medians), then a table.

    python benchmarks/callback_overhead.py                 # 5 rounds, 2 epochs of 40 steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
from threadpoolctl import threadpool_limits

from kooplearn_prune.adapters import lightning as kp_lightning


class SmallCNN(pl.LightningModule):
    """conv 1→8 3x3, conv 8→16 3x3, max-pool, linear 16·12·12→10 (about 24 k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 8, 3)
        self.conv2 = torch.nn.Conv2d(8, 16, 3)
        self.fc = torch.nn.Linear(16 * 12 * 12, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.nn.functional.max_pool2d(x, 2).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader(steps: int, batch: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(steps * batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (steps * batch,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def fit(data, epochs: int, callback=None) -> dict[str, float]:
    """Wall and CPU seconds (this process, all threads) of ``trainer.fit``, and of the
    callback's mask computation inside it."""
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[] if callback is None
                         else [callback])
    times = {"mask_wall": 0.0, "mask_cpu": 0.0}
    if callback is not None:
        compute = callback.pruner.compute_masks

        def timed_compute():
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return compute()
            finally:
                times["mask_wall"] += time.perf_counter() - t0
                times["mask_cpu"] += time.process_time() - c0
        callback.pruner.compute_masks = timed_compute
    model = SmallCNN()
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(model, data)
    times.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # BLAS too: idle BLAS threads spinning after the KMD's SVD
    # would otherwise bill the next training steps for CPU time
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        import logging
        logging.getLogger(name).setLevel(logging.ERROR)
    data = loader(args.steps, args.batch)
    total = args.epochs * args.steps
    fit(data, 1)  # warm-up: imports, first-call allocations
    rounds = []
    for r in range(args.rounds):
        order = ("plain", "callback") if r % 2 == 0 else ("callback", "plain")
        row = {}
        for kind in order:
            callback = None if kind == "plain" else kp_lightning.KoopmanPruning(
                sparsity=0.9, every=1, stop=total)
            times = fit(data, args.epochs, callback)
            for clock in ("wall", "cpu"):
                row[f"{kind}_{clock}"] = times[clock]
            if callback is not None:
                row.update(mask_wall=times["mask_wall"], mask_cpu=times["mask_cpu"],
                           rows=len(callback.pruner.recorder))
        for clock in ("wall", "cpu"):
            plain, with_cb, mask = (row[f"plain_{clock}"], row[f"callback_{clock}"],
                                    row[f"mask_{clock}"])
            row[f"recording_overhead_{clock}"] = (with_cb - mask - plain) / plain
            row[f"total_overhead_{clock}"] = (with_cb - plain) / plain
        rounds.append(row)
    keys = [f"{what}_{clock}" for what in ("plain", "callback", "mask", "recording_overhead",
                                           "total_overhead") for clock in ("wall", "cpu")]
    median = {key: statistics.median(r[key] for r in rounds) for key in keys}
    result = {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch": args.batch,
              "threads": args.threads, "optimizer_steps": total,
              "parameters": sum(p.numel() for p in SmallCNN().parameters()),
              "rounds": rounds, "median": median,
              "torch": torch.__version__, "lightning": pl.__version__}
    print(json.dumps(result, indent=2))
    print(f"\nmedian of {args.rounds} interleaved rounds, {total} optimizer steps")
    print(f"{'':26s}{'wall':>10s}{'CPU':>10s}")
    for label, what in (("plain fit (s)", "plain"), ("fit with callback (s)", "callback"),
                        ("  of which masks (s)", "mask")):
        print(f"{label:26s}{median[what + '_wall']:10.3f}{median[what + '_cpu']:10.3f}")
    for label, what in (("recording overhead", "recording_overhead"),
                        ("total overhead", "total_overhead")):
        print(f"{label:26s}{100 * median[what + '_wall']:9.2f}%"
              f"{100 * median[what + '_cpu']:9.2f}%")


if __name__ == "__main__":
    main()
