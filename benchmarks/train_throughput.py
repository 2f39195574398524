"""Seconds per training epoch: kooplearn_prune against PyTorch (CPU) and a hand-written NumPy loop.

Every framework trains the same float32 MLP (ReLU, plain SGD, softmax cross-entropy) on the same
data, with the same initial weights, the same shuffling and the same number of BLAS threads:

* ``kooplearn``        ``Trainer.fit`` (what users run: BatchIterator, finite-loss check, callbacks)
* ``kooplearn_user``   the loop a user writes without a Trainer, as tutorial 02 teaches it:
                       ``Tensor(xb)``, forward, ``cross_entropy``, ``zero_grad``, ``backward``,
                       ``step``, ``loss.item()``; it also shows the Trainer's share
* ``torch``            PyTorch on the CPU, ``torch.set_num_threads`` = the BLAS threads
* ``numpy_hand``       forward and backward written out in NumPy, no autograd, and no gradient
                       for the input of the first layer: the floor for a NumPy framework

Each measurement runs in its own subprocess; the frameworks alternate (the order rotates every
round) and the median over rounds is reported, so slow drifts of a shared machine hit all alike.
Besides the mean epoch (wall and CPU time), each run reports its fastest epoch: on a busy
machine, regime (b)'s 60 short epochs per run make that the steadiest of the three numbers.

Regimes: (a) MLP 784-300-100-10 at batch 64 and 256 on MNIST-sized random data (60000 x 784;
``--quick`` uses 10000 samples); (b) MLP 64-128-10 at batch 32 on digits-sized data (1347 x 64).
Targets: kooplearn and kooplearn_user <= 1.15 x numpy_hand in (a) at batch 256, <= 2 x in (b).

    python benchmarks/train_throughput.py [--quick] [--rounds 5] [--threads N] [--json out.json]
    python benchmarks/train_throughput.py --profile a256     # cProfile of the Trainer.fit path
    python benchmarks/train_throughput.py --profile b32 --frameworks kooplearn_user  # user loop

Prints one JSON document (stdout) and then a table of ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FRAMEWORKS = ("kooplearn", "kooplearn_user", "torch", "numpy_hand")
REGIMES = {
    # name: (layer sizes, batch size, samples (full, quick), epochs timed per run (full, quick))
    "a64": ((784, 300, 100, 10), 64, (60000, 10000), (1, 1)),
    "a256": ((784, 300, 100, 10), 256, (60000, 10000), (1, 2)),
    "b32": ((64, 128, 10), 32, (1347, 1347), (60, 20)),  # ~0.3 s: long enough on a busy machine
}
TARGETS = {"a256": 1.15, "b32": 2.0}  # kooplearn (and kooplearn_user) / numpy_hand
LR = 0.01
SEED = 0


# ============================================================================ the workers
class Stopwatch:
    """Wall-clock and process CPU seconds of a ``with`` block, and the wall time of each epoch.

    CPU time is far less sensitive than wall time to other processes on a shared machine; with
    one thread per framework it is the cleaner comparison (with several, it also counts threads
    that spin while they wait). ``lap()`` ends an epoch: the fastest epoch is the least
    disturbed one, which makes regime (b)'s many short epochs comparable even on a busy machine.
    """

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.laps: list[float] = []
        self._lap_start = self.wall
        return self

    def lap(self) -> None:
        now = time.perf_counter()
        self.laps.append(now - self._lap_start)
        self._lap_start = now

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def make_data(sizes: tuple[int, ...], n: int):
    """Gaussian inputs labelled by a random linear teacher (so the loss does go down)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, sizes[0]), dtype=np.float32)
    teacher = rng.standard_normal((sizes[0], sizes[-1]), dtype=np.float32)
    y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    return x, y


def initial_weights(sizes: tuple[int, ...]):
    """The kooplearn_prune MLP's initial state (host float32 arrays) for every framework."""
    from kooplearn_prune.nn import MLP

    state = MLP(list(sizes), seed=SEED).state_dict()
    return [(state[f"{2 * i}.weight"], state[f"{2 * i}.bias"]) for i in range(len(sizes) - 1)]


