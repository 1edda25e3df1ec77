"""Model zoo for fedsparse: build any registered architecture by name.

Importing this package registers the built-in models: ``cnn``, ``resnet18``, ``vgg11_bn``.
"""

from models import cnn, resnet, vgg  # noqa: F401  (imported to register the built-ins)
from models.registry import ModelBuilder, available_models, build_model, register_model

__all__ = ["ModelBuilder", "available_models", "build_model", "register_model"]
