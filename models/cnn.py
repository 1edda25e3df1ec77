"""Small two-layer CNN baseline that adapts to channels, image size and classes."""

import torch
from torch import nn

from models.conv import ConvFactory, LinearFactory, dense_conv, dense_linear, inference_order
from models.registry import register_model


class SmallCNN(nn.Module):
    """conv(32)-pool-conv(64)-pool-fc(128)-fc(classes).

    No BatchNorm, so there are no running statistics to average across clients. ``conv`` and
    ``linear`` swap the layer types (models.masked builds its masked twin this way).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: ConvFactory = dense_conv,
        linear: LinearFactory = dense_linear,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = conv(channels, 32)
        self.conv2 = conv(32, 64)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        # Each pool floors the spatial size by 2; the flatten size follows from the input.
        flat_features = 64 * (height // 4) * (width // 4)
        if flat_features == 0:
            raise ValueError(f"cnn needs H and W of at least 4, got input_shape {input_shape!r}")
        self.fc1 = linear(flat_features, 128)
        self.fc2 = linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(inference_order(self.relu(self.conv1(x))))
        x = self.pool(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(self.relu(self.fc1(x)))


@register_model("cnn")
def cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the small CNN."""
    return SmallCNN(input_shape, num_classes)
