"""``kooplearn-prune demo``: the whole story in under a minute on a laptop.

Train an MLP on the embedded digits data while recording every optimizer step, compute the KMD of
the last epoch, print the equivalence report, then compare every registered pruning method (KMP
and KGP next to their baselines and controls: magnitude, gradient, trend extrapolation, window
mean, random) at compressions 2-32 (with and without a short masked fine-tune), and write
``results.json``, ``results.csv`` and PNG figures into ``--out``. The oracle (magnitude of the
converged weights) is left out of the table: the last window ends at the converged network, so
it would repeat ``magnitude``; the window-by-window overlap uses it as the reference mask.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._io import write_json_atomic, write_text_atomic
from ..backend import get_backend, set_backend, to_numpy
from ..data import load_dataset
from ..koopman import KMD, FixedPointWarning, equivalence_report, kmp_scores
from ..koopman.uncertainty import subwindow_starts
from ..methods import METHODS, ROLES, get_method, method_mask, method_names, method_scores
from ..nn import MLP
from ..optim import SGD
from ..pruning.masks import global_mask
from ..pruning.metrics import compression as mask_compression
from ..pruning.metrics import overlap
from ..pruning.scores import magnitude_scores
from ..recording import TrajectoryRecorder
from ..training import PrintProgress, Trainer
from .evaluation import FinetuneConfig, evaluate_mask, window_scores

__all__ = ["run_demo", "prepare_output_dir", "COMPRESSIONS"]

COMPRESSIONS = (2, 4, 8, 16, 32)
#: The demo calls the complex eigenvalues noise when they carry under this share of the stationary
#: amplitude and move, between sub-window refits, this many times more than λ* does.
NOISE_SHARE = 0.05
NOISE_MOVE_RATIO = 100.0
OVERLAP_SPARSITY = 0.9


def prepare_output_dir(out: str | Path) -> Path:
    """Create ``out`` (if needed) and check it is a writable directory, before any work starts."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; choose a directory name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {path} is not writable ({err.strerror}); choose another "
                         f"directory") from err
    return path


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = prepare_output_dir(args.out)
    if args.backend:
        set_backend(args.backend)
    epochs = 20 if args.epochs is None else args.epochs
    if epochs < 2:
        raise ValueError("--epochs must be at least 2 (the demo compares training windows)")
    data = load_dataset(args.dataset, seed=args.seed)
    if data.task != "classification":
        raise ValueError(f"--dataset {args.dataset} is not a classification task")
    sizes = [data.n_features, 128, 64, data.n_classes]
    model = MLP(sizes, seed=args.seed)
    optimizer = SGD(model, lr=0.05, momentum=0.9)
    recorder = TrajectoryRecorder(model, every=1, record_gradients=True)
    print(f"[1/5] training MLP {'-'.join(map(str, sizes))} on {data.name} for {epochs} epochs "
          f"(backend {get_backend()}), recording every step")
    trainer = Trainer(model, optimizer, callbacks=[recorder, PrintProgress(printer=tqdm.write)],
                      progress=not args.no_progress)
    history = trainer.fit(data, epochs=epochs, batch_size=32, seed=args.seed)
    trajectory = recorder.trajectory()
    spe = trainer.steps_per_epoch
    final_window = trajectory.window(trajectory.n_snapshots - spe - 1)

    print(f"\n[2/5] KMD of the last epoch ({final_window.n_snapshots} snapshots) and the "
          f"equivalence report")
    kmd = KMD().fit(final_window)
    report = equivalence_report(final_window, kmd=kmd)
    noise = spectrum_noise(final_window, kmd)
    print(noise["text"])

    print(f"\n[3/5] window by window: overlap of each method's mask with the converged "
          f"network's magnitude mask (both at sparsity {OVERLAP_SPARSITY})")
    windows = _overlap_by_window(trajectory, spe, epochs)

    baseline = history.last()["test_accuracy"]
    print(f"\n[4/5] test accuracy % for each method and compression (unpruned network: "
          f"{100 * baseline:.1f} %): 'pruned' right after pruning, 'tuned' after a 1-epoch masked "
          f"fine-tune")
    rows = _compare_methods(model, data, final_window, kmd, args.seed, windows)

    print("\n[5/5] writing results")
    results = {
        "config": {"dataset": data.name, "sizes": sizes, "epochs": epochs, "seed": args.seed,
                   "backend": get_backend(), "optimizer": trajectory.metadata.optimizer_settings(),
                   "record_every": 1, "window_snapshots": final_window.n_snapshots},
        "history": history.records,
        "unpruned_accuracy": baseline,
        "equivalence": report.to_dict(),
        "spectrum_noise": {k: v for k, v in noise.items() if k != "text"},
        "overlap_by_window": windows,
        "methods": rows,
    }
    files = [write_json_atomic(out / "results.json", results),
             write_text_atomic(out / "results.csv", _to_csv(rows))]
    files += _figures(out, kmd, rows, windows, baseline, noise)
    for f in files:
        print(f"  wrote {f}")
    print(f"demo finished in {time.perf_counter() - started:.1f} s; results are in {out.resolve()}")
    return 0


