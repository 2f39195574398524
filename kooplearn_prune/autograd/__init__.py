"""A small reverse-mode automatic differentiation engine on array-API arrays."""

from . import functional
from .extend import define_op, walk
from .functional import cross_entropy, linear, log_softmax, mse_loss, softmax
from .gradcheck import GradcheckError, default_tolerances, gradcheck
from .ops import (
    add,
    div,
    exp,
    getitem,
    log,
    matmul,
    max,
    mean,
    mul,
    neg,
    pow,
    relu,
    reshape,
    sigmoid,
    sub,
    sum,
    take,
    tanh,
    transpose,
)
from .tensor import Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad

__all__ = [
    "Tensor", "as_tensor", "no_grad", "enable_grad", "is_grad_enabled", "gradcheck",
    "GradcheckError", "default_tolerances", "functional", "linear", "log_softmax", "softmax",
    "cross_entropy", "mse_loss", "add", "sub", "mul", "div", "neg", "pow", "matmul", "sum",
    "mean", "max", "exp", "log", "tanh", "relu", "sigmoid", "reshape", "transpose", "getitem",
    "take", "define_op", "walk",
]
