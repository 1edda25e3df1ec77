"""Federated algorithms: each module holds a server strategy, its client half and its codec."""

from strategies import fedavg, lbgm, lips  # noqa: F401  (registers the built-in algorithms)
from strategies.registry import Algorithm, available_algorithms, get_algorithm, register_algorithm

__all__ = ["Algorithm", "available_algorithms", "get_algorithm", "register_algorithm"]
