"""FedAvg: dense weights up, average weighted by ``num-examples`` (McMahan et al., 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from strategies.arrays import l2_norm, to_array_record, to_numpy_dict
from strategies.base import ARRAYS, ClientAlgorithm, ClientUpdate, FedSparseStrategy
from strategies.registry import Algorithm, register_algorithm
from strategies.slices import map_arrays
from strategies.validation import arrays_like, require_record
from strategies.weighted_sum import WeightedSum, cast_like


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
