"""The study statistics (t-intervals, paired differences) and the paired table an experiment
writes from its run directories; bad study configs are refused before any training."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_experiment import TINY, run_cli, write_config

from kooplearn_prune.app.experiment_config import (
    ConfigError,
    bundled_configs,
    load_config,
    parse_config,
)
from kooplearn_prune.app.experiment_runs import scan_runs
from kooplearn_prune.app.experiment_store import result_hash
from kooplearn_prune.app.study import (
    PAIRED_COLUMNS,
    format_paired_table,
    mean_interval,
    paired_difference,
    paired_rows,
)

VALUES = [0.61, 0.70, 0.66, 0.72, 0.58]


# ------------------------------------------------------------------------------- statistics
def test_mean_interval_matches_scipy_t_interval():
    got = mean_interval(VALUES)
    low, high = stats.t.interval(0.95, len(VALUES) - 1, loc=np.mean(VALUES),
                                 scale=stats.sem(VALUES))
    assert got.n == 5 and got.mean == pytest.approx(np.mean(VALUES))
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    wide = mean_interval(VALUES, confidence=0.99)
    assert wide.low < got.low and wide.high > got.high


def test_mean_interval_of_one_value_or_none_is_undefined():
    one = mean_interval([0.5, None])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)
    assert mean_interval([]).n == 0 and math.isnan(mean_interval([]).mean)
    constant = mean_interval([0.3, 0.3, 0.3])
    assert constant.low == pytest.approx(0.3) and constant.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="non-finite"):
        mean_interval([0.1, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval(VALUES, confidence=95)


def test_paired_difference_is_the_one_sample_t_test_of_the_differences():
    ref = [0.71, 0.75, 0.69, 0.80, 0.66, 0.73]
    other = [0.70, 0.69, 0.70, 0.71, 0.60, 0.73]
    d = paired_difference(ref, other)
    diffs = np.subtract(ref, other)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert d.interval.mean == pytest.approx(diffs.mean())
    assert (d.interval.low, d.interval.high) == (pytest.approx(low), pytest.approx(high))
    assert (d.ahead, d.behind, d.ties) == (4, 1, 1)
    # the interval excludes 0 exactly when the paired t-test rejects at 5 %
    p = stats.ttest_rel(ref, other).pvalue
    assert (d.interval.low > 0) == (p < 0.05)
    # pairing matters: the unpaired interval of the same numbers is wider
    assert d.interval.half_width < (mean_interval(ref).half_width + mean_interval(other).half_width)
    with pytest.raises(ValueError, match="one of each per seed"):
        paired_difference(ref, other[:-1])


def _row(seed, epoch, method, overlap, post, comp=10):
    return {"seed": seed, "window_epoch": epoch, "method": method, "compression": comp,
            "overlap_with_converged": overlap, "pre_acc1": post - 0.1, "post_acc1": post}


def test_paired_rows_pair_by_seed_and_skip_unpaired_seeds():
    rows = [_row(0, 1, "kmp", 0.60, 0.70), _row(0, 1, "magnitude", 0.50, 0.72),
            _row(1, 1, "kmp", 0.65, 0.71), _row(1, 1, "magnitude", 0.55, 0.69),
            _row(2, 1, "kmp", 0.62, 0.74), _row(2, 1, "magnitude", 0.57, 0.70),
            _row(3, 1, "kmp", 0.99, 0.99)]  # seed 3: no GMP run, not paired
    paired = paired_rows(rows, "kmp")
    assert [p["metric"] for p in paired] == ["overlap_with_converged", "pre_acc1", "post_acc1"]
    ov = paired[0]
    assert set(ov) == set(PAIRED_COLUMNS)
    assert ov["method"] == "magnitude" and ov["n_seeds"] == 3
    assert ov["mean_difference"] == pytest.approx(np.mean([0.10, 0.10, 0.05]))
    assert ov["ahead"] == 3 and ov["reference_mean"] == pytest.approx(np.mean([0.6, 0.65, 0.62]))
    post = paired[2]
    assert (post["ahead"], post["behind"]) == (2, 1)
    text = format_paired_table(paired)
    assert "kmp minus" in text and "3/3" in text and "2/3" in text


# ------------------------------------------------------------------------- the experiment
STUDY = TINY.replace("seeds = [0]", "seeds = [0, 1, 2]").replace(
    'methods = ["kmp", "magnitude"]', 'methods = ["kmp", "magnitude", "trend_two_point"]\n'
                                      'reference = "kmp"').replace("[2, 4]", "[4]")


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_experiment_writes_the_paired_table_from_its_run_directories(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, STUDY), out) == 0
    printed = capsys.readouterr().out
    assert "kmp minus each method, seed by seed" in printed
    for name in ("paired.csv", "paired_table.txt", "intervals.csv", "overlap_bands.png",
                 "paired_difference.png"):
        assert (out / name).is_file(), name
    paired = _csv(out / "paired.csv")
    # 2 windows x 1 compression x 2 other methods x 3 metrics
    assert len(paired) == 2 * 2 * 3
    assert {p["method"] for p in paired} == {"magnitude", "trend_two_point"}
    # recompute one line from the run directories themselves
    config = load_config(write_config(tmp_path, STUDY), out=out)
    rows, damaged = scan_runs(out / "runs", result_hash(config))
    assert not damaged and len(rows) == 3 * 2 * 3
    by = {(r["seed"], r["window_epoch"], r["method"]): r for r in rows.values()}
    line = next(p for p in paired if p["window_epoch"] == "1" and p["method"] == "trend_two_point"
                and p["metric"] == "overlap_with_converged")
    diffs = [by[(s, 1, "kmp")]["overlap_with_converged"]
             - by[(s, 1, "trend_two_point")]["overlap_with_converged"] for s in range(3)]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert float(line["mean_difference"]) == pytest.approx(np.mean(diffs))
    assert float(line["ci_low"]) == pytest.approx(low)
    assert float(line["ci_high"]) == pytest.approx(high)
    assert int(line["ahead"]) == sum(d > 0 for d in diffs)
    intervals = _csv(out / "intervals.csv")
    assert len(intervals) == 2 * 3 and all(int(r["n_seeds"]) == 3 for r in intervals)


def test_no_reference_no_paired_table(tmp_path):
    out = tmp_path / "out"
    text = TINY.replace('methods = ["kmp", "magnitude"]', 'methods = ["magnitude"]')
    assert run_cli(write_config(tmp_path, text), out) == 0
    assert (out / "intervals.csv").is_file() and not (out / "paired.csv").exists()


# ----------------------------------------------------------------------------- bad studies
def _parse(text: str):
    import tomllib

    return parse_config(tomllib.loads(text), source="study.toml")


@pytest.mark.parametrize("change, message", [
    (('reference = "kmp"', 'reference = "random"'), "reference = 'random' must be one of"),
    (('methods = ["kmp", "magnitude", "trend_two_point"]', 'methods = ["kmp"]'),
     "nothing to be compared"),
    (("every = 1", "every = 6"), "method 'kmp' needs at least 3 (the KMD"),
    (("seeds = [0, 1, 2]", "seeds = []"), "[experiment] seeds must list at least one"),
    (("compressions = [4]", "compressions = []"), "[pruning] compressions must list"),
])
def test_bad_study_is_a_config_error_before_training(tmp_path, capsys, change, message):
    text = STUDY.replace(*change)
    assert text != STUDY
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _parse(text)
    out = tmp_path / "out"
    assert run_cli(write_config(tmp_path, text), out) == 2
    assert message.split(" (")[0] in capsys.readouterr().err
    assert not list(out.glob("seed_*")), "nothing may be trained for a bad config"


def test_a_trend_needs_two_snapshots_and_no_kmd_three():
    # window_steps = every = 6: two snapshots; enough for the trend and GMP, not for KMP
    text = STUDY.replace("every = 1", "every = 6").replace(
        'methods = ["kmp", "magnitude", "trend_two_point"]\nreference = "kmp"',
        'methods = ["magnitude", "trend_two_point"]')
    config = _parse(text)
    assert config.methods == ("magnitude", "trend_two_point") and config.paired_reference is None


def test_bundled_study_configs_differ_in_momentum_and_stride_only():
    plain = load_config(bundled_configs()["early_training"])
    heavy = load_config(bundled_configs()["early_training_momentum"])
    assert len(plain.seeds) >= 10 and plain.paired_reference == "kmp"
    assert plain.window_epochs == (1, 2, 4, 8, plain.epochs)
    assert {"kmp", "magnitude", "trend_two_point"} <= set(plain.methods)
    assert plain.compressions == (10,) and plain.finetune_epochs == 1
    assert (plain.momentum, plain.every, heavy.momentum, heavy.every) == (0.0, 5, 0.9, 1)
    a, b = plain.to_dict(), heavy.to_dict()
    for d in (a, b):
        d["experiment"].pop("name"), d["experiment"].pop("out")
        d["training"].pop("momentum"), d["koopman"].pop("every")
    assert a == b