def run_kooplearn(sizes, batch, x, y, epochs) -> tuple[Stopwatch, float]:
    """``Trainer.fit``: BatchIterator, finite-loss check, callbacks."""
    from kooplearn_prune.nn import MLP
    from kooplearn_prune.optim import SGD
    from kooplearn_prune.training import Trainer

    def build():
        model = MLP(list(sizes), seed=SEED)
        return model, SGD(model, lr=LR)

    model, opt = build()
    Trainer(model, opt, progress=False).fit((x[:20 * batch], y[:20 * batch]), epochs=1,
                                            batch_size=batch, eval_data=None)  # warm-up
    model, opt = build()
    trainer = Trainer(model, opt, progress=False)
    with Stopwatch() as clock:
        history = trainer.fit((x, y), epochs=epochs, batch_size=batch, seed=SEED, eval_data=None)
    clock.laps = history["seconds"]  # Trainer times its epochs itself
    assert all(p.grad.dtype == p.data.dtype for p in model.parameters())
    return clock, history["train_loss"][-1]


def run_kooplearn_user(sizes, batch, x, y, epochs) -> tuple[Stopwatch, float]:
    """The user's own loop, line for line as tutorial 02 teaches it ("written by hand")."""
    from kooplearn_prune.autograd import Tensor
    from kooplearn_prune.autograd import functional as F
    from kooplearn_prune.data import BatchIterator
    from kooplearn_prune.nn import MLP
    from kooplearn_prune.optim import SGD

    def train_one_epoch(model, optimizer, batches):
        losses = []
        for xb, yb in batches:
            logits = model(Tensor(xb))
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return sum(losses) / len(losses)

    model = MLP(list(sizes), seed=SEED)
    warm_up = BatchIterator(x[:20 * batch], y[:20 * batch], batch_size=batch, seed=SEED)
    train_one_epoch(model, SGD(model, lr=LR), warm_up)
    model = MLP(list(sizes), seed=SEED)
    optimizer = SGD(model, lr=LR)
    batches = BatchIterator(x, y, batch_size=batch, seed=SEED)
    with Stopwatch() as clock:
        for _ in range(epochs):
            loss = train_one_epoch(model, optimizer, batches)
            clock.lap()
    assert all(p.grad.dtype == p.data.dtype for p in model.parameters())
    return clock, loss


def run_torch(sizes, batch, x, y, epochs, threads: int) -> tuple[Stopwatch, float]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    layers = []
    for i, (w, b) in enumerate(initial_weights(sizes)):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*layers)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def epoch_loop(X, Y, rng):
        n = X.shape[0]
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            xb, yb = X.index_select(0, idx), Y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]  # one sync per step, as Trainer does
        return total / n

    epoch_loop(X[:20 * batch], Y[:20 * batch], np.random.default_rng(SEED))  # warm-up
    with torch.no_grad():  # restart from the common initial weights
        for lin, (w, b) in zip([m for m in model if isinstance(m, torch.nn.Linear)],
                               initial_weights(sizes)):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    rng = np.random.default_rng(SEED)
    with Stopwatch() as clock:
        for _ in range(epochs):
            loss = epoch_loop(X, Y, rng)
            clock.lap()
    return clock, loss


def run_numpy_hand(sizes, batch, x, y, epochs) -> tuple[Stopwatch, float]:
    """Forward and backward by hand; every array float32; no gradient for the data."""
    import numpy as np

    n_classes = sizes[-1]

    def epoch_loop(params, x, y, rng):
        n = x.shape[0]
        order = rng.permutation(n)
        total = 0.0
        last = len(params) - 1
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            xb, yb = np.take(x, idx, axis=0), np.take(y, idx, axis=0)
            acts = [xb]
            for i, (w, b) in enumerate(params):
                z = acts[-1] @ w.T
                z += b
                acts.append(z if i == last else np.maximum(z, 0.0))
            z = acts[-1]
            shifted = z - z.max(axis=1, keepdims=True)
            exps = np.exp(shifted)
            sums = exps.sum(axis=1, keepdims=True)
            rows = np.arange(len(yb))
            total += float(np.log(sums).sum() - shifted[rows, yb].sum())
            g = exps / sums
            g[rows, yb] -= 1.0
            g *= 1.0 / len(yb)
            for i in range(last, -1, -1):
                w, b = params[i]
                a = acts[i]
                gw, gb = g.T @ a, g.sum(axis=0)
                if i > 0:  # the input of the first layer needs no gradient
                    g = g @ w
                    g *= a > 0
                w -= LR * gw
                b -= LR * gb
        return total / n

    fresh = lambda: [(w.copy(), b.copy()) for w, b in initial_weights(sizes)]  # noqa: E731
    epoch_loop(fresh(), x[:20 * batch], y[:20 * batch], np.random.default_rng(SEED))
    params = fresh()
    assert all(w.dtype == np.float32 for w, _ in params) and n_classes == params[-1][0].shape[0]
    rng = np.random.default_rng(SEED)
    with Stopwatch() as clock:
        for _ in range(epochs):
            loss = epoch_loop(params, x, y, rng)
            clock.lap()
    assert params[0][0].dtype == np.float32
    return clock, loss


