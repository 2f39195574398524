# Worked solutions for 01_autograd_from_scratch.ipynb: paste a block over its exercise cell.

# %% exercise 01.1
x, y = 0.5, -1.0
dfdx = np.exp(x * y) + x * y * np.exp(x * y)   # product rule: x is used twice
dfdy = x * x * np.exp(x * y)

# %% exercise 01.2
softplus = define_op(lambda x: np.log1p(np.exp(x)),
                     lambda g, out, x: g / (1.0 + np.exp(-x)),   # g times sigmoid(x)
                     name="softplus")

# %% exercise 01.3
def count_ops(root):
    counts = {}
    for node in walk(root):
        if node.op:                                  # leaves have op ""
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts
