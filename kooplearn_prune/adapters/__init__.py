"""Adapters that bring models from other frameworks into the Koopman pipeline.

``kooplearn_prune.adapters.torch`` records a ``torch.nn.Module``'s training as a ``Trajectory``
and applies the resulting masks back to the model; its names are also reachable from here.
Nothing here imports PyTorch until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    torch_adapter = importlib.import_module(".torch", __name__)
    if name in torch_adapter.EXPORTS:
        return getattr(torch_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(importlib.import_module(".torch", __name__).EXPORTS))
