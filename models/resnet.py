"""ResNet-18 with a CIFAR-style stem, suited to 8-64 pixel images."""

from torch import nn

from models.registry import register_model


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
