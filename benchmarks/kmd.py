"""Benchmark: the KMD fit + fixed point against exact DMD by full thin SVD and the BLAS floor.

Synthetic float32 trajectories with a known fixed point θ* (docs/theory.md §3): a few decaying modes
(four real eigenvalues and one complex pair) whose transient is ``--transient`` of ‖θ*‖ (1e-3 by
default), plus i.i.d. noise (``--noise``, 1e-6 of rms(θ*) per entry). For every size (n, m):

* floor: ``scipy.linalg.blas.ssyrk(1.0, W.T, trans=1)`` on the C-ordered ``(m+1, n)`` array (no
  copy), the float32 Gram matrix: the least work any method of snapshots can do;
* kmd: ``KMD(solver="gram").fit(W)`` followed by ``fixed_point()``;
* svd: plain exact DMD through a full thin SVD, ``np.linalg.svd(X.T, full_matrices=False)`` on the
  float32 snapshots (the paper's approach), with its fixed point;
* pydmd: ``pydmd.DMD(exact=True)`` when PyDMD is importable (skipped with a note otherwise).

Reported: best-of-``--repeat`` wall time, peak extra memory relative to the trajectory's own size
(tracemalloc, which tracks NumPy's allocations, and the process's peak resident memory, which also
sees LAPACK work space), the fixed point's relative error, whether the transient was resolved
(fixed-point error below a tenth of the last snapshot's distance from θ*), and the agreement of the
KMP mask at 90 % sparsity with the mask of the true fixed point. A second, noiseless trajectory
with a transient of ``--small-transient`` (1e-4) of ‖θ*‖ checks that the float64 Gram resolves it
(docs/theory.md §6). Prints JSON, then a table.

    python benchmarks/kmd.py                 # quick: n = 1e5, 1e6 with m = 100
    python benchmarks/kmd.py --full          # n in {1e5, 1e6, 4e6} x m in {20, 50, 100}
    python benchmarks/kmd.py --n 1000000 --m 100 --repeat 5
    python benchmarks/kmd.py --n 1000000 --no-svd --n-jobs 1   # single-threaded KMD
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from scipy.linalg.blas import ssyrk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kooplearn_prune.koopman import KMD, FixedPointWarning, kmp_scores  # noqa: E402
from kooplearn_prune.koopman.snapshots import resolve_jobs  # noqa: E402
from kooplearn_prune.pruning.masks import global_mask  # noqa: E402
from kooplearn_prune.pruning.metrics import overlap  # noqa: E402

TRUE_REAL = (0.97, 0.9, 0.8, 0.6)
TRUE_PAIR = (0.93, 0.3)  # ρ, φ: λ = ρ e^{±iφ}
SPARSITY = 0.9
TARGETS = {"n": 1_000_000, "m": 100, "max_ratio_to_floor": 2.0, "min_speedup_vs_svd": 20.0,
           "max_peak_extra": 0.25}


# --------------------------------------------------------------------------- data
def make_trajectory(n: int, m: int, transient: float, noise: float, seed: int = 0):
    """float32 snapshots ``(m+1, n)`` of θ_t = θ* + transient modes + noise, and θ* (float64)."""
    rng = np.random.default_rng(seed)
    theta_star = rng.standard_normal(n)
    n_dirs = len(TRUE_REAL) + 2
    directions = rng.standard_normal((n_dirs, n)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # each mode starts at `transient`·‖θ*‖/√(modes), so the whole transient is about that size
    amplitude = transient * float(np.linalg.norm(theta_star)) / np.sqrt(n_dirs)
    rho, phi = TRUE_PAIR
    snapshots = np.empty((m + 1, n), dtype=np.float32)
    noise_scale = noise * float(np.sqrt(np.mean(theta_star**2)))
    for j in range(m + 1):
        weights = [lam**j for lam in TRUE_REAL] + [rho**j * np.cos(phi * j),
                                                   rho**j * np.sin(phi * j)]
        row = theta_star + amplitude * (np.asarray(weights, dtype=np.float32) @ directions)
        if noise_scale > 0:
            row += noise_scale * rng.standard_normal(n)
        snapshots[j] = row
    return snapshots, theta_star


def true_eigenvalues() -> np.ndarray:
    rho, phi = TRUE_PAIR
    return np.array([1.0, *TRUE_REAL, rho * np.exp(1j * phi), rho * np.exp(-1j * phi)])


# --------------------------------------------------------------------------- measuring
def _rss_peak_reset() -> int | None:
    """Reset the peak resident memory (Linux) and return the current resident bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status_bytes_meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(fn, repeat: int, nbytes: int) -> tuple[dict, object]:
    """Best wall time over ``repeat`` runs; peak extra memory (first run) / ``nbytes``."""
    gc.collect()
    rss_before = _rss_peak_reset()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    times = [time.perf_counter() - t0]
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = _status_bytes("VmHWM")
    for _ in range(repeat - 1):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    stats = {
        "seconds": min(times),
        "seconds_all": [round(t, 4) for t in times],
        "peak_extra_traced": traced_peak / nbytes,
        "peak_extra_rss": None if rss_before is None or rss_peak is None
        else max(rss_peak - rss_before, 0) / nbytes,
    }
    return stats, result


