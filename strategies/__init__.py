"""Federated algorithms: each module holds a server strategy, its client half and its codec;
``strategies.protocol`` holds what they share."""

from strategies import fedavg, fedpm, lbgm, lips  # noqa: F401  (registers the built-in algorithms)
from strategies.protocol.registry import (
    Algorithm,
    available_algorithms,
    build_job_model,
    get_algorithm,
    register_algorithm,
)

__all__ = [
    "Algorithm",
    "available_algorithms",
    "build_job_model",
    "get_algorithm",
    "register_algorithm",
]
