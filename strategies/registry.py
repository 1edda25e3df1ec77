"""Algorithm registry: a name maps to its server strategy and its client half."""

from __future__ import annotations

from dataclasses import dataclass

from strategies.base import ClientAlgorithm, FedSparseStrategy


@dataclass(frozen=True)
class Algorithm:
    """Both halves of one federated protocol."""

    name: str
    server: type[FedSparseStrategy]
    client: type[ClientAlgorithm]


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