def spectrum_noise(window: Any, kmd: Any) -> dict[str, Any]:
    """What the complex eigenvalues near the unit circle are, with the numbers that say so.

    They carry a tiny share of the stationary mode's amplitude ``|b_k*|``, and they do not come
    back when the KMD is refitted on contiguous half-windows (``koopman.subwindow_starts``, the
    refits of ``kmp_stability``, docs/theory.md §7): each one's distance to the nearest refit
    eigenvalue is far larger than λ*'s. That is the KMD's linear fit of mini-batch noise
    (tutorial 04), not weights that oscillate.
    """
    lam = np.asarray(to_numpy(kmd.eigenvalues_), dtype=complex)
    amp = np.abs(np.asarray(to_numpy(kmd.amplitudes_)))
    star = kmd.fixed_point_info_.index
    ring = [k for k in range(lam.size) if k != star and abs(lam[k].imag) > 1e-9]
    result: dict[str, Any] = {"n_complex": len(ring)}
    if not ring:
        result["text"] = "  spectrum: no complex eigenvalue besides the stationary one"
        return result
    length, starts = subwindow_starts(window.n_snapshots)
    ring_moves, star_moves = [], []
    for start in starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a half-window may be flagged; only λ is read here
            refit = np.asarray(to_numpy(KMD().fit(window.window(start, start + length))
                                        .eigenvalues_), dtype=complex)
        ring_moves += [float(np.abs(refit - lam[k]).min()) for k in ring]
        star_moves.append(float(np.abs(refit - lam[star]).min()))
    modulus = np.abs(lam[ring])
    result.update(modulus_range=(float(modulus.min()), float(modulus.max())),
                  amplitude_share=float(amp[ring].sum() / max(amp[star], 1e-300)),
                  refits=len(starts), refit_length=length,
                  median_move=float(np.median(ring_moves)), star_move=float(max(star_moves)))
    result["noise"] = bool(result["amplitude_share"] < NOISE_SHARE
                           and result["median_move"] > NOISE_MOVE_RATIO * result["star_move"])
    verdict = ("They are mini-batch noise, not oscillating weights" if result["noise"] else
               "They may be real oscillations (the noise test below fails; see tutorial 04)")
    result["text"] = (
        f"  spectrum: {len(ring)} complex eigenvalues ({len(ring) // 2} pairs) with |lambda| "
        f"{modulus.min():.2f}-{modulus.max():.2f}. {verdict}: together they carry "
        f"{result['amplitude_share']:.2%} of the stationary mode's amplitude (noise: under "
        f"{NOISE_SHARE:.0%}), and refitted on {len(starts)} sub-windows of {length} snapshots they "
        f"move by {result['median_move']:.3f} (median distance to the nearest refit eigenvalue) "
        f"while lambda* moves by at most {result['star_move']:.1e} (noise: over "
        f"{NOISE_MOVE_RATIO:g} times lambda*'s)")
    return result


