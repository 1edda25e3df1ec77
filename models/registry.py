"""Name-based model registry so federated configs can pick an architecture by string."""

from collections.abc import Callable

from torch import nn

ModelBuilder = Callable[[tuple[int, int, int], int], nn.Module]
"""Builds a model from ``(input_shape as (C, H, W), num_classes)``."""

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under ``name``; refuses duplicates so one name means one model."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered; pick another name")
        _BUILDERS[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the model registered as ``name`` for ``input_shape`` (C, H, W) and ``num_classes``.

    Weights are freshly initialised from torch's global RNG; seed it beforehand
    (``torch.manual_seed``) for reproducible builds.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(available_models())}"
        ) from None
    if len(input_shape) != 3 or any(d < 1 for d in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return builder(tuple(input_shape), num_classes)
