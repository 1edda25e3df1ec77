"""Algorithm registry: a name maps to its server strategy, its client half, its parameters and
the cohort sum a node reduces with, so the client runtime never reads the server class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from torch import nn

import models
from strategies.core.client import ClientAlgorithm
from strategies.core.job import ClientJob
from strategies.core.params import Params
from strategies.core.reduction import CohortSum
from strategies.core.strategy import FedSparseStrategy

JobModelBuilder = Callable[[ClientJob, tuple[int, int, int], int], nn.Module]
"""Builds the model a job trains from ``(job, input_shape as (C, H, W), num_classes)``."""


@dataclass(frozen=True)
class Algorithm:
    """Both halves of one federated protocol, with what both ends read: the parameters
    (the server's ``params_type``) and the cohort sum a node reduces with (the server's
    ``cohort_sum_type`` when nodes can decode with it alone, else None)."""

    name: str
    server: type[FedSparseStrategy]
    client: type[ClientAlgorithm] = ClientAlgorithm
    model_builder: JobModelBuilder | None = None  # None: models.build_model(job.model, ...)
    params: type[Params] = field(init=False)
    cohort_sum: type[CohortSum] | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", self.server.params_type)
        object.__setattr__(self, "cohort_sum", self.server.node_sum())


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


@lru_cache(maxsize=16)
def _parameter_shapes(
    model: str, input_shape: tuple[int, int, int], num_classes: int
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    built = models.build_model(model, input_shape, num_classes)
    return tuple((name, tuple(p.shape)) for name, p in built.named_parameters())


def parameter_shapes(job: ClientJob) -> dict[str, tuple[int, ...]]:
    """Trainable parameter tensors of ``job.model`` (what has a gradient), in order."""
    info = job.data_info()
    return dict(_parameter_shapes(job.model, info.input_shape, info.num_classes))
