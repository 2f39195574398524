"""Neural-network building blocks on the autograd engine."""

from . import init
from .layers import MLP, Identity, Linear, ReLU, Sequential, Sigmoid, Tanh
from .masking import apply_masks, remove_masks
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Linear", "ReLU", "Tanh", "Sigmoid", "Identity", "Sequential",
           "MLP", "init", "apply_masks", "remove_masks"]
