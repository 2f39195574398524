# Worked solutions for 06_early_training.ipynb: paste a block over its exercise cell.

# %% exercise 06.1
from scipy import stats
d = np.array(values(overlaps, CLAIM, 1, "kmp")) - np.array(values(overlaps, CLAIM, 1, "magnitude"))
half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
interval = (d.mean() - half, d.mean() + half)

# %% exercise 06.2
window = runs[CLAIM, 0]["windows"][1]
first, last = window.snapshots[0], window.snapshots[-1]
my_trend = np.abs(2 * last - first)

# %% exercise 06.3
random_scores = np.random.default_rng(2024).random(layout.size)   # not seed 0: the init used it
converged = global_mask(magnitude_scores(runs[CLAIM, 0]["final"]), SPARSITY, layout=layout)
measured = overlap(global_mask(random_scores, SPARSITY, layout=layout), converged, layout)
