"""FedAvg: dense weights up, average weighted by ``num-examples`` (McMahan et al., 2017)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from flwr.app import ArrayRecord

from strategies.arrays import to_array_record, to_numpy_dict
from strategies.base import ARRAYS, ClientAlgorithm, ClientUpdate, FedSparseStrategy
from strategies.registry import Algorithm, register_algorithm
from strategies.validation import arrays_like, require_record


def weighted_average(
    arrays: Sequence[dict[str, np.ndarray]], weights: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-name weighted mean, summed in float64 in the given order and cast back.

    Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are rounded to the nearest integer.
    """
    total = float(sum(weights))
    averaged: dict[str, np.ndarray] = {}
    for name, first in arrays[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for values, weight in zip(arrays, weights, strict=True):
            acc += values[name] * (weight / total)
        if first.dtype.kind in "iu":
            np.rint(acc, out=acc)
        averaged[name] = acc.astype(first.dtype)
    return averaged


class FedAvg(FedSparseStrategy):
    """Weighted averaging of the clients' trained weights."""

    name = "fedavg"

    def decode(self, update: ClientUpdate) -> dict[str, np.ndarray]:
        return arrays_like(require_record(update.records, ARRAYS, ArrayRecord), self.global_arrays)

    def client_deltas(self, updates: list[ClientUpdate]) -> Iterator[dict[str, np.ndarray]]:
        base = to_numpy_dict(self.global_arrays)
        for update in updates:
            yield {n: v - base[n] for n, v in update.payload.items() if v.dtype.kind == "f"}

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        averaged = weighted_average([u.payload for u in updates], [u.num_examples for u in updates])
        return to_array_record(averaged)


register_algorithm(Algorithm("fedavg", FedAvg, ClientAlgorithm))
