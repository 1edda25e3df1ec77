"""FedAvg: dense weights up, average weighted by ``num-examples`` (McMahan et al., 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from strategies.arrays import l2_norm, to_array_record, to_numpy_dict
from strategies.base import ARRAYS, ClientAlgorithm, ClientUpdate, FedSparseStrategy
from strategies.registry import Algorithm, register_algorithm
from strategies.slices import for_each_slice, map_arrays
from strategies.validation import arrays_like, require_record


class WeightedSum:
    """Σ_c w_c·x_c per name, added one client at a time, and the mean Σ_c w_c·x_c / Σ_c w_c.

    The server folds each client's update in as soon as the clients before it are in, so it
    never holds a round's updates together. A float32 value times an integer weight is exact
    in float64, so the only roundings are the running float64 sum, taken in client-id order
    (the same bits whatever the cohort size), and the final division. Large arrays are added
    in slices on threads, which gives the same bits (see :mod:`strategies.slices`).
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weight = 0

    def add(self, values: Mapping[str, Any], weight: int) -> None:
        """Add ``weight`` times each array of ``values`` (arrays, or anything that reshapes and
        slices like one, such as LBGM's lazily rebuilt layers)."""
        for name, value in values.items():
            flat = value.reshape(-1)
            if name not in self.sums:
                self.sums[name] = np.zeros(flat.size, dtype=np.float64)
                self.shapes[name] = tuple(value.shape)
            acc = self.sums[name]

            def accumulate(part: slice, acc: np.ndarray = acc, flat: Any = flat) -> None:
                acc[part] += np.multiply(flat[part], weight, dtype=np.float64)

            for_each_slice(flat.size, accumulate)
        self.weight += weight

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean per name, in float64 and the arrays' shapes."""
        return {
            name: (acc / self.weight).reshape(self.shapes[name]) for name, acc in self.sums.items()
        }


def cast_like(
    means: dict[str, np.ndarray], like: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each mean in the dtype of the same name in ``like``; integers rounded to the nearest."""
    cast = {}
    for name, mean in means.items():
        if like[name].dtype.kind in "iu":
            mean = np.rint(mean, out=np.empty_like(mean))  # stays an array when 0-d
        cast[name] = mean.astype(like[name].dtype)
    return cast


class FedAvg(FedSparseStrategy):
    """Weighted averaging of the clients' trained weights."""

    name = "fedavg"
    _mean_delta: dict[str, np.ndarray] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scratch: dict[str, np.ndarray] = {}  # one client's delta at a time (monitor)
        self._sum = WeightedSum()

    def decode(self, update: ClientUpdate) -> dict[str, np.ndarray]:
        return arrays_like(require_record(update.records, ARRAYS, ArrayRecord), self.global_arrays)

    def delta_norms(self, payload: dict[str, np.ndarray]) -> dict[str, float]:
        base = to_numpy_dict(self.global_arrays)
        floats = {name: values.size for name, values in payload.items() if values.dtype.kind == "f"}
        for name in floats:  # decoded payloads match the global arrays' shapes and dtypes
            if name not in self._scratch:
                self._scratch[name] = np.empty_like(payload[name])

        def norm(name: str) -> float:
            return l2_norm(np.subtract(payload[name], base[name], out=self._scratch[name]))

        return map_arrays(norm, floats)

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def begin_aggregation(self, server_round: int) -> None:
        self._sum = WeightedSum()

    def fold(self, update: ClientUpdate) -> None:
        self._sum.add(update.payload, update.num_examples)
        update.release()

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        means = self._sum.mean()
        base = to_numpy_dict(self.global_arrays)
        self._mean_delta = {  # Σ s_c (θ_c − W) = θ − W, the shares summing to 1
            name: mean - base[name] for name, mean in means.items() if base[name].dtype.kind == "f"
        }
        return to_array_record(cast_like(means, base))


register_algorithm(Algorithm("fedavg", FedAvg, ClientAlgorithm))
