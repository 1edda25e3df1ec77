"""``work.py``'s work with the model and every client's data resident on one device.

pfl-research's way of simulating on a GPU: the data of all clients is put on the device once,
before the first round, and a client's local round then moves nothing between host and device.
``DeviceWork`` is ``Work`` with a ``device``: the same shards, model, local round and central
evaluation (``train_client`` is ``Work``'s own), only where the tensors live differs. On
``cpu`` it trains exactly as ``Work`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from benchmarks.scale.work import Work
from data.federated import central_test, client_data
from models.training import TensorData, evaluate


@dataclass(frozen=True)
class DeviceWork(Work):
    """``Work`` whose models, client shards and central test set live on ``device``."""

    device: str = "cpu"

    def new_model(self) -> nn.Module:
        return super().new_model().to(self.device)

    def train_set(self, client_id: int) -> TensorData:
        return _train_set(self, client_id)

    def central_accuracy(self, model: nn.Module) -> float:
        return evaluate(model, _central_test_set(self))[1]

    def load_all(self) -> None:
        """Put every client's shard and the central test set on the device now."""
        for client_id in range(self.num_clients):
            self.train_set(client_id)
        _central_test_set(self)


@cache
def _train_set(work: DeviceWork, client_id: int) -> TensorData:
    train, _ = client_data(work.spec, client_id)
    return TensorData.from_arrays(train, work.info.mean, work.info.std, torch.device(work.device))


@cache
def _central_test_set(work: DeviceWork) -> TensorData:
    test = central_test(work.spec)
    return TensorData.from_arrays(test, work.info.mean, work.info.std, torch.device(work.device))
