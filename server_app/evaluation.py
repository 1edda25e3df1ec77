"""The server's central evaluation, and which rounds are evaluated (``eval_every``)."""

from __future__ import annotations

from flwr.app import ArrayRecord
from omegaconf import DictConfig

import strategies
from data.federated import central_test, dataset_info
from models.training import TensorData, evaluate, resolve_device
from server_app.settings import client_job


def is_evaluated(server_round: int, eval_every: int, num_rounds: int) -> bool:
    """Whether ``server_round`` is evaluated (central and federated evaluation): every
    ``eval_every``-th round, and always the last, so a run's final accuracy is its last round's."""
    return server_round % eval_every == 0 or server_round == num_rounds


class CentralEvaluator:
    """Evaluates global arrays on the server's central test set."""

    def __init__(self, cfg: DictConfig) -> None:
        job = client_job(cfg)
        spec = job.data_spec()
        info = dataset_info(spec)
        self.device = resolve_device(cfg.device)
        self.model = strategies.build_job_model(job, info.input_shape, info.num_classes)
        self.model.to(self.device)
        self.data = TensorData.from_arrays(central_test(spec), info.mean, info.std, self.device)

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        """(loss, accuracy) of ``arrays`` on the central test set."""
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        return evaluate(self.model, self.data)
