"""Benchmark: does the fixed-point reliability flag predict KMP mask quality? (docs/theory.md §7)

The windows of ``benchmarks/kmd_rank.py`` (same datasets, MLPs, optimizers, seed; its helpers are
imported) plus two **early** windows per run: 41 snapshots every step after epoch 1
(``early_steps``) and 41 snapshots every 5 steps after epoch 1 (``early_stride5``). The late
windows are the last 40 steps (``steps``) and the last 40 epochs (``epochs``).

For every window and every KMD rank rule (the default ``KMD()`` = ``KMD(rank=None)``, full
rank, and ``KMD(rank="optimal")``), side by side:

* ``reliable``: today's ``FixedPointInfo.reliable`` of the whole window;
* ``stability``: ``koopman.kmp_stability`` (5 contiguous half-length sub-windows), the mean overlap
  of their KMP masks at 90 % with the whole window's, and the λ* range;
* ``trusted``: ``reliable and stable``, the proposed verdict (``StabilityReport.trusted``);
* the **quality** users care about: for early windows the overlap of the KMP mask at 90 % with the
  magnitude mask of the converged network (the last snapshot of training), next to the same
  overlap for the magnitude mask of the window's last snapshot (GMP); for late windows the overlap
  of the KMP mask with the window's own GMP mask (Claim A, docs/theory.md §9).

Then, per window group and rank rule: mean quality of flagged-reliable vs unreliable windows and
of stable vs unstable ones, Spearman's ρ of each flag with the quality, and 2x2 tables (flag x
good), good meaning quality >= 0.95 (late) or KMP at least as near the converged mask as GMP
(early). Last, the paper's KMP (``koopman.paper``, no truncation) against the library's KMP at
the same full rank (``KMD(rank=None)``) on the same window, in float64 and in float32, with the
same exact-k masks, for real and complex λ*. Prints JSON, then the tables.

    python benchmarks/kmd_reliability.py             # 4 datasets x 5 optimizers x 4 windows
    python benchmarks/kmd_reliability.py --quick     # wine and breast_cancer only
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kmd_rank import BATCH, EPOCHS, OPTIMIZERS, WINDOW, load  # noqa: E402

from kooplearn_prune.koopman import (  # noqa: E402
    KMD,
    FixedPointWarning,
    kmp_stability,
    paper_kmp_scores,
)
from kooplearn_prune.nn import MLP  # noqa: E402
from kooplearn_prune.pruning.masks import global_mask  # noqa: E402
from kooplearn_prune.pruning.metrics import overlap  # noqa: E402
from kooplearn_prune.recording import TrajectoryRecorder  # noqa: E402
from kooplearn_prune.training import Trainer  # noqa: E402

SPARSITY = 0.9
RANKS = {"full": None, "optimal": "optimal"}
GOOD_LATE = 0.95
EARLY = ("early_steps", "early_stride5")


def train_windows(name: str, optimizer: str, seed: int) -> dict:
    """Train once (as kmd_rank.py does); the four windows as Trajectories and the final θ."""
    train, test, n_classes = load(name, seed)
    epochs = EPOCHS[name]
    model = MLP([train[0].shape[1], 64, 32, n_classes], seed=seed)
    spe = -(-train[0].shape[0] // BATCH)
    total = epochs * spe
    recorders = {
        "early_steps": TrajectoryRecorder(model, every=1, start=spe, stop=spe + WINDOW),
        "early_stride5": TrajectoryRecorder(model, every=5, start=spe, stop=spe + 5 * WINDOW),
        "steps": TrajectoryRecorder(model, every=1, start=total - WINDOW),
        "epochs": TrajectoryRecorder(model, every=spe, start=epochs - WINDOW, unit="epoch"),
    }
    trainer = Trainer(model, OPTIMIZERS[optimizer](model), callbacks=list(recorders.values()),
                      progress=False)
    trainer.fit(train, epochs=epochs, batch_size=BATCH, seed=seed, eval_data=test)
    windows = {kind: rec.trajectory() for kind, rec in recorders.items()}
    final = np.asarray(windows["steps"].snapshots[-1], dtype=np.float64)
    return {"windows": windows, "final": final}


def _kmp_mask(w, layout, rank):
    kmd = KMD(rank=rank).fit(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedPointWarning)
        fixed = np.asarray(kmd.fixed_point())
    return kmd, global_mask(np.abs(fixed), SPARSITY, layout=layout)


def measure(kind: str, trajectory, final: np.ndarray) -> dict:
    w = np.asarray(trajectory.snapshots)
    layout = trajectory.layout
    last = w[-1].astype(np.float64)
    gmp = global_mask(np.abs(last), SPARSITY, layout=layout)
    target = global_mask(np.abs(final), SPARSITY, layout=layout) if kind in EARLY else gmp
    row = {"snapshots": int(w.shape[0]),
           "relative_motion": float(np.linalg.norm(last - w[0]) / np.linalg.norm(last)),
           "gmp_quality": overlap(gmp, target, layout)}
    for variant, rank in RANKS.items():
        kmd, mask = _kmp_mask(w, layout, rank)
        info = kmd.fixed_point_info_
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RankWarning on sub-windows is expected, reported
            st = kmp_stability(trajectory, SPARSITY, kmd_kwargs={"rank": rank})
        quality = overlap(mask, target, layout)
        row[variant] = {
            "rank": int(kmd.rank_), "lambda_star": [info.eigenvalue.real, info.eigenvalue.imag],
            "reliable": bool(info.reliable), "complex": bool(info.stationary_is_complex),
            "competing": bool(info.competing), "distance_from_one": info.distance_from_one,
            "stability": st.mask_stability, "stability_min": st.min_overlap,
            "stable": bool(st.stable), "eigenvalue_width": st.eigenvalue_width,
            "fixed_point_spread": st.fixed_point_spread, "quality": quality,
            "trusted": bool(st.trusted),
            "good": bool(quality >= row["gmp_quality"]) if kind in EARLY
            else bool(quality >= GOOD_LATE),
        }
    # The paper's KMP (koopman.paper) next to the library's at full rank, same exact-k masks.
    library = row["full"]
    for dtype in ("float64", "float32"):
        paper = global_mask(paper_kmp_scores(w.astype(dtype)), SPARSITY, layout=layout)
        _, mask = _kmp_mask(w.astype(dtype), layout, None)
        library[f"paper_overlap_{dtype}"] = overlap(paper, mask, layout)
    return row


def _spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def _paper_summary(rows: list[dict]) -> dict:
    """Overlap of the paper's KMP mask with the library's (KMD(rank=None)), real vs complex λ*."""
    out = {}
    for dtype in ("float64", "float32"):
        for kind, sub in (("real", [r for r in rows if not r["full"]["complex"]]),
                          ("complex", [r for r in rows if r["full"]["complex"]])):
            ov = [r["full"][f"paper_overlap_{dtype}"] for r in sub]
            out[f"{dtype}/{kind}"] = {"windows": len(ov), "identical": sum(o == 1.0 for o in ov),
                                      "min": min(ov) if ov else None,
                                      "median": float(np.median(ov)) if ov else None}
    return out


def summarize(rows: list[dict]) -> dict:
    out = {"paper_vs_library": _paper_summary(rows)}
    groups = {"early": [r for r in rows if r["window"] in EARLY],
              "late": [r for r in rows if r["window"] not in EARLY]}
    for group, sub in groups.items():
        for variant in RANKS:
            vals = [r[variant] for r in sub]
            q = [v["quality"] for v in vals]
            gain = [r[variant]["quality"] - r["gmp_quality"] for r in sub]
            entry = {"windows": len(vals)}
            for flag in ("reliable", "stable", "trusted"):
                yes = [v["quality"] for v in vals if v[flag]]
                no = [v["quality"] for v in vals if not v[flag]]
                entry[flag] = {
                    "n_true": len(yes), "n_false": len(no),
                    "quality_mean_true": float(np.mean(yes)) if yes else None,
                    "quality_mean_false": float(np.mean(no)) if no else None,
                    "quality_min_true": min(yes) if yes else None,
                    "quality_min_false": min(no) if no else None,
                    "spearman_with_quality": _spearman([float(v[flag]) for v in vals], q),
                    "spearman_with_gain": _spearman([float(v[flag]) for v in vals], gain),
                    "table": {f"{flag}_good": sum(v[flag] and v["good"] for v in vals),
                              f"{flag}_bad": sum(v[flag] and not v["good"] for v in vals),
                              f"not_{flag}_good": sum(not v[flag] and v["good"] for v in vals),
                              f"not_{flag}_bad": sum(not v[flag] and not v["good"]
                                                     for v in vals)}}
            entry["spearman_stability_quality"] = _spearman([v["stability"] for v in vals], q)
            entry["spearman_stability_gain"] = _spearman([v["stability"] for v in vals], gain)
            out[f"{group}/{variant}"] = entry
    return out


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_tables(rows: list[dict], summary: dict) -> None:
    print(f"\nper window: R = reliable (today's flag), stab = mean KMP mask overlap over 5 "
          f"sub-windows, q = KMP quality @{SPARSITY:.0%} (early: vs converged GMP mask; late: vs "
          f"own GMP mask), gmp q = the same for GMP of the window's last snapshot")
    head = f"{'dataset':14s} {'optimizer':9s} {'window':13s} {'gmp q':>5s} "
    for variant in RANKS:
        head += f"| {variant:>7s} R {'stab':>5s} {'q':>5s} {'|λ-1|':>7s} "
    print(head + "| paper64 paper32")
    for r in rows:
        line = f"{r['dataset']:14s} {r['optimizer']:9s} {r['window']:13s} {r['gmp_quality']:5.3f} "
        for variant in RANKS:
            v = r[variant]
            line += (f"| {v['rank']:7d} {'y' if v['reliable'] else 'n'} {v['stability']:5.3f} "
                     f"{v['quality']:5.3f} {v['distance_from_one']:7.1e} ")
        print(line + f"| {r['full']['paper_overlap_float64']:7.3f} "
                     f"{r['full']['paper_overlap_float32']:7.3f}")
    print("\nsummary: mean quality when the flag is true / false (count), min, Spearman ρ with "
          "quality; 2x2 = [flag&good flag&bad | !flag&good !flag&bad]")
    print("\npaper's KMP vs the library's (KMD(rank=None), exact-k masks @90%): identical "
          "windows / all, min overlap")
    for key, e in summary["paper_vs_library"].items():
        print(f"  {key:16s} {e['identical']:2d} / {e['windows']:2d}  min {_fmt(e['min'])}")
    for key, e in summary.items():
        if key == "paper_vs_library":
            continue
        print(f"{key} ({e['windows']} windows), ρ(stability, quality) = "
              f"{_fmt(e['spearman_stability_quality'], '+.2f')}, ρ(stability, KMP − GMP "
              f"quality) = {_fmt(e['spearman_stability_gain'], '+.2f')}")
        for flag in ("reliable", "stable", "trusted"):
            f = e[flag]
            t = list(f["table"].values())
            print(f"  {flag:8s} true {_fmt(f['quality_mean_true'])} ({f['n_true']:2d}, min "
                  f"{_fmt(f['quality_min_true'])})  false {_fmt(f['quality_mean_false'])} "
                  f"({f['n_false']:2d}, min {_fmt(f['quality_min_false'])})  ρ "
                  f"{_fmt(f['spearman_with_quality'], '+.2f')} (gain "
                  f"{_fmt(f['spearman_with_gain'], '+.2f')})  "
                  f"2x2 [{t[0]} {t[1]} | {t[2]} {t[3]}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="wine and breast_cancer only")
    parser.add_argument("--datasets", nargs="+", choices=sorted(EPOCHS), default=None)
    parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    datasets = args.datasets or (["wine", "breast_cancer"] if args.quick else list(EPOCHS))
    optimizers = args.optimizers or list(OPTIMIZERS)
    started = time.perf_counter()
    rows = []
    for name in datasets:
        for opt in optimizers:
            run = train_windows(name, opt, args.seed)
            for kind, trajectory in run["windows"].items():
                rows.append({"dataset": name, "optimizer": opt, "window": kind,
                             **measure(kind, trajectory, run["final"])})
            print(f"done {name} {opt} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    summary = summarize(rows)
    result = {"config": {"datasets": datasets, "optimizers": optimizers, "seed": args.seed,
                         "window": WINDOW, "sparsity": SPARSITY, "good_late": GOOD_LATE,
                         "ranks": dict(RANKS)},
              "seconds": time.perf_counter() - started, "summary": summary, "windows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    print_tables(rows, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
