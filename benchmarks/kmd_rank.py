"""Benchmark: how many modes should the KMD keep on real training windows? (docs/theory.md §6, §7)

Trains MLPs ``[d, 64, 32, C]`` (batch 16) with the library's own trainer and records two windows
per run: the **last 40 steps** (a snapshot every step) and **41 snapshots one epoch apart** (the
last 40 epochs). Datasets: scikit-learn's wine (300 epochs) and breast_cancer (150 epochs),
standardized, 30 % stratified test split; the synthetic teacher-student task of
``kooplearn_prune.data.make_synthetic`` (3000 samples, 20 features, 4 classes, 60 epochs) and the
bundled 8x8 digits (50 epochs). Optimizers: SGD (lr 0.05), SGD with momentum 0.9, Adam (1e-3),
SGD + momentum 0.9 + weight decay 5e-3, AdamW (1e-3, weight decay 1e-2).

Each window is decomposed three ways, side by side: ``KMD(rank=None)`` (full rank above the
precision floor, the default ``KMD()``), ``KMD(rank=10)`` (what the tutorials used) and
``KMD(rank="optimal")`` (the Gavish-Donoho threshold). Reported per window and summarized per
way:

* (a) overlap of the KMP mask with the magnitude (GMP) mask of the last snapshot at 90 %
  sparsity, on **converged** windows: relative motion ``‖θ_last − θ_first‖/‖θ_last‖`` below
  ``--converged`` (0.05);
* (b) the fixed point's distance from the last snapshot relative to the window's own motion,
  ``‖ξ* − θ_last‖/‖θ_last − θ_first‖`` (a fixed point far outside the window's scale is noise);
* (c) mask stability: overlap of the KMP masks at 90 % fitted on the two halves of the window
  (snapshots 0..20 and 20..40), next to the same overlap for the GMP masks of θ_20 and θ_40;
* the rank kept, how it was chosen, λ*, and the flags of ``FixedPointInfo``.

Prints JSON, then the tables.

    python benchmarks/kmd_rank.py            # 4 datasets x 5 optimizers x 2 windows (~1-2 min)
    python benchmarks/kmd_rank.py --quick    # wine and breast_cancer only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kooplearn_prune.data import load_digits, make_synthetic  # noqa: E402
from kooplearn_prune.koopman import KMD  # noqa: E402
from kooplearn_prune.nn import MLP  # noqa: E402
from kooplearn_prune.optim import SGD, Adam, AdamW  # noqa: E402
from kooplearn_prune.pruning.masks import global_mask  # noqa: E402
from kooplearn_prune.pruning.metrics import overlap  # noqa: E402
from kooplearn_prune.recording import TrajectoryRecorder  # noqa: E402
from kooplearn_prune.training import Trainer  # noqa: E402

WINDOW = 40  # snapshot intervals per window (m)
SPARSITY = 0.9
BATCH = 16
VARIANTS = {"full": None, "rank10": 10, "optimal": "optimal"}
OPTIMIZERS = {
    "sgd": lambda p: SGD(p, lr=0.05),
    "sgd_m0.9": lambda p: SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: Adam(p, lr=1e-3),
    "sgd_wd": lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "adamw": lambda p: AdamW(p, lr=1e-3, weight_decay=1e-2),
}
EPOCHS = {"wine": 300, "breast_cancer": 150, "teacher": 60, "digits": 50}


# --------------------------------------------------------------------------- data and training
def _sklearn_table(name: str, seed: int):
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.model_selection import train_test_split

    x, y = (load_wine if name == "wine" else load_breast_cancer)(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0)

    def scale(a):
        return ((a - mean) / std).astype(np.float32)

    return (scale(x_tr), y_tr.astype(np.int64)), (scale(x_te), y_te.astype(np.int64)), \
        int(y.max()) + 1


def load(name: str, seed: int):
    """``(train, test, n_classes)`` with ``(x, y)`` pairs, x float32 standardized."""
    if name in ("wine", "breast_cancer"):
        return _sklearn_table(name, seed)
    data = (make_synthetic(n_samples=3000, n_features=20, n_classes=4, seed=seed)
            if name == "teacher" else load_digits(seed=seed))
    return (data.x_train, data.y_train), (data.x_test, data.y_test), int(data.n_classes)


def train_windows(name: str, optimizer: str, seed: int):
    """Train once; return the step window, the epoch window (Trajectories) and test accuracy."""
    train, test, n_classes = load(name, seed)
    epochs = EPOCHS[name]
    model = MLP([train[0].shape[1], 64, 32, n_classes], seed=seed)
    steps_per_epoch = -(-train[0].shape[0] // BATCH)
    total = epochs * steps_per_epoch
    steps = TrajectoryRecorder(model, every=1, start=total - WINDOW)
    per_epoch = TrajectoryRecorder(model, every=steps_per_epoch, start=epochs - WINDOW,
                                   unit="epoch")
    trainer = Trainer(model, OPTIMIZERS[optimizer](model), callbacks=[steps, per_epoch],
                      progress=False)
    history = trainer.fit(train, epochs=epochs, batch_size=BATCH, seed=seed, eval_data=test)
    return steps.trajectory(), per_epoch.trajectory(), history.last()["test_accuracy"]


# --------------------------------------------------------------------------- measurements
def _kmp_mask(snapshots, layout, rank):
    kmd = KMD(rank=rank).fit(snapshots)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreliable fixed points are reported, not raised
        fixed = np.asarray(kmd.fixed_point())
    return kmd, fixed, global_mask(np.abs(fixed), SPARSITY, layout=layout)


def measure(trajectory, converged_below: float) -> dict:
    """Metrics (a)-(c) of the module docstring for one window, for every variant."""
    w = np.asarray(trajectory.snapshots)
    layout = trajectory.layout
    first, last = w[0].astype(np.float64), w[-1].astype(np.float64)
    motion = float(np.linalg.norm(last - first))
    relative_motion = motion / float(np.linalg.norm(last))
    gmp = global_mask(np.abs(last), SPARSITY, layout=layout)
    half = (w.shape[0] - 1) // 2
    gmp_mid = global_mask(np.abs(w[half].astype(np.float64)), SPARSITY, layout=layout)
    row = {"relative_motion": relative_motion, "converged": relative_motion < converged_below,
           "half_stability_gmp": overlap(gmp_mid, gmp, layout)}
    for variant, rank in VARIANTS.items():
        kmd, fixed, mask = _kmp_mask(w, layout, rank)
        _, _, mask_a = _kmp_mask(w[: half + 1], layout, rank)
        _, _, mask_b = _kmp_mask(w[half:], layout, rank)
        info = kmd.fixed_point_info_
        row[variant] = {
            "rank": int(kmd.rank_), "rank_method": kmd.rank_method_,
            "lambda_star": [info.eigenvalue.real, info.eigenvalue.imag],
            "reliable": bool(info.reliable), "complex": bool(info.stationary_is_complex),
            "competing": bool(info.competing),
            "overlap_vs_gmp": overlap(mask, gmp, layout),
            "shift_over_motion": float(np.linalg.norm(fixed - last)) / motion,
            "half_stability": overlap(mask_a, mask_b, layout),
        }
    return row


def summarize(rows: list[dict]) -> dict:
    """Per variant: medians, minima and counts over the windows."""
    out = {}
    conv = [r for r in rows if r["converged"]]
    for variant in VARIANTS:
        ranks = [r[variant]["rank"] for r in rows]
        ov = [r[variant]["overlap_vs_gmp"] for r in conv]
        shift = [r[variant]["shift_over_motion"] for r in rows]
        stab = [r[variant]["half_stability"] for r in rows]
        out[variant] = {
            "windows": len(rows), "converged_windows": len(conv),
            "rank_median": float(np.median(ranks)), "rank_min": min(ranks),
            "rank_max": max(ranks), "full_rank_windows": sum(k == WINDOW for k in ranks),
            "overlap_converged_median": float(np.median(ov)) if ov else None,
            "overlap_converged_min": min(ov) if ov else None,
            "shift_over_motion_median": float(np.median(shift)),
            "shift_over_motion_max": max(shift),
            "shift_over_motion_above_2": sum(s > 2 for s in shift),
            "half_stability_median": float(np.median(stab)), "half_stability_min": min(stab),
            "reliable": sum(r[variant]["reliable"] for r in rows),
            "complex": sum(r[variant]["complex"] for r in rows),
            "competing": sum(r[variant]["competing"] for r in rows),
        }
    gmp = [r["half_stability_gmp"] for r in rows]
    out["gmp_half_stability_median"] = float(np.median(gmp))
    out["gmp_half_stability_min"] = min(gmp)
    return out


# --------------------------------------------------------------------------- output
def print_tables(rows: list[dict], summary: dict, converged_below: float) -> None:
    print(f"\nper window (a = KMP-vs-GMP overlap @{SPARSITY:.0%}, b = shift/motion, c = half-"
          f"window mask stability; * = converged, motion < {converged_below})")
    head = f"{'dataset':14s} {'optimizer':9s} {'window':6s} {'motion':>8s} "
    for variant in VARIANTS:
        head += f"| {variant + ' r':>10s} {'a':>5s} {'b':>6s} {'c':>5s} "
    print(head + "| gmp c")
    for r in rows:
        line = (f"{r['dataset']:14s} {r['optimizer']:9s} {r['window']:6s} "
                f"{r['relative_motion']:7.1e}{'*' if r['converged'] else ' '} ")
        for variant in VARIANTS:
            v = r[variant]
            flag = "c" if v["complex"] else ("x" if v["competing"] else
                                             (" " if v["reliable"] else "u"))
            line += (f"| {v['rank']:3d} {v['rank_method'][:3]}{flag:>3s} "
                     f"{v['overlap_vs_gmp']:5.3f} {v['shift_over_motion']:6.2f} "
                     f"{v['half_stability']:5.3f} ")
        print(line + f"| {r['half_stability_gmp']:5.3f}")
    print("flags: u = unreliable, c = complex stationary pair, x = competing eigenvalues")
    print(f"\nsummary over {len(rows)} windows ({summary['full']['converged_windows']} converged)")
    print(f"{'':9s} {'rank med [min-max]':>19s} {'full':>5s} | {'(a) med':>7s} {'min':>6s} | "
          f"{'(b) med':>7s} {'max':>7s} {'>2':>3s} | {'(c) med':>7s} {'min':>6s} | "
          f"{'reliable':>8s} {'cplx':>4s} {'comp':>4s}")
    for variant in VARIANTS:
        s = summary[variant]
        ranks = f"{s['rank_median']:.0f} [{s['rank_min']}-{s['rank_max']}]"
        a_med = s["overlap_converged_median"] or float("nan")
        a_min = s["overlap_converged_min"] or float("nan")
        print(f"{variant:9s} {ranks:>19s} {s['full_rank_windows']:5d} | {a_med:7.3f} "
              f"{a_min:6.3f} | {s['shift_over_motion_median']:7.2f} "
              f"{s['shift_over_motion_max']:7.2f} {s['shift_over_motion_above_2']:3d} | "
              f"{s['half_stability_median']:7.3f} {s['half_stability_min']:6.3f} | "
              f"{s['reliable']:8d} {s['complex']:4d} {s['competing']:4d}")
    print(f"{'gmp':9s} {'':>19s} {'':5s} | {'':7s} {'':6s} | {'':7s} {'':7s} {'':3s} | "
          f"{summary['gmp_half_stability_median']:7.3f} {summary['gmp_half_stability_min']:6.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="wine and breast_cancer only (about a quarter of the time)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(EPOCHS), default=None)
    parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--converged", type=float, default=0.05,
                        help="a window is converged when ‖θ_last − θ_first‖/‖θ_last‖ is below this")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    datasets = args.datasets or (["wine", "breast_cancer"] if args.quick else list(EPOCHS))
    optimizers = args.optimizers or list(OPTIMIZERS)
    started = time.perf_counter()
    rows = []
    for name in datasets:
        for opt in optimizers:
            steps, epochs, accuracy = train_windows(name, opt, args.seed)
            for window, trajectory in (("steps", steps), ("epochs", epochs)):
                rows.append({"dataset": name, "optimizer": opt, "window": window,
                             "test_accuracy": accuracy, "n_params": trajectory.n_params,
                             **measure(trajectory, args.converged)})
            print(f"done {name} {opt} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    summary = summarize(rows)
    result = {"config": {"datasets": datasets, "optimizers": optimizers, "seed": args.seed,
                         "window": WINDOW, "sparsity": SPARSITY, "converged_below": args.converged,
                         "variants": {k: v for k, v in VARIANTS.items()}},
              "seconds": time.perf_counter() - started, "summary": summary, "windows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    print_tables(rows, summary, args.converged)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
