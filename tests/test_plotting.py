"""Figures that explain themselves: colour bars, legends off the data, coinciding curves named,
whole-number epoch ticks (``kooplearn_prune.plotting`` and the experiment runner's figures)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kooplearn_prune.plotting import (  # noqa: E402
    coinciding_curves,
    place_legend,
    plot_accuracy_vs_compression,
    plot_overlap_vs_epoch,
    plot_spectrum,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend_covers(ax, xs, ys) -> int:
    """How many data points (data coordinates) lie under the axes' legend once drawn."""
    fig = ax.figure
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    points = ax.transData.transform(np.column_stack([xs, ys]))
    return int(sum(box.contains(x, y) for x, y in points))


def test_spectrum_has_a_labelled_colour_bar_for_the_modulus():
    lam = np.array([1.0, 0.9 + 0.3j, 0.9 - 0.3j, 0.5])
    ax = plot_spectrum(lam, amplitudes=np.array([5.0, 0.1, 0.1, 1.0]), highlight=0)
    points = next(c for c in ax.collections if c.get_array() is not None)
    assert points.colorbar is not None
    assert "|\\lambda_k|" in points.colorbar.ax.get_ylabel()
    np.testing.assert_allclose(points.get_array(), np.abs(lam))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("|b_k|" in label for label in labels)  # the size encoding is named too
    assert len(plot_spectrum(lam, colorbar=False).figure.axes) == 1


def test_spectrum_legend_avoids_eigenvalues_in_the_lower_left():
    angles = np.linspace(np.pi, 1.5 * np.pi, 12)  # a crowd in the lower-left quadrant
    lam = np.concatenate([0.95 * np.exp(1j * angles), 0.6 * np.exp(1j * angles), [1.0]])
    ax = plot_spectrum(lam, highlight=lam.size - 1)
    assert ax.get_legend()._loc != 3  # not the fixed "lower left" (code 3)
    assert _legend_covers(ax, lam.real, lam.imag) == 0


def test_spectrum_legend_avoids_eigenvalues_near_the_centre():
    """Tutorial 04's spectrum: a pair at Re λ ≈ -0.28 once sat under a centred legend."""
    lam = np.array([1.0, 0.97, 0.92, 0.8 + 0.16j, 0.8 - 0.16j, 0.66, 0.25 + 0.3j, 0.25 - 0.3j,
                    -0.28 + 0.18j, -0.28 - 0.18j])
    _, (ax, _) = plt.subplots(1, 2, figsize=(10, 4.2))
    plot_spectrum(lam, amplitudes=np.abs(lam) + 0.05, ax=ax, highlight=0)
    plt.tight_layout()
    assert _legend_covers(ax, lam.real, lam.imag) == 0


def test_spectrum_note_is_written_under_the_axes():
    ax = plot_spectrum(np.array([1.0, 0.9j, -0.9j]), note="2 eigenvalues are noise: 0.1 %")
    notes = [t for t in ax.texts if "noise" in t.get_text()]
    assert len(notes) == 1 and notes[0].get_position()[1] < 0


def _accuracy_rows():
    comps = (2, 4, 8, 16)
    return {"magnitude": dict(zip(comps, (0.98, 0.95, 0.80, 0.55))),
            "kmp": dict(zip(comps, (0.98, 0.95, 0.803, 0.548))),  # within 0.003 of magnitude
            "random": dict(zip(comps, (0.70, 0.15, 0.10, 0.10)))}


def test_coinciding_curves_are_named_with_their_gap_and_the_tolerance():
    ax = plot_accuracy_vs_compression(_accuracy_rows(), baseline=0.98)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "kmp = magnitude (±0.003)" in texts and "random" in texts and "magnitude" in texts
    title = ax.get_legend().get_title().get_text()
    assert "0.01" in title and "covers" in title


def test_no_coincidence_note_when_curves_differ():
    rows = _accuracy_rows()
    rows["kmp"][8] = 0.75  # 5 points apart at 8x: two visible lines
    ax = plot_accuracy_vs_compression(rows)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["magnitude", "kmp", "random"]
    assert ax.get_legend().get_title().get_text() == ""
    assert coinciding_curves(rows) == {}
    assert coinciding_curves(rows, tol=0.06) == {"kmp": ("magnitude", pytest.approx(0.05))}


