"""The networks of Redman et al. (ICLR 2022), and building a model from a name.

* ``mnistnet``: ShrinkBench's small MNIST CNN (conv 1→20 5x5, ReLU, max-pool 2, conv 20→50 5x5,
  ReLU, max-pool 2, linear 800→500, ReLU, linear 500→10, log-softmax output). The same module
  names as ShrinkBench (``conv1``, ``conv2``, ``fc1``, ``fc2``), so its ``state_dict`` loads.
* ``resnet20/32/44/56/110``: the CIFAR ResNets of He et al. (2016, §4.2): a 3x3 conv to 16
  channels, three stages of ``n`` basic blocks at 16, 32, 64 channels (depth ``6n + 2``), global
  average pooling and a linear classifier; shortcuts are option A (identity, subsampled and
  zero-padded in channels where a stage halves the resolution), so they hold no parameters.
  ResNet-20 has 269,722 parameters with 10 classes. Module names follow ShrinkBench's
  ``cifar_resnet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``).

Every built-in model marks its classifier the way ShrinkBench does, ``layer.is_classifier =
True``, and names it through a ``classifier`` property; ``conventions="shrinkbench"`` of
``select_parameters`` leaves that layer unpruned (see ``conventions``).

``build_model(spec, **kwargs)`` builds a built-in (``MODELS``) or any ``"package.module:function"``
that returns an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from .params import nn, torch

__all__ = ["MnistNet", "CifarResNet", "mnistnet", "resnet20", "resnet32", "resnet44",
           "resnet56", "resnet110", "MODELS", "build_model"]

functional = torch.nn.functional


def _check_positive(value: Any, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    return value


class MnistNet(nn.Module):
    """ShrinkBench's MnistNet; ``fc2`` is the classifier (``is_classifier = True``).

    ``input_size``: the side of the square input (28 for MNIST), which fixes ``fc1``'s fan-in
    ``50 * s * s`` with ``s = ((input_size - 4) // 2 - 4) // 2`` (800 for 28).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        _check_positive(num_classes, "num_classes")
        _check_positive(in_channels, "in_channels")
        side = ((_check_positive(input_size, "input_size") - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small for mnistnet's two 5x5 "
                             f"convolutions and pools; use 16 or more (28 for MNIST)")
        self.conv1 = nn.Conv2d(in_channels, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.fc2.is_classifier = True

    @property
    def classifier(self) -> nn.Module:
        return self.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.max_pool2d(functional.relu(self.conv1(x)), 2, 2)
        x = functional.max_pool2d(functional.relu(self.conv2(x)), 2, 2)
        x = functional.relu(self.fc1(torch.flatten(x, 1)))
        # log-probabilities, as ShrinkBench: cross_entropy on them gives the same loss
        return functional.log_softmax(self.fc2(x), dim=1)


class _ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every other pixel, pad the new channels with zeros."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class _BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers around an identity (or option-A) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _ZeroPadShortcut(planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return functional.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6 * blocks + 2``; ``linear`` is the classifier.

    Linear and conv weights start from Kaiming-normal (fan-in) draws, as in ShrinkBench.
    """

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        _check_positive(blocks, "blocks")
        _check_positive(num_classes, "num_classes")
        _check_positive(in_channels, "in_channels")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            stage = [_BasicBlock(planes_in, planes, stride)]
            stage += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            planes_in = planes
        self.linear = nn.Linear(64, num_classes)
        self.linear.is_classifier = True
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)

    @property
    def classifier(self) -> nn.Module:
        return self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = functional.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


def mnistnet(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> MnistNet:
    """ShrinkBench's MnistNet (431,080 parameters for 1x28x28 inputs and 10 classes)."""
    return MnistNet(num_classes, in_channels, input_size)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage, option-A shortcuts; 0.27 M parameters)."""
    return CifarResNet(3, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage; 0.46 M parameters)."""
    return CifarResNet(5, num_classes, in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage; 0.66 M parameters)."""
    return CifarResNet(7, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage; 0.85 M parameters)."""
    return CifarResNet(9, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage; 1.7 M parameters)."""
    return CifarResNet(18, num_classes, in_channels)


#: The built-in models by name; each factory takes ``num_classes`` and ``in_channels``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnistnet": mnistnet,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
}


def _resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names: a key of ``MODELS`` or ``"package.module:function"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"model spec must be a built-in name ({sorted(MODELS)}) or "
                        f"'package.module:function', got {spec!r}")
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise ValueError(f"model {spec!r} is not a built-in model ({', '.join(sorted(MODELS))}); "
                         f"for your own model write 'package.module:function', a function that "
                         f"returns a torch.nn.Module")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model {spec!r} must read 'package.module:function' with both parts "
                         f"non-empty")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model {spec!r}: module {module_name!r} cannot be imported ({err}); "
                         f"check the spelling and that it is installed or on PYTHONPATH") from err
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                             f"name a function defined there that returns a torch.nn.Module")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"model {spec!r}: {attr!r} is a {type(factory).__name__}, not a function; "
                        f"name a function that returns a torch.nn.Module")
    return factory


def _accepted(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords of ``kwargs`` the factory's signature accepts (all of them with ``**``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): pass everything
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """A ``torch.nn.Module`` from a built-in name (``MODELS``) or ``"package.module:function"``.

    ``kwargs`` (e.g. ``num_classes=10, in_channels=1``) go to the factory; a function of your
    own receives only the keywords its signature names (all of them if it takes ``**kwargs``),
    so ``def make(): return Net()`` works too. Errors name the spec and the fix: an unknown
    name, a module that cannot be imported, a missing function, a result that is not a module.
    """
    factory = _resolve_factory(spec)
    builtin = spec in MODELS
    model = factory(**(kwargs if builtin else _accepted(factory, kwargs)))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {spec!r} returned a {type(model).__name__}, not a "
                        f"torch.nn.Module; the function must build and return the model")
    return model
