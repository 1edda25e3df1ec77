"""Algorithm registry: a name maps to its server strategy and its client half."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

import models
from strategies.protocol.base import ClientAlgorithm, FedSparseStrategy
from strategies.protocol.job import ClientJob

JobModelBuilder = Callable[[ClientJob, tuple[int, int, int], int], nn.Module]
"""Builds the model a job trains from ``(job, input_shape as (C, H, W), num_classes)``."""


@dataclass(frozen=True)
class Algorithm:
    """Both halves of one federated protocol."""

    name: str
    server: type[FedSparseStrategy]
    client: type[ClientAlgorithm]
    model_builder: JobModelBuilder | None = None  # None: models.build_model(job.model, ...)


_ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm`` available by name (to ``strategy=<name>`` and to clients)."""
    if algorithm.name in _ALGORITHMS:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    _ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; unknown names list the registered ones."""
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(available_algorithms())}"
        ) from None


def available_algorithms() -> list[str]:
    """Registered algorithm names, sorted."""
    return sorted(_ALGORITHMS)


def build_job_model(
    job: ClientJob, input_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """The model ``job`` trains: its algorithm's own builder if it has one, else ``job.model``."""
    builder = get_algorithm(job.algorithm).model_builder
    if builder is None:
        return models.build_model(job.model, input_shape, num_classes)
    return builder(job, input_shape, num_classes)
