# Worked solutions for 04_kmp_reduces_to_magnitude.ipynb: paste a block over its exercise cell.

# %% exercise 04.1
k_star = np.argmin(np.abs(kmd.eigenvalues_ - 1))
my_kmp = np.abs(to_numpy(kmd.modes_)[k_star].real)

# %% exercise 04.2
keep_kmp = to_numpy(global_mask(kmp, 0.5, layout=layout))
keep_gmp = to_numpy(global_mask(gmp, 0.5, layout=layout))
n_disputed = int(np.sum(keep_gmp & ~keep_kmp))

# %% exercise 04.3
m = kmd.n_snapshots_ - 1
powers = to_numpy(kmd.eigenvalues_) ** (m + 5)
my_horizon = np.abs((powers @ to_numpy(kmd.modes_)).real)
