"""The work every row of the scale benchmark does, defined once so the rows compare engines only.

mnist5k split IID into ``num_clients`` shards (the clients' own local-test share held out, as
fedsparse does), the ``cnn`` model, one local epoch of SGD (batch 32, lr 0.05, momentum 0.9 —
fedsparse's defaults), and a central evaluation of the new global model every round.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from data.federated import DataSpec, central_test, client_data, dataset_info
from models import build_model
from models.training import TensorData, evaluate, round_seed, train_epochs

SEED = 0
MODEL = "cnn"
DATASET = "mnist5k"
LOCAL_EPOCHS = 1
BATCH_SIZE = 32
LR = 0.05
MOMENTUM = 0.9


def spec(num_clients: int) -> DataSpec:
    return DataSpec(dataset=DATASET, partition="iid", num_clients=num_clients, seed=SEED)


def new_model(num_clients: int) -> nn.Module:
    info = dataset_info(spec(num_clients))
    torch.manual_seed(SEED)
    return build_model(MODEL, info.input_shape, info.num_classes)


@cache
def client_train_set(num_clients: int, client_id: int) -> TensorData:
    """A client's training shard as tensors, loaded once per process."""
    info = dataset_info(spec(num_clients))
    train, _ = client_data(spec(num_clients), client_id)
    return TensorData.from_arrays(train, info.mean, info.std, torch.device("cpu"))


@cache
def central_test_set(num_clients: int) -> TensorData:
    info = dataset_info(spec(num_clients))
    return TensorData.from_arrays(
        central_test(spec(num_clients)), info.mean, info.std, torch.device("cpu")
    )


def train_client(model: nn.Module, num_clients: int, client_id: int, server_round: int) -> int:
    """One client's local training, in place; returns its number of examples."""
    data = client_train_set(num_clients, client_id)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    seed = round_seed(SEED, server_round, client_id)
    train_epochs(model, data, optimizer, LOCAL_EPOCHS, BATCH_SIZE, seed)
    return len(data)


def central_accuracy(model: nn.Module, num_clients: int) -> float:
    return evaluate(model, central_test_set(num_clients))[1]
