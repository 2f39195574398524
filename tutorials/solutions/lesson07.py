# Worked solutions for 07_pytorch_adapter.ipynb: paste a block over its exercise cell.

# %% exercise 07.1
removed = {name: int((~mask).sum()) for name, mask in masks["kmp"].items()}

# %% exercise 07.2
fractions = {name: (~mask).float().mean().item() for name, mask in masks["kmp"].items()}
most_pruned = max(fractions, key=fractions.get)