def eigen_error(found: np.ndarray) -> float:
    """Largest distance from a true eigenvalue to the nearest found one."""
    found = np.asarray(found)
    return float(max(np.min(np.abs(found - lam)) for lam in true_eigenvalues()))


def fixed_point_quality(fixed: np.ndarray, theta_star: np.ndarray, last_error: float,
                        true_mask: np.ndarray) -> dict:
    err = float(np.linalg.norm(fixed - theta_star) / np.linalg.norm(theta_star))
    mask = global_mask(np.abs(fixed), SPARSITY)
    return {"fixed_point_error": err, "resolved": bool(err <= 0.1 * last_error),
            "mask_agreement": overlap(mask, true_mask)}


# --------------------------------------------------------------------------- the contenders
N_JOBS: list = [None]  # set from --n-jobs


def kmd_fit_and_fixed_point(snapshots):
    kmd = KMD(solver="gram", n_jobs=N_JOBS[0]).fit(snapshots)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedPointWarning)
        fixed = kmd.fixed_point()
    return kmd, fixed


def threaded_float32_floor(snapshots, workers: int, cols: int = 2**14):
    """The float32 Gram with the same threads kmd uses: ``c @ c.T`` per chunk (BLAS ssyrk on a
    strided view, no copy), chunks spread over ``workers`` threads, one BLAS thread each."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    n = snapshots.shape[1]
    starts = list(range(0, n, cols))

    def lane(i):
        g = np.zeros((snapshots.shape[0],) * 2, dtype=np.float32)
        for a in starts[i::workers]:
            c = snapshots[:, a:a + cols]
            g += c @ c.T
        return g

    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(lane, range(workers)))


def svd_exact_dmd(snapshots, tol: float):
    """Exact DMD (Tu et al.) with a full thin SVD of Xᵀ, as in the paper's code; its fixed point."""
    x_t, y_t = snapshots[:-1].T, snapshots[1:].T
    u, s, vh = np.linalg.svd(x_t, full_matrices=False)
    r = int(np.sum(s > tol * s[0]))
    u, s, v = u[:, :r], s[:r], vh[:r].T
    y_v = (y_t @ v) / s                                  # Yᵀ V Σ⁻¹, (n, r)
    lam, w = np.linalg.eig(u.T @ y_v)
    modes = (y_v @ w) / lam                              # exact modes, (n, r) complex
    b = np.linalg.lstsq(modes, snapshots[0], rcond=None)[0]
    k = int(np.argmin(np.abs(lam - 1)))
    return lam, np.real(b[k] * modes[:, k])


def pydmd_fixed_point(snapshots):
    from pydmd import DMD

    dmd = DMD(svd_rank=0, exact=True).fit(snapshots.T)
    lam = np.asarray(dmd.eigs)
    k = int(np.argmin(np.abs(lam - 1)))
    return lam, np.real(dmd.amplitudes[k] * dmd.modes[:, k])


