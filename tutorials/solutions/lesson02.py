# Worked solutions for 02_training_and_recording.ipynb: paste a block over its exercise cell.

# %% exercise 02.1
total_steps = EPOCHS * trainer.steps_per_epoch
steps = np.arange(0, total_steps + 1, EVERY)           # θ_0 is recorded too

# %% exercise 02.2
bias = traj.layout.unflatten(traj.snapshots[-1])["2.bias"]

# %% exercise 02.3
u = to_numpy(traj.updates)[1:].astype(np.float64)      # row 0 has no update
g = to_numpy(traj.gradients)[1:].astype(np.float64)
eta = -np.sum(u * g) / np.sum(g * g)
