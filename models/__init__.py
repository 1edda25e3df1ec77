"""Model zoo for fedsparse: build any registered architecture by name.

Importing this package registers the built-in models: ``cnn``, ``conv4``, ``conv6``, ``conv10``,
``resnet18``, ``vgg11_bn`` and the supermask twins ``masked_cnn``, ``masked_conv4/6/10``.
"""

from models import cnn, conv, masked, resnet, vgg  # noqa: F401  (imported to register the built-ins)
from models.registry import ModelBuilder, available_models, build_model, register_model

__all__ = ["ModelBuilder", "available_models", "build_model", "register_model"]