# --------------------------------------------------------------------------- one size
def run_case(n: int, m: int, args) -> dict:
    snapshots, theta_star = make_trajectory(n, m, args.transient, args.noise, seed=args.seed)
    nbytes = snapshots.nbytes
    last_error = float(np.linalg.norm(snapshots[-1] - theta_star) / np.linalg.norm(theta_star))
    true_mask = global_mask(np.abs(theta_star), SPARSITY)
    row: dict = {"n": n, "m": m, "trajectory_mb": nbytes / 2**20,
                 "last_snapshot_error": last_error,
                 "gmp_last_mask_agreement": overlap(global_mask(np.abs(snapshots[-1]), SPARSITY),
                                                    true_mask)}

    # floor and kmd alternate, so that both see the same load on a shared machine
    floor, _ = measure(lambda: ssyrk(1.0, snapshots.T, trans=1), 1, nbytes)
    stats, (kmd, fixed) = measure(lambda: kmd_fit_and_fixed_point(snapshots), 1, nbytes)
    for _ in range(args.repeat - 1):
        for entry, fn in ((floor, lambda: ssyrk(1.0, snapshots.T, trans=1)),
                          (stats, lambda: kmd_fit_and_fixed_point(snapshots))):
            t0 = time.perf_counter()
            fn()
            entry["seconds_all"].append(round(time.perf_counter() - t0, 4))
            entry["seconds"] = min(entry["seconds"], entry["seconds_all"][-1])
    row["floor"] = floor
    workers = resolve_jobs(N_JOBS[0])
    floor_threads, _ = measure(lambda: threaded_float32_floor(snapshots, workers), args.repeat,
                               nbytes)
    floor_threads["threads"] = workers
    row["floor_threaded"] = floor_threads
    stats.update(fixed_point_quality(np.asarray(fixed), theta_star, last_error, true_mask))
    stats.update({"rank": kmd.rank_, "eigenvalue_error": eigen_error(kmd.eigenvalues_),
                  "tol": kmd.tol_, "kmp_mask_agreement": overlap(
                      global_mask(kmp_scores(kmd), SPARSITY), true_mask)})
    stats["ratio_to_floor"] = stats["seconds"] / floor["seconds"]
    stats["ratio_to_threaded_floor"] = stats["seconds"] / floor_threads["seconds"]
    row["kmd"] = stats
    del kmd, fixed

    # docs/theory.md §6: a noiseless float32 trajectory whose transient is 1e-4 of ‖θ‖.
    quiet, quiet_star = make_trajectory(n, m, args.small_transient, 0.0, seed=args.seed + 1)
    quiet_last = float(np.linalg.norm(quiet[-1] - quiet_star) / np.linalg.norm(quiet_star))
    kmd, fixed = kmd_fit_and_fixed_point(quiet)
    check = fixed_point_quality(np.asarray(fixed), quiet_star, quiet_last,
                                global_mask(np.abs(quiet_star), SPARSITY))
    check.update({"transient": args.small_transient, "last_snapshot_error": quiet_last,
                  "rank": kmd.rank_, "eigenvalue_error": eigen_error(kmd.eigenvalues_)})
    row["small_transient"] = check
    del quiet, kmd, fixed

    available = _status_bytes_meminfo("MemAvailable")
    if args.no_svd:
        row["svd"] = {"skipped": "--no-svd"}
    elif available is not None and 9 * nbytes > 0.8 * available:
        need = 8 * nbytes / 2**30
        row["svd"] = {"skipped": f"the full SVD needs about 8x the trajectory ({need:.1f} GiB), "
                                 f"more than this machine has free"}
    else:
        stats, (lam, fixed) = measure(lambda: svd_exact_dmd(snapshots, row["kmd"]["tol"]),
                                      args.svd_repeat, nbytes)
        stats.update(fixed_point_quality(fixed, theta_star, last_error, true_mask))
        stats["eigenvalue_error"] = eigen_error(lam)
        stats["kmd_speedup"] = stats["seconds"] / row["kmd"]["seconds"]
        row["svd"] = stats

    try:
        import pydmd  # noqa: F401
    except ImportError:
        row["pydmd"] = {"skipped": "PyDMD is not importable (pip install pydmd to compare)"}
    else:
        stats, (lam, fixed) = measure(lambda: pydmd_fixed_point(snapshots), args.svd_repeat,
                                      nbytes)
        stats.update(fixed_point_quality(fixed, theta_star, last_error, true_mask))
        stats["eigenvalue_error"] = eigen_error(lam)
        stats["kmd_speedup"] = stats["seconds"] / row["kmd"]["seconds"]
        row["pydmd"] = stats
    return row


