"""The work every row of the scale benchmark does, defined once so the rows compare engines only.

mnist5k split IID into ``num_clients`` shards (the clients' own local-test share held out, as
fedsparse does), the ``cnn`` model, one local epoch of SGD (batch 32, lr 0.05, momentum 0.9 —
fedsparse's defaults), and a central evaluation of the new global model every round. The
floor (``floor.py``) also runs other models, data sets and a fixed number of local steps
(``Work``'s fields), to match fedsparse rows of other setups; ``benchmarks/peers.py``'s plain
Flower row sets the batch, learning rate, momentum and local-test share of pfl-research's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from data.datasets import DatasetSplits
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


@dataclass(frozen=True)
class Work:
    """``num_clients`` IID shards of ``dataset`` (all of each one: the fedsparse rows evaluate
    centrally only, so their clients hold nothing back either), ``model``,
    and the local round: one epoch, or exactly ``local_steps`` optimizer steps (fedsparse's
    ``local_steps``), of SGD at ``batch_size``, ``lr`` and ``momentum``."""

    num_clients: int
    model: str = MODEL
    dataset: str = DATASET
    local_steps: int | None = None
    batch_size: int = BATCH_SIZE
    lr: float = LR
    momentum: float = MOMENTUM
    local_test_fraction: float = 0.0  # fedsparse's rows run federated_eval=false: no hold-out

    @property
    def spec(self) -> DataSpec:
        return DataSpec(
            dataset=self.dataset,
            partition="iid",
            num_clients=self.num_clients,
            seed=SEED,
            local_test_fraction=self.local_test_fraction,
        )

    @property
    def info(self) -> DatasetSplits:
        return dataset_info(self.spec)

    def new_model(self) -> nn.Module:
        """The initial global model, seeded as fedsparse's server seeds it."""
        torch.manual_seed(SEED)
        return build_model(self.model, self.info.input_shape, self.info.num_classes)

    def train_set(self, client_id: int) -> TensorData:
        return _train_set(self, client_id)

    def train_client(
        self,
        model: nn.Module,
        client_id: int,
        server_round: int,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """One client's local training, in place (SGD unless ``optimizer`` is given); returns
        its number of examples."""
        data = self.train_set(client_id)
        if optimizer is None:
            optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum)
        seed = round_seed(SEED, server_round, client_id)
        train_epochs(model, data, optimizer, LOCAL_EPOCHS, self.batch_size, seed, self.local_steps)
        return len(data)

    def central_accuracy(self, model: nn.Module) -> float:
        return evaluate(model, _central_test_set(self))[1]


@cache
def _train_set(work: Work, client_id: int) -> TensorData:
    """A client's training shard as tensors, loaded once per process."""
    train, _ = client_data(work.spec, client_id)
    return TensorData.from_arrays(train, work.info.mean, work.info.std, torch.device("cpu"))


@cache
def _central_test_set(work: Work) -> TensorData:
    test = central_test(work.spec)
    return TensorData.from_arrays(test, work.info.mean, work.info.std, torch.device("cpu"))
