"""The data and the model of a torch experiment, checked before anything is written.

``[experiment] device``, ``[data]`` (with ``resize`` / ``channels``) and ``[model] name`` /
``kwargs`` become tensors on the device and a model built by
``adapters.torch.models.build_model``; each failure is a ``ConfigError`` naming the key and the
fix (``app.torch_study`` calls these before the output directory is touched).
``weight_uses`` measures, on one batch, how often each Linear or convolution weight entry is
used per sample: the FLOPs of ``metrics.json``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapters.torch.models import MODELS, build_model
from ..adapters.torch.params import nn
from ..backend import to_numpy
from ..data import Dataset
from .config_checks import ConfigError
from .experiment_config import ExperimentConfig

__all__ = ["torch_device", "as_images", "build", "check_first_batch",
           "weight_uses"]


def torch_device(device: str) -> torch.device:
    """``[experiment] device`` as a torch device; CUDA must be there."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[experiment] device = 'cuda' but PyTorch finds no CUDA device here "
                          "(torch.cuda.is_available() is False): set device = 'cpu', or run on "
                          "a machine with a GPU and a CUDA build of PyTorch")
    return torch.device(device)


def as_images(config: ExperimentConfig, data: Dataset, x: Any) -> torch.Tensor:
    """Flat rows as ``(N, *input_shape)`` float32, resized and channel-repeated as asked."""
    shape = tuple(int(s) for s in data.input_shape)
    t = torch.from_numpy(np.ascontiguousarray(to_numpy(x), dtype=np.float32))
    t = t.reshape(t.shape[0], *shape)
    if config.resize is None and config.channels is None:
        return t
    if len(shape) != 3:
        raise ConfigError(f"[data] resize / channels need images (input_shape channels x height "
                          f"x width); dataset {config.dataset!r} gives samples of shape {shape}: "
                          f"remove them")
    if config.resize is not None:
        t = F.interpolate(t, size=(config.resize, config.resize), mode="bilinear",
                          align_corners=False)
    if config.channels is not None and config.channels != shape[0]:
        if shape[0] != 1:
            raise ConfigError(f"[data] channels = {config.channels} repeats a grey channel, but "
                              f"dataset {config.dataset!r} has {shape[0]} channels: remove "
                              f"channels")
        t = t.repeat(1, config.channels, 1, 1)
    return t.contiguous()


def build(config: ExperimentConfig, input_shape: tuple[int, ...], n_classes: int, seed: int,
          device: torch.device) -> nn.Module:
    """``[model] name`` built with ``num_classes``, ``in_channels`` (and ``input_size`` where
    the factory takes it) from the data, then ``[model] kwargs``; a ``ConfigError`` if it fails."""
    name = config.model_name
    guessed: dict[str, Any] = {"num_classes": n_classes}
    if len(input_shape) == 3:
        guessed.update(in_channels=input_shape[0], input_size=input_shape[-1])
    factory = MODELS.get(name)
    if factory is not None:  # a built-in takes exactly the keywords it names
        accepted = inspect.signature(factory).parameters
        guessed = {k: v for k, v in guessed.items() if k in accepted}
    torch.manual_seed(seed)
    try:
        model = build_model(name, **{**guessed, **config.model_kwargs})
    except (ImportError, ValueError, TypeError) as err:
        raise ConfigError(f"[model] name = {name!r}: {err}") from None
    return model.to(device)


def check_first_batch(config: ExperimentConfig, model: nn.Module, x: torch.Tensor,
                       n_classes: int) -> None:
    """One forward pass of the first training batch: the data must fit the model."""
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"[data] dataset {config.dataset!r} gives batches of shape {tuple(x.shape)}, which "
            f"[model] name = {config.model_name!r} cannot take ({first}); set [data] resize "
            f"(image side) and channels to what the model expects, or choose another model"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"[model] name = {config.model_name!r} returns {got} for a batch of "
                          f"{x.shape[0]}, but dataset {config.dataset!r} has {n_classes} "
                          f"classes: it must return logits (batch, {n_classes}); pass "
                          f"[model] kwargs = {{ num_classes = {n_classes} }} if it takes it")


def weight_uses(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """``{"<module>.weight": uses per sample}`` of every Linear and convolution of ``model``.

    One forward pass of ``x`` (eval mode, no gradient; the mode is restored) with hooks that read
    each layer's input and output shapes. A Linear weight entry is used once per sample, or once
    per position of extra leading dimensions (a sequence); a convolution entry once per output
    position (``H_out × W_out``), a transposed convolution once per input position. So the
    layer's multiply-adds per sample are ``weight.numel() × uses``: for a convolution, kernel
    size × ``in_channels / groups`` per output element times the output elements. Layers the
    forward pass does not reach are left out.
    """
    uses: dict[str, int] = {}
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                n = output.numel() // (output.shape[-1] * x.shape[0])
            else:
                shape = inputs[0].shape if isinstance(module, transposed) else output.shape
                spatial = shape[2:] if len(shape) == module.weight.dim() else shape[1:]
                n = int(math.prod(spatial))
            uses[f"{name}.weight"] = uses.get(f"{name}.weight", 0) + int(n)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, *conv, *transposed))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return uses