# --------------------------------------------------------------------------- reporting
def table(rows: list[dict]) -> str:
    head = (f"{'n':>9} {'m':>4} {'MB':>6} | {'floor s':>8} {'kmd s':>7} {'x floor':>7} "
            f"{'x thr':>6} | "
            f"{'svd s':>7} {'speedup':>7} | {'peak kmd':>8} {'kmd rss':>7} {'peak svd':>8} | "
            f"{'fp err kmd':>10} {'fp err svd':>10} {'last err':>9} | "
            f"{'mask kmp':>8} {'mask gmp':>8} | {'1e-4: fp err':>12} {'last err':>9} "
            f"{'resolved':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        k, s, q = r["kmd"], r["svd"], r["small_transient"]
        svd_t = f"{s['seconds']:7.2f}" if "seconds" in s else f"{'-':>7}"
        speed = f"{s['kmd_speedup']:6.1f}x" if "seconds" in s else f"{'-':>7}"
        peak_s = f"{max(s['peak_extra_rss'] or 0, s['peak_extra_traced']):8.2f}" \
            if "seconds" in s \
            else f"{'-':>8}"
        err_s = f"{s['fixed_point_error']:10.2e}" if "seconds" in s else f"{'-':>10}"
        peak_k = k["peak_extra_traced"]
        rss_k = f"{k['peak_extra_rss']:7.3f}" if k["peak_extra_rss"] is not None else f"{'-':>7}"
        lines.append(
            f"{r['n']:>9} {r['m']:>4} {r['trajectory_mb']:6.0f} | {r['floor']['seconds']:8.3f} "
            f"{k['seconds']:7.3f} {k['ratio_to_floor']:6.2f}x "
            f"{k['ratio_to_threaded_floor']:5.2f}x | {svd_t} {speed} | "
            f"{peak_k:8.3f} {rss_k} {peak_s} | {k['fixed_point_error']:10.2e} {err_s} "
            f"{r['last_snapshot_error']:9.2e} | "
            f"{k['kmp_mask_agreement']:8.5f} {r['gmp_last_mask_agreement']:8.5f} | "
            f"{q['fixed_point_error']:12.2e} {q['last_snapshot_error']:9.2e} "
            f"{str(q['resolved']):>8}")
    lines.append("floor = one ssyrk call (float32 Gram, single-threaded for these shapes); "
                 "x thr = kmd time / float32 Gram with kmd's threads; kmd runs "
                 f"{rows[0]['floor_threaded']['threads'] if rows else '?'} thread(s)")
    lines.append("peak = peak extra memory / trajectory bytes: traced (NumPy allocations) and "
                 "resident (RSS, sees LAPACK work space too; max of both for svd); "
                 "fp err = ‖fixed point − θ*‖/‖θ*‖; last err = the same for the last "
                 "snapshot; mask = overlap of the 90 %-sparsity mask with θ*'s; 1e-4 = noiseless "
                 "precision check (resolved: fp err <= last err / 10)")
    pyd = {r["pydmd"].get("skipped") for r in rows if "skipped" in r["pydmd"]}
    if pyd:
        lines.append(f"pydmd: {pyd.pop()}")
    return "\n".join(lines)


def targets(rows: list[dict]) -> dict | None:
    for r in rows:
        if r["n"] == TARGETS["n"] and r["m"] == TARGETS["m"]:
            k = r["kmd"]
            peak = k["peak_extra_traced"]
            out = {
                "ratio_to_floor": [round(k["ratio_to_floor"], 3),
                                   k["ratio_to_floor"] <= TARGETS["max_ratio_to_floor"]],
                "ratio_to_threaded_floor": round(k["ratio_to_threaded_floor"], 3),
                "peak_extra_traced": [round(peak, 3), peak <= TARGETS["max_peak_extra"]],
                "peak_extra_rss": k["peak_extra_rss"],
                "transient_1e-4_resolved": [r["small_transient"]["fixed_point_error"],
                                            r["small_transient"]["resolved"]],
            }
            if "kmd_speedup" in r["svd"]:
                sp = r["svd"]["kmd_speedup"]
                out["speedup_vs_svd"] = [round(sp, 1), sp >= TARGETS["min_speedup_vs_svd"]]
            return out
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=float, nargs="+", default=None,
                        help="parameter counts (default 1e5 1e6; --full: 1e5 1e6 4e6)")
    parser.add_argument("--m", type=int, nargs="+", default=None,
                        help="m (snapshots - 1) (default 100; --full: 20 50 100)")
    parser.add_argument("--full", action="store_true", help="every n x m of the issue")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of floor and kmd")
    parser.add_argument("--svd-repeat", type=int, default=1, help="timed runs of svd/pydmd")
    parser.add_argument("--no-svd", action="store_true", help="skip the full-SVD baseline")
    parser.add_argument("--transient", type=float, default=1e-3, help="‖transient‖/‖θ*‖")
    parser.add_argument("--small-transient", type=float, default=1e-4,
                        help="‖transient‖/‖θ*‖ of the noiseless precision check")
    parser.add_argument("--noise", type=float, default=1e-6, help="noise / rms(θ*) per entry")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS threads (threadpoolctl); default: the library's choice")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="KMD(n_jobs=...) threads (default: every usable core, at most 8)")
    args = parser.parse_args(argv)
    N_JOBS[0] = args.n_jobs
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    ns = args.n or ([1e5, 1e6, 4e6] if args.full else [1e5, 1e6])
    ms = args.m or ([20, 50, 100] if args.full else [100])
    rows = []
    for n in ns:
        for m in ms:
            rows.append(run_case(int(n), int(m), args))
            print(f"done n={int(n)} m={m}", file=sys.stderr, flush=True)
    result = {"cases": rows, "targets_at_n1e6_m100": targets(rows),
              "settings": {"transient": args.transient, "noise": args.noise,
                           "repeat": args.repeat, "sparsity": SPARSITY,
                           "threads": args.threads, "n_jobs": args.n_jobs,
                           "numpy": np.__version__}}
    print(json.dumps(result, indent=2, default=float))
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
