"""ConvX networks (Conv4 / Conv6 / Conv10) of the supermask literature, dense and as a template.

3×3 'same' convolutions with ReLU, a 2×2 max-pool after every second convolution, then
FC 256 → 256 → classes. No BatchNorm or dropout, so the masked variants (models.masked) share
the exact layout and only swap the layer types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from models.registry import register_model

ConvFactory = Callable[[int, int], nn.Module]
"""Builds a 3×3 'same' convolution from (in_channels, out_channels)."""
LinearFactory = Callable[[int, int], nn.Module]
"""Builds a fully connected layer from (in_features, out_features)."""

CONV_WIDTHS: dict[str, tuple[int, ...]] = {
    "conv4": (64, 64, 128, 128),
    "conv6": (64, 64, 128, 128, 256, 256),
    "conv10": (64, 64, 128, 128, 256, 256, 512, 512, 1024, 1024),
}
HIDDEN = 256


def inference_order(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory order when no gradient is being recorded, else as it is.

    Applied after the first convolution (a 1-channel input has no channel order to change):
    every later convolution and max-pool of an evaluation then runs in that order, which
    PyTorch's CPU kernels do several times faster (a 2×2 max-pool ~7×, the cnn's evaluation
    ~2.4×, measured on torch 2.14). Training keeps the default order: its convolutions give
    bit-equal outputs for equal inputs, so max-pool ties stay exact ties, and federations that
    are equal in exact arithmetic (LBGM that never reuses and FedAvg) stay within rounding of
    each other instead of drifting apart round by round."""
    if torch.is_grad_enabled():
        return x
    return x.contiguous(memory_format=torch.channels_last)


def dense_conv(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def dense_linear(in_features: int, out_features: int) -> nn.Module:
    return nn.Linear(in_features, out_features)


class ConvStack(nn.Module):
    """Pairs of 3×3 convs with a max-pool after each pair, then a three-layer classifier."""

    def __init__(
        self,
        widths: Sequence[int],
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: ConvFactory = dense_conv,
        linear: LinearFactory = dense_linear,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        pools = len(widths) // 2
        if min(height, width) < 2**pools:
            raise ValueError(
                f"a {len(widths)}-conv net pools {pools} times and needs H and W of at least "
                f"{2**pools}, got input_shape {input_shape!r}"
            )
        layers: list[nn.Module] = []
        for index, out_channels in enumerate(widths):
            layers += [conv(channels, out_channels), nn.ReLU()]
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        flat = channels * (height // 2**pools) * (width // 2**pools)
        self.classifier = nn.Sequential(
            linear(flat, HIDDEN),
            nn.ReLU(),
            linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            linear(HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = self.features
        x = inference_order(first(x))
        for layer in rest:
            x = layer(x)
        return self.classifier(torch.flatten(x, 1))


def _register(name: str) -> None:
    @register_model(name)
    def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return ConvStack(CONV_WIDTHS[name], input_shape, num_classes)


for _name in CONV_WIDTHS:
    _register(_name)
