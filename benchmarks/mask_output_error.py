"""Benchmark: why KMP's early MnistNet mask costs more accuracy than GMP's, with its control.

Trains MnistNet as the bundled ``mnistnet_cpu`` experiment does (the same ``TorchStudy`` and
``train_torch_seed``, the same data, windows and KMD) and, at every window epoch asked for and
the compression asked for, compares four masks of the window's last snapshot:

* ``kmp``            KMP (docs/theory.md §9);
* ``magnitude``      GMP, the window's own magnitude mask (docs/theory.md §8);
* ``trend_two_point`` the two-point trend control (docs/theory.md §12);
* ``random_swap``    GMP's mask with, in every prunable tensor, as many kept entries removed and
                     as many removed entries kept, chosen at random, as KMP differs from GMP
                     there (so its overlap with GMP equals KMP's); ``--draws`` draws per seed.

Per mask: overlap with GMP at the same window (docs/theory.md §13), test accuracy right after
pruning (masks baked, no fine-tune), and per layer with a prunable tensor the relative output
error ``‖ΔW·x + Δb‖ / ‖W·x + b‖`` over the test set, where ``ΔW = W − W⊙M`` (what the mask
removes) and ``x`` is the layer's input in the unpruned network (forward hooks): the error of
that layer alone. For every weight tensor, the entries the mask removes but GMP keeps are
described by the share of its output row that carries the row's majority sign (mean over rows
holding at least ``MIN_ROW`` such entries; random signs give about 0.6 at these counts, hence
the control; its entries are spread over more rows, which raises that baseline) and by the
share moving toward zero over the window (sign of θ_end − θ_start opposite to θ_end's). The
table also shows the control's worst draw (lowest accuracy, largest error) over seeds.

    OMP_NUM_THREADS=1 python benchmarks/mask_output_error.py [--seeds 0 1 2] [--windows 1 3 6]
                                                              [--compression 2] [--draws 10]
                                                              [--json out.json]

Prints one JSON document, then a table (mean over seeds, and min-max).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kooplearn_prune._io import write_json_atomic  # noqa: E402
from kooplearn_prune.app.experiment_config import load_config  # noqa: E402
from kooplearn_prune.app.experiment_kmd import fit_window_kmd  # noqa: E402
from kooplearn_prune.app.torch_study import (  # noqa: E402
    TorchStudy,
    evaluate_torch_mask,
    train_torch_seed,
)
from kooplearn_prune.koopman import FixedPointWarning  # noqa: E402
from kooplearn_prune.methods import method_mask, method_scores  # noqa: E402
from kooplearn_prune.pruning.masks import masks_by_name  # noqa: E402
from kooplearn_prune.pruning.metrics import overlap  # noqa: E402
from kooplearn_prune.trajectory import Trajectory  # noqa: E402

METHODS = ("kmp", "magnitude", "trend_two_point")
CONTROL = "random_swap"
MIN_ROW = 5


def tensor_slices(layout: Any) -> dict[str, slice]:
    """Each tensor's slice of the flat parameter vector."""
    ends = np.cumsum([0] + [int(np.prod(s)) for s in layout.shapes])
    return {n: slice(int(a), int(b)) for n, a, b in zip(layout.names, ends[:-1], ends[1:])}


def random_swap(gmp: np.ndarray, kmp: np.ndarray, layout: Any,
                rng: np.random.Generator) -> np.ndarray:
    """GMP's mask with, per prunable tensor, KMP's numbers of swaps done at random entries."""
    mask = gmp.copy()
    for name, sl in tensor_slices(layout).items():
        if not layout.prunable[layout.names.index(name)]:
            continue
        g, k = gmp[sl], kmp[sl]
        kept, removed = np.flatnonzero(g), np.flatnonzero(~g)
        drop = rng.choice(kept, int((g & ~k).sum()), replace=False)
        add = rng.choice(removed, int((~g & k).sum()), replace=False)
        mask[sl.start + drop], mask[sl.start + add] = False, True
    return mask