def _unreliable_because(kmd: Any) -> str:
    """The checks of ``FixedPointInfo.reliable`` that failed, each with its number (§7)."""
    info = kmd.fixed_point_info_
    failed = []
    if info.distance_from_one > info.tol:
        failed.append(f"|lambda* - 1| = {info.distance_from_one:.2g} > {info.tol:.2g}")
    if info.growing_amplitude_share > info.max_growing_share:
        failed.append(f"growing modes carry {info.growing_amplitude_share:.2g} of the amplitude "
                      f"> {info.max_growing_share:.2g}")
    if info.stationary_is_complex:
        failed.append(f"lambda* = {info.eigenvalue:.4g} is complex")
    if info.competing:
        failed.append(f"a second eigenvalue is {info.runner_up_distance:.2g} from 1")
    return "; ".join(failed)


def _overlap_by_window(trajectory: Any, spe: int, epochs: int) -> dict[str, list[float]]:
    """For each epoch's window: overlap with the final network's mask (the oracle's) of KMP's,
    GMP's and the controls' masks (a Koopman result is only shown next to its controls)."""
    layout = trajectory.layout
    reference = global_mask(magnitude_scores(trajectory.last), OVERLAP_SPARSITY, layout=layout)
    controls = _window_controls()
    result: dict[str, list] = {"epoch": [], "kmp": [], "magnitude": [], "kmp_reliable": [],
                               **{name: [] for name in controls}}
    for e in range(1, epochs + 1):
        window = trajectory.window((e - 1) * spe, e * spe + 1)
        kmd = KMD().fit(window)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # early windows are far from a fixed point
            kmp = global_mask(kmp_scores(kmd), OVERLAP_SPARSITY, layout=layout)
        gmp = global_mask(magnitude_scores(window.last), OVERLAP_SPARSITY, layout=layout)
        result["epoch"].append(e)
        result["kmp"].append(overlap(kmp, reference, layout))
        result["magnitude"].append(overlap(gmp, reference, layout))
        result["kmp_reliable"].append(bool(kmd.fixed_point_info_.reliable))
        for name in controls:
            mask = global_mask(method_scores(name, window), OVERLAP_SPARSITY, layout=layout)
            result[name].append(overlap(mask, reference, layout))
        flag = "" if result["kmp_reliable"][-1] else \
            f"   (KMP's fixed point flagged unreliable: {_unreliable_because(kmd)})"
        others = "".join(f"   {name} {result[name][-1]:.4f}" for name in controls)
        print(f"  epoch {e:3d}: KMP {result['kmp'][-1]:.4f}   magnitude "
              f"{result['magnitude'][-1]:.4f}{others}{flag}")
    return result


def _window_controls() -> tuple[str, ...]:
    """The controls scored from a window alone (random is a floor, not a trend of the window)."""
    return tuple(name for name in method_names("control") if name != "random")


