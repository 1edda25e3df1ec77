"""The 2-conv CNN that pfl-research benchmarks CIFAR-10 with (its ``simple_cnn``), for
side-by-side runs against pfl (``benchmarks/peers.py``).

conv(32, 3×3, no padding)-conv(64, 3×3, no padding)-pool-dropout(0.25)-fc(128)-dropout(0.5)-fc,
ReLU after each hidden layer, Glorot-uniform weights and PyTorch's default biases: the classic
Keras CNN. On 32×32×3 and 10 classes it has 1,626,442 parameters (``cnn``: 545,098), almost all
in fc(12,544 → 128).
"""

import torch
from torch import nn

from models.conv import inference_order
from models.registry import register_model


class PflCNN(nn.Module):
    """pfl-research's ``simple_cnn`` on (C, H, W) inputs; no BatchNorm."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        if min(height, width) < 6:
            raise ValueError(f"pfl_cnn needs H and W of at least 6, got {input_shape!r}")
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.pool = nn.MaxPool2d(2)
        self.drop_conv = nn.Dropout(0.25)
        self.fc1 = nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128)
        self.drop_fc = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)
        self.relu = nn.ReLU()
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(inference_order(self.relu(self.conv1(x)))))
        x = torch.flatten(self.drop_conv(self.pool(x)), 1)
        return self.fc2(self.drop_fc(self.relu(self.fc1(x))))


@register_model("pfl_cnn")
def pfl_cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build pfl-research's CIFAR-10 benchmark CNN."""
    return PflCNN(input_shape, num_classes)
