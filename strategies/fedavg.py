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


def weighted_average(
    arrays: Sequence[dict[str, np.ndarray]], weights: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-name weighted mean, summed in float64 in the given order and cast back (large arrays
    in slices on several threads: the same bits, see :mod:`strategies.slices`).

    Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are rounded to the nearest integer.
    """
    total = float(sum(weights))
    shares = [weight / total for weight in weights]
    averaged: dict[str, np.ndarray] = {}
    for name, first in arrays[0].items():
        acc = np.zeros(first.size, dtype=np.float64)
        columns = [values[name].reshape(-1) for values in arrays]

        def accumulate(part: slice, acc: np.ndarray = acc, columns: list = columns) -> None:
            for column, share in zip(columns, shares, strict=True):
                acc[part] += column[part] * share

        for_each_slice(first.size, accumulate)
        if first.dtype.kind in "iu":
            np.rint(acc, out=acc)
        averaged[name] = acc.astype(first.dtype).reshape(first.shape)
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
