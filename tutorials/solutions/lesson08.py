# Worked solutions for 08_cupy_on_gpu.ipynb: paste a block over its exercise cell.

# %% exercise 08.1
from kooplearn_prune.backend import namespace_of

def center(x):
    xp = namespace_of(x)
    return x - xp.mean(x, axis=0, keepdims=True)

# %% exercise 08.2
snapshot_bytes = 4 * m_plus_1 * BIG_N        # float32 snapshots
gram_bytes = 8 * m_plus_1 * m_plus_1         # float64 Gram matrix G = W Wᵀ
