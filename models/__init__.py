"""Model zoo for fedsparse: build any registered architecture by name.

Importing this package registers the built-in models: ``cnn``, ``conv4``, ``conv6``, ``conv10``,
``pfl_cnn``, ``resnet6``, ``resnet8``, ``resnet10``, ``resnet18``, ``vgg11_bn`` and the supermask
twins ``masked_cnn``, ``masked_conv4/6/10``.
"""

from models import cnn, conv, masked, pfl_cnn, resnet, vgg  # noqa: F401  (imported to register the built-ins)
from models.masked import MASKED_BUILDERS
from models.registry import ModelBuilder, available_models, build_model, register_model


def configurable_models() -> list[str]:
    """The names ``model=`` takes: every registered model but the supermask twins, which
    ``strategy=fedpm`` picks itself for the model chosen."""
    return [name for name in available_models() if name not in MASKED_BUILDERS]


__all__ = [
    "ModelBuilder",
    "available_models",
    "build_model",
    "configurable_models",
    "register_model",
]