def worker(framework: str, regime: str, quick: bool, threads: int) -> dict:
    sizes, batch, samples, epochs = REGIMES[regime]
    n, epochs = samples[quick], epochs[quick]
    x, y = make_data(sizes, n)
    if framework == "kooplearn":
        clock, loss = run_kooplearn(sizes, batch, x, y, epochs)
    elif framework == "kooplearn_user":
        clock, loss = run_kooplearn_user(sizes, batch, x, y, epochs)
    elif framework == "torch":
        clock, loss = run_torch(sizes, batch, x, y, epochs, threads)
    elif framework == "numpy_hand":
        clock, loss = run_numpy_hand(sizes, batch, x, y, epochs)
    else:
        raise ValueError(f"framework={framework!r} is unknown; choose from {FRAMEWORKS}")
    return {"framework": framework, "regime": regime, "seconds_per_epoch": clock.wall / epochs,
            "cpu_seconds_per_epoch": clock.cpu / epochs, "best_epoch_seconds": min(clock.laps),
            "final_train_loss": loss, "samples": n, "epochs_timed": epochs}


# ============================================================================ the driver
def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def blas_info() -> dict:
    try:
        from threadpoolctl import threadpool_info

        return {f"{i['internal_api']}": i["num_threads"] for i in threadpool_info()}
    except ImportError:
        return {}


