"""FedAvg: dense weights up, average weighted by ``num-examples`` (McMahan et al., 2017)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from flwr.app import ArrayRecord

from strategies.arrays import to_array_record, to_numpy_dict
from strategies.base import ARRAYS, ClientAlgorithm, ClientUpdate, FedSparseStrategy
from strategies.registry import Algorithm, register_algorithm
from strategies.slices import for_each_slice
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

    def decode(self, update: ClientUpdate) -> dict[str, np.ndarray]:
        return arrays_like(require_record(update.records, ARRAYS, ArrayRecord), self.global_arrays)

    def client_deltas(self, updates: list[ClientUpdate]) -> Iterator[dict[str, np.ndarray]]:
        base = to_numpy_dict(self.global_arrays)
        scratch: dict[str, np.ndarray] = {}
        for update in updates:
            for name, values in update.payload.items():
                if values.dtype.kind == "f":
                    if name not in scratch:
                        scratch[name] = np.empty_like(values)
                    np.subtract(values, base[name], out=scratch[name])
            yield scratch

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
