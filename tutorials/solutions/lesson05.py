# Worked solutions for 05_kgp_reduces_to_gradient.ipynb: paste a block over its exercise cell.

# %% exercise 05.1
W_quad_25, kmd_quad_25 = fits[0.25]
g_hat = -(to_numpy(kmd_quad_25.predict(11)) - to_numpy(kmd_quad_25.predict(10)))

# %% exercise 05.2
kmd_25 = fits[0.25][1]
transient = np.delete(kmd_25.eigenvalues_, kmd_25.fixed_point_info_.index).real
eta_found = np.mean((1 - np.sort(transient)) / np.sort(curvatures[:N_EXCITED])[::-1])

# %% exercise 05.3
predicted = np.concatenate([[1.0], (1 - 0.1 * curvatures[:N_EXCITED]) ** 3])
