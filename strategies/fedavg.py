"""FedAvg: dense weights up, average weighted by ``num-examples`` (McMahan et al., 2017)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord

from strategies.core.job import ClientJob
from strategies.core.reduction import CohortSum
from strategies.core.registry import Algorithm, register_algorithm
from strategies.core.strategy import ARRAYS, ClientUpdate, FedSparseStrategy
from strategies.core.tensor_arrays import TensorArrays, checked_tensors
from strategies.core.update import REPLY_SLACK_BYTES
from strategies.core.validation import arrays_like, require_record
from strategies.numeric.arrays import l2_norm, to_array_record, to_numpy_dict
from strategies.numeric.slices import map_arrays
from strategies.numeric.weighted_sum import TensorWeightedSum, WeightedSum, cast_like

Decoded = dict[str, np.ndarray] | dict[str, torch.Tensor]  # host arrays, or a device's tensors


class WeightedArrays(CohortSum):
    """Σ_c n_c·θ_c over the clients' trained arrays, each checked against the downlinked global
    arrays (names, shapes, dtypes, finite values)."""

    def __init__(self, job: ClientJob, downlink: ArrayRecord) -> None:
        self.template = downlink
        self.limit = 2 * downlink.count_bytes() + REPLY_SLACK_BYTES
        self.base = to_numpy_dict(downlink)
        self.sum: WeightedSum | TensorWeightedSum = WeightedSum()
        self._scratch: dict[str, np.ndarray] = {}  # one client's delta at a time (monitor)
        self._device_base: dict[str, torch.Tensor] = {}  # the base on a GPU node's device

    @property
    def weight(self) -> int:
        return self.sum.weight

    def reply_limit(self) -> int:
        """Twice the dense model plus slack."""
        return self.limit

    def decode(self, update: ClientUpdate) -> Decoded:
        """The checked arrays; on a reducing node, its client's tensors as they were trained
        (numpy views on the CPU, tensors on a GPU)."""
        record = update.records.get(ARRAYS)
        if isinstance(record, TensorArrays):
            return checked_tensors(record, self.template)
        return arrays_like(require_record(update.records, ARRAYS, ArrayRecord), self.template)

    def delta_norms(self, payload: Decoded) -> dict[str, float]:
        if _on_device(payload):
            return self._device_norms(payload)
        floats = {name: values.size for name, values in payload.items() if values.dtype.kind == "f"}
        for name in floats:  # decoded payloads match the global arrays' shapes and dtypes
            if name not in self._scratch:
                self._scratch[name] = np.empty_like(payload[name])

        def norm(name: str) -> float:
            return l2_norm(np.subtract(payload[name], self.base[name], out=self._scratch[name]))

        return map_arrays(norm, floats)

    def _device_norms(self, payload: dict[str, torch.Tensor]) -> dict[str, float]:
        """‖θ_c − W‖ per float array, on the payload's device (float32, like the host's; the
        reduction order differs, so these monitor values may differ in the last bits)."""
        norms = {}
        for name, tensor in payload.items():
            if not tensor.is_floating_point():
                continue
            if name not in self._device_base:
                self._device_base[name] = torch.from_numpy(self.base[name]).to(tensor.device)
            norms[name] = float(torch.linalg.vector_norm(tensor - self._device_base[name]))
        return norms

    def add(self, update: ClientUpdate) -> None:
        """Add one client's example-weighted arrays; the first update of a GPU node's cohort
        puts the sum on its device (later host updates are moved there, in client order)."""
        if self.sum.weight == 0 and not self.sum.sums and _on_device(update.payload):
            self.sum = TensorWeightedSum(next(iter(update.payload.values())).device)
        self.sum.add(update.payload, update.num_examples)
        update.release()

    def partial(self) -> dict[str, np.ndarray]:
        return self.sum.partial()

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {name: (v.shape, np.dtype(np.float64)) for name, v in self.base.items()}

    def merge(self, partial: Mapping[str, np.ndarray], weight: int) -> None:
        self.sum.merge(partial, weight)

    def result(self) -> dict[str, np.ndarray]:
        """The weighted mean Σ n_c θ_c / Σ n_c, in float64."""
        return self.sum.mean()


def _on_device(payload: Mapping[str, object]) -> bool:
    """Whether a decoded payload is a device's tensors (a GPU node's own client)."""
    return any(isinstance(value, torch.Tensor) for value in payload.values())


class FedAvg(FedSparseStrategy):
    """Weighted averaging of the clients' trained weights."""

    name = "fedavg"
    cohort_sum_type = WeightedArrays
    _mean_delta: dict[str, np.ndarray] | None = None

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        means = self.running.result()
        base = to_numpy_dict(self.global_arrays)
        self._mean_delta = {  # Σ s_c (θ_c − W) = θ − W, the shares summing to 1
            name: mean - base[name] for name, mean in means.items() if base[name].dtype.kind == "f"
        }
        return to_array_record(cast_like(means, base))


register_algorithm(Algorithm("fedavg", FedAvg))