def layer_inputs(study: TorchStudy, model: torch.nn.Module,
                 modules: list[str]) -> dict[str, torch.Tensor]:
    """The test set's input to each module in ``modules`` (eval mode, unpruned)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(m).register_forward_hook(
        lambda _mod, inp, _out, m=m: seen.__setitem__(m, inp[0].detach()))
        for m in modules]
    try:
        model.eval()
        with torch.no_grad():
            model(study.x_test)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def output_errors(model: torch.nn.Module, inputs: dict[str, torch.Tensor], mask: np.ndarray,
                  layout: Any) -> dict[str, float]:
    """Per module: ‖output of the removed weights (and biases)‖ / ‖full output‖ on its input."""
    per = masks_by_name(mask, layout)
    errors = {}
    for module_name, x in inputs.items():
        module = model.get_submodule(module_name)
        full = module(x)
        saved = {p: getattr(module, p).detach().clone() for p in ("weight", "bias")
                 if getattr(module, p, None) is not None}
        try:
            for p, value in saved.items():
                name = f"{module_name}.{p}"
                prunable = name in per and layout.prunable[layout.names.index(name)]
                removed = ~torch.from_numpy(np.asarray(per[name], bool)).reshape(value.shape) \
                    if prunable else torch.zeros_like(value, dtype=torch.bool)
                getattr(module, p).copy_(value * removed)
            errors[module_name] = float(module(x).norm() / full.norm())
        finally:
            for p, value in saved.items():
                getattr(module, p).copy_(value)
    return errors


def removed_kept_by_gmp(mask: np.ndarray, gmp: np.ndarray, first: np.ndarray,
                        last: np.ndarray, layout: Any) -> dict[str, dict[str, Any]]:
    """Per weight tensor: the entries ``mask`` removes and GMP keeps, their signs and motion."""
    out = {}
    for name, sl in tensor_slices(layout).items():
        shape = layout.shapes[layout.names.index(name)]
        if not layout.prunable[layout.names.index(name)] or len(shape) < 2:
            continue
        sel = (gmp[sl] & ~mask[sl]).reshape(shape[0], -1)
        w_end, w_start = last[sl].reshape(sel.shape), first[sl].reshape(sel.shape)
        shares = [max(np.mean(w_end[r][sel[r]] > 0), np.mean(w_end[r][sel[r]] < 0))
                  for r in range(sel.shape[0]) if sel[r].sum() >= MIN_ROW]
        toward = np.sign(w_end[sel] - w_start[sel]) != np.sign(w_end[sel])
        out[name] = {"n": int(sel.sum()), "rows": len(shares),
                     "same_sign_share": float(np.mean(shares)) if shares else None,
                     "toward_zero_share": float(toward.mean()) if sel.any() else None}
    return out


def measure_window(study: TorchStudy, model: torch.nn.Module, window: Trajectory, seed: int,
                   sparsity: float, draws: int) -> dict[str, Any]:
    """Every mask's overlap, accuracy, output errors and removed-entry statistics."""
    config, layout = study.config, window.layout
    snapshots = np.asarray(window.snapshots)
    kmd = fit_window_kmd(config, window)
    masks = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedPointWarning)
        for method in METHODS:
            scores = method_scores(method, window, kmd=kmd, seed=seed)
            masks[method] = np.asarray(method_mask(method, scores, sparsity, window), bool)
    gmp, rng = masks["magnitude"], np.random.default_rng(seed)
    candidates = [(m, masks[m]) for m in METHODS]
    candidates += [(CONTROL, random_swap(gmp, masks["kmp"], layout, rng)) for _ in range(draws)]
    modules = sorted({n.rsplit(".", 1)[0] for n, p in zip(layout.names, layout.prunable) if p})
    inputs = layer_inputs(study, model, modules)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, mask in candidates:
        evaluation, _ = evaluate_torch_mask(study, model, mask, layout, seed=seed)
        rows.setdefault(name, []).append({
            "overlap_with_gmp": overlap(mask, gmp, layout),
            "accuracy": evaluation["pre_accuracy"],
            "output_error": output_errors(model, inputs, mask, layout),
            "removed_kept_by_gmp": removed_kept_by_gmp(mask, gmp, snapshots[0], snapshots[-1],
                                                       layout)})
    unpruned = study.evaluate(model)["accuracy"]
    draws_ = rows[CONTROL]
    extremes = {"worst_accuracy": min(r["accuracy"] for r in draws_),
                "worst_output_error": {m: max(r["output_error"][m] for r in draws_)
                                       for m in modules}}
    return {"unpruned_accuracy": unpruned, "differing_entries": int((gmp & ~masks["kmp"]).sum()),
            "masks": {name: _mean_rows(r) for name, r in rows.items()},
            "random_swap_worst_draw": extremes}


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of ``rows`` (the random draws of one seed), leaf by leaf; None stays None."""
    first = rows[0]
    if isinstance(first, dict):
        return {k: _mean_rows([r[k] for r in rows]) for k in first}
    values = [r for r in rows if r is not None]
    return float(np.mean(values)) if values else None


def run(seeds: list[int], windows: list[int], compression: float, draws: int
        ) -> dict[str, Any]:
    config = load_config("mnistnet_cpu")
    if not set(windows) <= set(config.window_epochs):
        raise SystemExit(f"--windows must be among mnistnet_cpu's window epochs "
                         f"{list(config.window_epochs)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(config, out=Path(tmp), seeds=tuple(seeds),
                                     finetune_epochs=0)
        study = TorchStudy.prepare(config)
        per_seed: dict[str, dict[str, Any]] = {str(w): {} for w in windows}
        for seed in seeds:
            artifacts, states = train_torch_seed(study, seed, Path(tmp) / f"seed_{seed}")
            model = study.build(seed)
            for epoch in windows:
                model.load_state_dict(states[epoch])
                window = Trajectory.load(artifacts.windows[epoch])
                per_seed[str(epoch)][str(seed)] = measure_window(
                    study, model, window, seed, 1.0 - 1.0 / compression, draws)
    return {"config": "mnistnet_cpu", "seeds": seeds, "windows": windows,
            "compression": compression, "sparsity": 1.0 - 1.0 / compression, "draws": draws,
            "min_row": MIN_ROW, "seconds": time.perf_counter() - started, "per_seed": per_seed}


def _spread(values: list[float | None], scale: float = 1.0, fmt: str = ".3f") -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    mean = format(float(np.mean(values)), fmt)
    if len(values) == 1:
        return mean
    return f"{mean} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def table(result: dict[str, Any]) -> str:
    lines = []
    for epoch, seeds in result["per_seed"].items():
        runs = list(seeds.values())
        names = list(runs[0]["masks"])
        layers = list(runs[0]["masks"]["kmp"]["output_error"])
        weights = list(runs[0]["masks"]["kmp"]["removed_kept_by_gmp"])
        lines.append(f"\nwindow epoch {epoch}, compression {result['compression']:g}: unpruned "
                     f"acc % {_spread([r['unpruned_accuracy'] for r in runs], 100, '.1f')}, "
                     f"KMP differs from GMP by "
                     f"{_spread([r['differing_entries'] for r in runs], fmt='.0f')} entries")
        head = ["mask", "overlap w/ GMP", "acc %"] + [f"err {m}" for m in layers] + \
            [f"same-sign {w}" for w in weights] + [f"toward-0 {w}" for w in weights]
        lines.append(" | ".join(head))
        for name in names:
            cells = [name, _spread([r["masks"][name]["overlap_with_gmp"] for r in runs]),
                     _spread([r["masks"][name]["accuracy"] for r in runs], 100, ".1f")]
            cells += [_spread([r["masks"][name]["output_error"][m] for r in runs])
                      for m in layers]
            for key in ("same_sign_share", "toward_zero_share"):
                cells += [_spread([r["masks"][name]["removed_kept_by_gmp"][w][key]
                                   for r in runs], fmt=".2f") for w in weights]
            lines.append(" | ".join(cells))
        worst = [r["random_swap_worst_draw"] for r in runs]
        cells = [f"{CONTROL} (worst draw)", "", _spread([w["worst_accuracy"] for w in worst],
                                                         100, ".1f")]
        cells += [_spread([w["worst_output_error"][m] for w in worst]) for m in layers]
        lines.append(" | ".join(cells))
    lines.append(f"\n{len(result['seeds'])} seeds, mean [min, max] over seeds; random_swap: mean "
                 f"of {result['draws']} draws per seed; {result['seconds']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--compression", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.compression <= 1 or args.draws < 1:
        raise SystemExit("--compression must be > 1 and --draws >= 1")
    torch.set_num_threads(1)
    result = run(args.seeds, args.windows, args.compression, args.draws)
    print(json.dumps(result, indent=1))
    if args.json is not None:
        write_json_atomic(args.json, result)
    print(table(result))


if __name__ == "__main__":
    main()
