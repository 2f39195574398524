# Worked solutions for 03_kmd_linear_and_quadratic.ipynb: paste a block over its exercise cell.

# %% exercise 03.1
Q3, _ = np.linalg.qr(rng.standard_normal((50, 3)))
z_t = np.array([1.0, 1.0, 1.0])                       # excite every direction
rows = []
for _ in range(21):
    rows.append(Q3 @ z_t)
    z_t = np.array([1.0, 0.8, -0.5]) * z_t
W_mine = np.array(rows)                               # (21, 50): snapshots as rows

# %% exercise 03.2
eta_max = 2 / h_all.max()                             # |1 - eta h| < 1 for the largest h

# %% exercise 03.3
transient = np.delete(np.abs(kmd_gd.eigenvalues_), kmd_gd.fixed_point_info_.index)
half_life = np.log(2) / -np.log(transient.max())
