"""ResNets with a CIFAR-style stem, suited to 8-64 pixel images: torchvision's ResNet-18, and
small ResNet-6/8/10 with BatchNorm of the kind the LIPS paper trains."""

import torch
from torch import nn

from models.registry import register_model

# Channels per stage of the small ResNets, one basic block per stage: depth = 2 + 2 * stages
# (stem conv, two convs per block, linear head). The widths are He et al.'s CIFAR ResNets'
# (16, 32, 64), doubled once more for the fourth stage of resnet10; resnet8 is their ResNet-8.
SMALL_RESNET_WIDTHS: dict[str, tuple[int, ...]] = {
    "resnet6": (16, 32),
    "resnet8": (16, 32, 64),
    "resnet10": (16, 32, 64, 128),
}


@register_model("resnet18")
def resnet18(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build ResNet-18 with a 3x3 stride-1 stem and no max-pool, randomly initialised.

    The ImageNet stem (7x7 stride 2 + max-pool) shrinks small images 4x before the
    first stage; the CIFAR stem keeps full resolution. Global average pooling makes
    the network independent of H and W.
    """
    from torchvision.models import resnet18 as tv_resnet18  # heavy: imported only when used

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: the identity, or a 1x1 conv-BN projection where
    the block changes width or resolution (named ``downsample`` as in torchvision, so LIPS's
    ``include_shortcuts`` finds it as a 1x1 conv)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class SmallResNet(nn.Module):
    """3x3 stride-1 stem conv-BN-ReLU at ``widths[0]`` channels, one :class:`BasicBlock` per
    width (stride 2 from the second stage on), global average pooling and a linear head.

    Any H, W >= 1 works: a stride-2 3x3 conv keeps a 1x1 map at 1x1, and the pooling removes
    the spatial size before the head.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(input_shape[0], widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for stage, width in enumerate(widths, start=1):
            block = BasicBlock(channels, width, stride=1 if stage == 1 else 2)
            self.add_module(f"layer{stage}", nn.Sequential(block))
            channels = width
        self.stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(name: str) -> None:
    @register_model(name)
    def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return SmallResNet(input_shape, num_classes, SMALL_RESNET_WIDTHS[name])


for _name in SMALL_RESNET_WIDTHS:
    _register(_name)