def _compare_methods(model: Any, data: Any, window: Any, kmd: Any, seed: int,
                     windows: dict[str, list]) -> list[dict]:
    rows = []
    finetune = FinetuneConfig(epochs=1, lr=0.01, momentum=0.9)
    layout = window.layout
    print(f"  Nx = compression over the {layout.n_prunable} prunable weights (kept 1 in N); over "
          f"all {layout.size} parameters, biases included, it is smaller (compression_all)")
    skipped = [m for m in method_names() if get_method(m).needs_converged]
    roles = {role: [m for m in method_names(role) if m not in skipped] for role in ROLES}
    print("  " + "; ".join(f"{role}: {', '.join(names)}" for role, names in roles.items() if names))
    print(f"  {'method':<20} " + "  ".join(f"{c:>2}x {'pruned':>6} / {'tuned':>5}"
                                         for c in COMPRESSIONS))
    for method in (m for m in method_names() if m not in skipped):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FixedPointWarning)  # step 2 of the report showed it
            scores = window_scores(method, window, kmd=kmd, model=model, data=data, seed=seed)
        line = []
        for c in COMPRESSIONS:
            sparsity = 1.0 - 1.0 / c
            mask = method_mask(method, scores, sparsity, window)
            acc = evaluate_mask(model, mask, data, window, finetune=finetune, seed=seed)
            rows.append({"method": method, "compression": c, "sparsity": sparsity,
                         "compression_prunable": mask_compression(mask, layout, over="prunable"),
                         "compression_all": mask_compression(mask, layout, over="all"),
                         "pre_accuracy": acc["pre_accuracy"],
                         "post_accuracy": acc["post_accuracy"], "nonzero": acc["nonzero"],
                         "size": layout.size})
            line.append(f"    {100 * acc['pre_accuracy']:6.1f} / {100 * acc['post_accuracy']:5.1f}")
        print(f"  {method:<20} " + "  ".join(line))
    all_line = ", ".join(f"{r['compression']}x -> {r['compression_all']:.2f}x"
                         for r in rows if r["method"] == rows[0]["method"])
    print(f"  compression over all parameters of the same masks: {all_line}")
    for method in skipped:
        print(f"  {METHODS[method].label} is not in the table: this window ends at the "
              f"converged network, so it would repeat magnitude (step 3, epoch "
              f"{windows['epoch'][-1]}: magnitude's overlap with the converged mask "
              f"{windows['magnitude'][-1]:.4f})")
    return rows


def _to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _figures(out: Path, kmd: Any, rows: list[dict], windows: dict, baseline: float,
             noise: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..plotting import (
        place_legend,
        plot_accuracy_vs_compression,
        plot_overlap_vs_epoch,
        plot_spectrum,
        save_figure,
    )

    files = []
    note = None
    if noise.get("n_complex"):
        low, high = noise["modulus_range"]
        verdict = "are mini-batch noise, not oscillations" if noise["noise"] else \
            "may be real oscillations"
        note = (f"The {noise['n_complex']} complex eigenvalues (|λ| {low:.2f}-{high:.2f}) "
                f"{verdict}:\ntogether {noise['amplitude_share']:.2%} of "
                f"the stationary amplitude; on {noise['refits']} sub-window refits they move by "
                f"{noise['median_move']:.3f}\n(median), λ* by at most {noise['star_move']:.1e}.")
    ax = plot_spectrum(kmd.eigenvalues_, kmd.amplitudes_, highlight=kmd.fixed_point_info_.index,
                       title="KMD of the last training epoch", note=note)
    ax.figure.set_size_inches(5.6, 5.4)
    files.append(save_figure(ax.figure, out / "spectrum.png"))

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4), sharey=True)
    for ax, key, title in ((axes[0], "pre_accuracy", "right after pruning"),
                           (axes[1], "post_accuracy", "after a 1-epoch masked fine-tune")):
        plot_accuracy_vs_compression(
            [{"method": r["method"], "compression": r["compression"], "accuracy": r[key]}
             for r in rows], ax=ax, baseline=baseline, title=title, legend="outside")
    files.append(save_figure(fig, out / "accuracy_vs_compression.png"))

    curves = {"KMP (window's predicted fixed point)": windows["kmp"],
              "magnitude (window's last weights)": windows["magnitude"],
              **{f"{METHODS[name].label} (control)": windows[name] for name in _window_controls()}}
    ax = plot_overlap_vs_epoch(windows["epoch"], curves,
                               title=f"Overlap with the converged network's mask "
                                     f"(sparsity {OVERLAP_SPARSITY})")
    unreliable = [e for e, ok in zip(windows["epoch"], windows["kmp_reliable"]) if not ok]
    if unreliable:
        values = [v for v, ok in zip(windows["kmp"], windows["kmp_reliable"]) if not ok]
        ax.plot(unreliable, values, "x", color="crimson", ms=9, mew=2,
                label="KMP fixed point flagged unreliable")
        place_legend(ax, "best")
    files.append(save_figure(ax.figure, out / "overlap_vs_window.png"))
    return files
