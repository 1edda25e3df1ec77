"""VGG-11 with BatchNorm and a CIFAR-style head, for small images."""

import torch
from torch import nn

from models.registry import register_model

# Output channels per conv layer; "M" marks a 2x2 max-pool.
_VGG11_CONFIG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """VGG feature stack, global average pool and a single linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        size = min(height, width)
        for item in _VGG11_CONFIG:
            if item == "M":
                # Skip pools once the map is 1 pixel wide, so 8x8 inputs still work.
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [
                nn.Conv2d(channels, item, kernel_size=3, padding=1),
                nn.BatchNorm2d(item),
                nn.ReLU(inplace=True),
            ]
            channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("vgg11_bn")
def vgg11_bn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build VGG-11-BN with a 512 -> num_classes head instead of the 4096-wide ImageNet head."""
    return VGG(input_shape, num_classes)
