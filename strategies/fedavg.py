"""FedAvg: dense weights up, average weighted by ``num-examples`` (McMahan et al., 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from strategies.arrays import l2_norm, to_array_record, to_numpy_dict
from strategies.base import ARRAYS, ClientAlgorithm, ClientUpdate, FedSparseStrategy
from strategies.registry import Algorithm, register_algorithm
from strategies.slices import for_each_slice, map_arrays
from strategies.validation import arrays_like, require_record


def weighted_mean(
    arrays: Sequence[dict[str, np.ndarray]], weights: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-name weighted mean in float64: each client's values times its share (in the values'
    own precision: a Python float is a weak scalar), summed in the given order. Large arrays
    are summed in slices on several threads, which gives the same bits (see
    :mod:`strategies.slices`)."""
    total = float(sum(weights))
    shares = [weight / total for weight in weights]
    means: dict[str, np.ndarray] = {}
    for name, first in arrays[0].items():
        acc = np.zeros(first.size, dtype=np.float64)
        columns = [values[name].reshape(-1) for values in arrays]

        def accumulate(part: slice, acc: np.ndarray = acc, columns: list = columns) -> None:
            for column, share in zip(columns, shares, strict=True):
                acc[part] += column[part] * share

        for_each_slice(first.size, accumulate)
        means[name] = acc.reshape(first.shape)
    return means


def weighted_average(
    arrays: Sequence[dict[str, np.ndarray]], weights: Sequence[int]
) -> dict[str, np.ndarray]:
    """:func:`weighted_mean` cast back to each array's dtype.

    Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are rounded to the nearest integer.
    """
    return _cast_like(weighted_mean(arrays, weights), arrays[0])


def _cast_like(means: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        payloads = [u.payload for u in updates]
        means = weighted_mean(payloads, [u.num_examples for u in updates])
        base = to_numpy_dict(self.global_arrays)
        self._mean_delta = {  # Σ s_c (θ_c − W) = θ − W, the shares summing to 1
            name: mean - base[name] for name, mean in means.items() if base[name].dtype.kind == "f"
        }
        return to_array_record(_cast_like(means, payloads[0]))


register_algorithm(Algorithm("fedavg", FedAvg, ClientAlgorithm))