def test_coincidence_accepts_rows_and_needs_a_shared_compression():
    rows = [{"method": "a", "compression": 2, "accuracy": 0.9},
            {"method": "b", "compression": 4, "accuracy": 0.9}]
    assert coinciding_curves({"a": {2: 0.9}, "b": {4: 0.9}}) == {}
    ax = plot_accuracy_vs_compression(rows)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_accuracy_legend_is_off_the_data():
    rows = _accuracy_rows()
    ax = plot_accuracy_vs_compression(rows)
    assert ax.get_legend()._loc != 3
    xs = [x for curve in rows.values() for x in curve]
    ys = [y for curve in rows.values() for y in curve.values()]
    assert _legend_covers(ax, xs, ys) == 0
    outside = plot_accuracy_vs_compression(rows, legend="outside")
    outside.figure.canvas.draw()
    renderer = outside.figure.canvas.get_renderer()
    assert outside.get_legend().get_window_extent(renderer).x0 >= \
        outside.get_window_extent(renderer).x1
    assert plot_accuracy_vs_compression(rows, legend=None).get_legend() is None


def test_overlap_figure_has_whole_number_epoch_ticks():
    ax = plot_overlap_vs_epoch([1, 2, 3, 4, 5], {"kmp": [0.7, 0.8, 0.9, 0.95, 1.0],
                                                  "magnitude": [0.75, 0.8, 0.9, 0.96, 1.0]})
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    assert ax.get_legend()._loc != 3


def test_place_legend_outside_sits_right_of_the_axes():
    _, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="line")
    legend = place_legend(ax, "outside")
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def _groups():
    groups = []
    for epoch in (1, 2, 5):
        for method in ("kmp", "magnitude"):
            for comp in (2.0, 4.0):
                groups.append({"window_epoch": epoch, "method": method, "compression": comp,
                               "n_seeds": 2, "pre_acc1_mean": 0.8, "pre_acc1_std": 0.01,
                               "post_acc1_mean": 0.9, "post_acc1_std": 0.01,
                               "overlap_with_converged_mean": 0.5 + 0.1 * epoch,
                               "overlap_with_converged_std": 0.02, "unpruned_acc1_mean": 0.95})
    return groups


def test_experiment_figures_put_legends_off_the_data_and_epochs_on_whole_numbers(tmp_path,
                                                                                 monkeypatch):
    from kooplearn_prune.app import experiment_report

    kept = []
    monkeypatch.setattr("kooplearn_prune.plotting.save_figure",
                        lambda fig, path: kept.append(fig) or path)
    experiment_report.write_figures(tmp_path, _groups(), overlap_sparsity=None)
    accuracy, overlap_fig = kept
    for fig in kept:
        fig.canvas.draw()
    legend_axes = [ax for ax in accuracy.axes if ax.get_legend() is not None]
    assert len(legend_axes) == 1 and legend_axes[0].get_legend()._loc != 3
    renderer = accuracy.canvas.get_renderer()
    assert legend_axes[0].get_legend().get_window_extent(renderer).x0 >= \
        legend_axes[0].get_window_extent(renderer).x1
    for ax in (a for a in overlap_fig.axes if a.get_visible()):
        low, high = ax.get_xlim()
        assert all(float(t).is_integer() for t in ax.get_xticks() if low <= t <= high)


def test_study_figures_tick_the_window_epochs_and_keep_bands_in_range(tmp_path, monkeypatch):
    from kooplearn_prune.app import experiment_report

    rows = [{"seed": seed, "window_epoch": epoch, "method": method, "compression": comp,
             "overlap_with_converged": 0.6 + 0.1 * seed + (0.05 if method == "kmp" else 0.0),
             "pre_acc1": 0.5 + 0.2 * seed, "post_acc1": 0.9, "unpruned_acc1": 0.95}
            for seed in (0, 1) for epoch in (1, 3, 10) for method in ("kmp", "magnitude")
            for comp in (2.0, 4.0)]
    groups = experiment_report.aggregate(rows)
    kept = []
    monkeypatch.setattr("kooplearn_prune.plotting.save_figure",
                        lambda fig, path: kept.append(fig) or path)
    experiment_report.write_study(tmp_path, rows, groups, "kmp")
    bands, paired = kept
    for fig in kept:
        for ax in (a for a in fig.axes if a.get_visible() and a.get_xlabel()):
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "10"]
    for ax in (a for a in bands.axes if a.get_visible()):
        for band in ax.collections:  # 2 seeds: the t-interval passes [0, 1]; drawn clipped
            ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
            assert ys.min() >= 0.0 and ys.max() <= 1.0
    assert sum(ax.get_legend() is not None for ax in paired.axes) == 1