def measure(framework: str, regime: str, quick: bool, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--regime", regime,
           "--threads", str(threads)] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{framework}/{regime} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10000 samples in regime (a)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="BLAS / torch threads for every framework")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--json", help="also write the JSON document to this file")
    parser.add_argument("--profile", metavar="REGIME",
                        help="cProfile the Trainer.fit path (or --frameworks kooplearn_user)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--regime", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.regime, args.quick, args.threads)))
        return
    if args.profile:
        loop = args.frameworks if args.frameworks == "kooplearn_user" else "kooplearn"
        profile(args.profile, args.quick, loop)
        return

    regimes = [r for r in args.regimes.split(",") if r]
    frameworks = [f for f in args.frameworks.split(",") if f]
    for name in regimes:
        if name not in REGIMES:
            parser.error(f"--regimes: {name!r} is unknown; choose from {', '.join(REGIMES)}")
    for name in frameworks:
        if name not in FRAMEWORKS:
            parser.error(f"--frameworks: {name!r} is unknown; choose from {', '.join(FRAMEWORKS)}")
    runs: dict[str, dict[str, list[float]]] = {r: {f: [] for f in frameworks} for r in regimes}
    cpu_runs: dict[str, dict[str, list[float]]] = {r: {f: [] for f in frameworks}
                                                   for r in regimes}
    best_runs: dict[str, dict[str, list[float]]] = {r: {f: [] for f in frameworks}
                                                    for r in regimes}
    losses: dict[str, dict[str, float]] = {r: {} for r in regimes}
    for k in range(args.rounds):
        for regime in regimes:
            order = frameworks[k % len(frameworks):] + frameworks[:k % len(frameworks)]
            for framework in order:
                result = measure(framework, regime, args.quick, args.threads)
                runs[regime][framework].append(result["seconds_per_epoch"])
                cpu_runs[regime][framework].append(result["cpu_seconds_per_epoch"])
                best_runs[regime][framework].append(result["best_epoch_seconds"])
                losses[regime][framework] = result["final_train_loss"]
                print(f"round {k + 1}/{args.rounds} {regime:5s} {framework:15s} "
                      f"{result['seconds_per_epoch']:.4f} s/epoch "
                      f"({result['cpu_seconds_per_epoch']:.4f} s CPU)", file=sys.stderr, flush=True)

    report = {
        "threads": args.threads, "quick": args.quick, "rounds": args.rounds,
        "python": sys.version.split()[0], "blas_threads_in_driver": blas_info(),
        "regimes": {},
    }
    for regime in regimes:
        sizes, batch, samples, _ = REGIMES[regime]
        med = {f: statistics.median(v) for f, v in runs[regime].items()}
        cpu = {f: statistics.median(v) for f, v in cpu_runs[regime].items()}
        best = {f: statistics.median(v) for f, v in best_runs[regime].items()}
        entry = {"sizes": sizes, "batch": batch, "samples": samples[args.quick],
                 "median_seconds_per_epoch": med,
                 # the minimum is the least disturbed run: useful on a shared machine
                 "min_seconds_per_epoch": {f: min(v) for f, v in runs[regime].items()},
                 "all_seconds_per_epoch": runs[regime],
                 "median_cpu_seconds_per_epoch": cpu,
                 "all_cpu_seconds_per_epoch": cpu_runs[regime],
                 # each run's fastest epoch (its least disturbed one), median over the runs
                 "median_best_epoch_seconds": best,
                 "all_best_epoch_seconds": best_runs[regime],
                 "final_train_loss": losses[regime]}
        if "numpy_hand" in med:
            entry["ratio_to_numpy_hand"] = {f: med[f] / med["numpy_hand"] for f in med}
            entry["cpu_ratio_to_numpy_hand"] = {f: cpu[f] / cpu["numpy_hand"] for f in cpu}
            entry["best_epoch_ratio_to_numpy_hand"] = {f: best[f] / best["numpy_hand"]
                                                       for f in best}
        if "torch" in med:
            entry["ratio_to_torch"] = {f: med[f] / med["torch"] for f in med}
        targeted = [f for f in ("kooplearn", "kooplearn_user") if f in med]
        if regime in TARGETS and targeted and "numpy_hand" in med:
            limit = TARGETS[regime]
            entry["targets"] = {}
            for f in targeted:
                ratio = med[f] / med["numpy_hand"]
                cpu_ratio = cpu[f] / cpu["numpy_hand"]
                best_ratio = best[f] / best["numpy_hand"]
                entry["targets"][f] = {"max_ratio_to_numpy_hand": limit, "ratio": ratio,
                                       "met": ratio <= limit, "cpu_ratio": cpu_ratio,
                                       "met_in_cpu_time": cpu_ratio <= limit,
                                       "best_epoch_ratio": best_ratio,
                                       "met_in_best_epoch": best_ratio <= limit}
        report["regimes"][regime] = entry
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    print(f"\nseconds per epoch: median of {report['rounds']} interleaved runs, "
          f"{report['threads']} thread(s) each; wall clock, process CPU time, and the wall time "
          f"of each run's fastest epoch")
    header = (f"{'regime':7s} {'framework':15s} {'wall s':>8s} {'/ hand':>7s} {'/ torch':>8s} "
              f"{'min wall':>9s} {'CPU s':>8s} {'CPU / hand':>11s} {'best ep':>8s} "
              f"{'best / hand':>12s}")
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for regime, entry in report["regimes"].items():
        least = entry["min_seconds_per_epoch"]
        cpu = entry["median_cpu_seconds_per_epoch"]
        best = entry["median_best_epoch_seconds"]
        for framework, seconds in entry["median_seconds_per_epoch"].items():
            r_hand = entry.get("ratio_to_numpy_hand", {}).get(framework, nan)
            r_torch = entry.get("ratio_to_torch", {}).get(framework, nan)
            r_cpu = entry.get("cpu_ratio_to_numpy_hand", {}).get(framework, nan)
            r_best = entry.get("best_epoch_ratio_to_numpy_hand", {}).get(framework, nan)
            print(f"{regime:7s} {framework:15s} {seconds:8.4f} {r_hand:7.2f} {r_torch:8.2f} "
                  f"{least[framework]:9.4f} {cpu[framework]:8.4f} {r_cpu:11.2f} "
                  f"{best[framework]:8.4f} {r_best:12.2f}")
        for framework, t in entry.get("targets", {}).items():
            verdict = {True: "met", False: "NOT met"}
            print(f"{'':7s} target: {framework} <= {t['max_ratio_to_numpy_hand']}x numpy_hand. "
                  f"Wall {t['ratio']:.2f}x ({verdict[t['met']]}), "
                  f"CPU {t['cpu_ratio']:.2f}x ({verdict[t['met_in_cpu_time']]}), "
                  f"best epoch {t['best_epoch_ratio']:.2f}x ({verdict[t['met_in_best_epoch']]})")


def profile(regime: str, quick: bool, loop: str = "kooplearn") -> None:
    """Where ``Trainer.fit`` (or the user loop) spends its time: cProfile, sorted by own time."""
    import cProfile
    import pstats

    sizes, batch, samples, epochs = REGIMES[regime]
    x, y = make_data(sizes, samples[quick])
    run = run_kooplearn_user if loop == "kooplearn_user" else run_kooplearn
    prof = cProfile.Profile()
    prof.enable()
    run(sizes, batch, x, y, epochs[quick])
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
