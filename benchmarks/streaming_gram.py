"""Benchmark: the KMP mask from a streamed Gram matrix against today's fit, and the streaming cost.

A float32 trajectory (``benchmarks/kmd.py``'s synthetic decaying modes + noise) of ``--m``+1
snapshots of ``--n`` parameters. Side by side, best of ``--repeat``:

* batch: ``KMD().fit(W)`` + ``kmp_scores`` + ``global_mask`` (90 % sparsity), today's path;
* streamed: rows fed one by one to ``GramAccumulator.follow`` as a recorder does (timed: the
  per-append cost), then, "after training", ``acc.gram`` (finishes the last block) +
  ``KMD().fit(W, gram=G)`` + the same mask: the time from the end of training to the mask.

Also the cost model of ``docs/scale.md`` (predicted vs measured seconds and bytes): the Gram
pass ``(m+1)²n/2`` multiply-adds plus reading ``(m+1)n`` numbers, the combination pass reading
them again, at the rates measured here for one float64 GEMM and one memory copy. Prints JSON, then
a table.

    python benchmarks/streaming_gram.py                      # n = 1e6, m = 100
    python benchmarks/streaming_gram.py --n 266610 --m 100   # recording_overhead's model size
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

from kmd import make_trajectory  # noqa: E402

from kooplearn_prune.koopman import KMD, kmp_scores  # noqa: E402
from kooplearn_prune.koopman.streaming import GramAccumulator  # noqa: E402
from kooplearn_prune.pruning.masks import global_mask  # noqa: E402

SPARSITY = 0.9
TRAINING_STEP_MS = 4.0  # the ~4 ms step of benchmarks/recording_overhead.py's MLP


def mask_of(kmd: KMD) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(global_mask(np.asarray(kmp_scores(kmd)), SPARSITY))


def batch_path(w: np.ndarray) -> tuple[float, np.ndarray, KMD]:
    start = time.perf_counter()
    kmd = KMD().fit(w)
    mask = mask_of(kmd)
    return time.perf_counter() - start, mask, kmd


def streamed_path(w: np.ndarray, block: int | None, background: bool
                  ) -> tuple[list[float], float, np.ndarray, KMD, dict]:
    kwargs = {"background": background} | ({"block": block} if block else {})
    acc = GramAccumulator(w.shape[1], **kwargs)
    acc.expect(w.shape[0])  # as a recorder does when its fit starts: the last row is left alone
    appends = []
    for j in range(w.shape[0]):
        start = time.perf_counter()
        acc.follow(w[: j + 1])
        appends.append(time.perf_counter() - start)
    start = time.perf_counter()
    gram = acc.gram  # the last row's pass (every core: training is over)
    t_gram = time.perf_counter()
    kmd = KMD().fit(w, gram=gram)
    t_fit = time.perf_counter()
    fixed = kmd.fixed_point()  # the combination pass: one read of W
    t_fixed = time.perf_counter()
    mask = mask_of(kmd)  # (fixed_point again, inside kmp_scores) + the exact-k selection
    end = time.perf_counter()
    del fixed
    parts = {"last_row_pass_s": t_gram - start, "eigenproblem_s": t_fit - t_gram,
             "fixed_point_pass_s": t_fixed - t_fit, "scores_and_mask_s": end - t_fixed}
    return appends, end - start - parts["fixed_point_pass_s"], mask, kmd, parts


def rates(n: int = 4_000_000) -> dict:
    """One-thread float64 GEMM rate (multiply-adds/s) and float32->float64 convert rate (numbers/s)
    on blocks shaped like the passes (101 x 16384 chunks)."""
    rng = np.random.default_rng(1)
    chunk = rng.standard_normal((101, 2**14))
    best = min(_timed(lambda: chunk @ chunk.T) for _ in range(5))
    src = rng.standard_normal((101, n // 101)).astype(np.float32)
    dst = np.empty(src.shape, np.float64)
    copy = min(_timed(lambda: np.copyto(dst, src, casting="unsafe")) for _ in range(5))
    return {"gemm_fma_per_s": 101 * 101 * 2**14 / 2 / best, "convert_per_s": src.size / copy}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def predicted(n: int, rows: int, rate: dict) -> dict:
    """docs/scale.md's model on one rank: Gram pass = FMAs/gemm + reads/convert; mask = the
    combination pass (k = 2 combinations: fixed point, read + convert) + the scores and selection
    (about 4 passes over n float64 numbers at the convert rate)."""
    gram = rows * rows * n / 2 / rate["gemm_fma_per_s"] + rows * n / rate["convert_per_s"]
    combine = rows * n / rate["convert_per_s"] + 2 * rows * n / rate["gemm_fma_per_s"]
    select = 4 * n / rate["convert_per_s"]
    return {"gram_s": gram, "batch_to_mask_s": gram + combine + select,
            "streamed_to_mask_s": combine + select,
            "append_mean_s": gram / rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--m", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--background", action="store_true")
    args = parser.parse_args()
    w, _ = make_trajectory(args.n, args.m, 1e-3, 1e-6)
    batch_best, streamed_best, appends_best = np.inf, np.inf, None
    for _ in range(args.repeat):
        t_batch, mask_batch, kmd_batch = batch_path(w)
        appends, t_streamed, mask_streamed, kmd_streamed, parts = streamed_path(
            w, args.block, args.background)
        batch_best = min(batch_best, t_batch)
        if t_streamed < streamed_best:
            streamed_best, appends_best, parts_best = t_streamed, appends, parts
    eig_diff = float(np.max(np.abs(np.sort_complex(kmd_batch.eigenvalues_) -
                                   np.sort_complex(kmd_streamed.eigenvalues_))))
    append_ms = 1e3 * float(np.mean(appends_best))
    model = predicted(args.n, args.m + 1, rates())
    result = {
        "n": args.n, "m": args.m, "dtype": "float32", "repeat": args.repeat,
        "block": args.block or "default", "background": args.background,
        "batch_fit_to_mask_s": batch_best, "streamed_end_to_mask_s": streamed_best,
        "ratio": streamed_best / batch_best, "target_ratio": 0.3,
        "append_ms_mean": append_ms, "append_ms_max": 1e3 * float(np.max(appends_best)),
        "append_share_of_4ms_step": append_ms / TRAINING_STEP_MS,
        "masks_equal": bool(np.array_equal(mask_batch, mask_streamed)),
        "rank_batch": kmd_batch.rank_, "rank_streamed": kmd_streamed.rank_,
        "max_eigenvalue_difference": eig_diff,
        "predicted": model,
        "streamed_parts_of_best": parts_best,
    }
    print(json.dumps(result, indent=2))
    rows = [("batch KMD().fit + KMP mask", batch_best, model["batch_to_mask_s"]),
            ("streamed: end of training -> mask", streamed_best, model["streamed_to_mask_s"]),
            ("per append (mean)", append_ms / 1e3, model["append_mean_s"])]
    title = f"n={args.n} m={args.m} float32"
    print(f"\n{title:<36} {'measured s':>11} {'model s':>9}")
    for name, measured, pred in rows:
        print(f"{name:<36} {measured:>11.4f} {pred:>9.4f}")
    print(f"ratio streamed/batch {result['ratio']:.2f} (target <= 0.3); append = "
          f"{100 * result['append_share_of_4ms_step']:.0f} % of a {TRAINING_STEP_MS:g} ms step; "
          f"masks equal: {result['masks_equal']}; max |Δλ| {eig_diff:.1e}")


if __name__ == "__main__":
    main()
