"""Test helpers for strategy authors: small federations run in the pytest process, no Ray.

    from server_app.testing import run_and_read, final_arrays, build_server, Federation, ...

``run_and_read`` runs a whole experiment and returns its metrics rows, ``final_arrays`` reads
the last checkpoint's model, ``build_server`` is the configured strategy, ``Federation`` drives
it round by round against an :class:`InProcessGrid` (the ClientApp called in-process), and
``client_context`` is what one client's hooks are told. Every helper takes the ``fedsparse``
command line's overrides. docs/development.md ("Testing a strategy") shows them in use.

They live in ``server_app`` because they run the server; ``strategies`` imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from omegaconf import DictConfig

from client_app.app import client_context as context_of
from server_app.checkpoint import load_checkpoint
from server_app.engine import AUTO
from server_app.experiment import initial_arrays, run_experiment
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics, without_wall_clock
from server_app.settings import build_strategy, client_job, compose_config, validate
from strategies.core.client import ClientContext
from strategies.core.cohort import ClientDirectory
from strategies.core.engine import RoundResult
from strategies.core.strategy import FedSparseStrategy
from strategies.core.wire import ClientState
from strategies.numeric.arrays import to_numpy_dict

__all__ = [
    "Federation",
    "InProcessGrid",
    "build_server",
    "client_context",
    "configured",
    "final_arrays",
    "load_checkpoint",
    "run_and_read",
    "without_wall_clock",
]


def configured(overrides: Iterable[str]) -> DictConfig:
    """conf/ composed with ``overrides`` and validated, as the ``fedsparse`` command does."""
    cfg = compose_config(list(overrides))
    validate(cfg)
    return cfg


def clients_per_node(cfg: DictConfig) -> int:
    """``engine.clients_per_node`` in process: ``auto`` is one client a node."""
    per_node = cfg.engine.clients_per_node
    return 1 if per_node == AUTO else int(per_node)


def run_and_read(overrides: Iterable[str], run_dir: Path) -> list[dict]:
    """Run the experiment ``overrides`` configure into ``run_dir`` on an :class:`InProcessGrid`
    of ceil(num_clients / clients_per_node) nodes, and return its ``metrics.jsonl`` rows. Run
    it again with ``resume=true`` and the same ``run_dir`` to continue from its checkpoint."""
    cfg = configured(overrides)
    nodes = math.ceil(cfg.num_clients / clients_per_node(cfg))
    run_experiment(InProcessGrid(nodes), cfg, run_dir)
    return read_metrics(run_dir)


def final_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    """The global model of a run's last checkpoint, by array name."""
    return to_numpy_dict(load_checkpoint(run_dir / "checkpoint").arrays)


def build_server(overrides: Iterable[str]) -> FedSparseStrategy:
    """The configured strategy, its client directory sized as ``overrides`` say."""
    cfg = configured(overrides)
    return build_strategy(cfg, ClientDirectory(cfg.num_clients, clients_per_node(cfg)))


class Federation:
    """The configured strategy and its clients in process, driven one round at a time."""

    def __init__(self, overrides: Iterable[str]) -> None:
        self.cfg = configured(overrides)
        per_node = clients_per_node(self.cfg)
        self.server = build_strategy(self.cfg, ClientDirectory(self.cfg.num_clients, per_node))
        self.grid = InProcessGrid(math.ceil(self.cfg.num_clients / per_node))
        self.arrays: ArrayRecord = initial_arrays(self.cfg)
        """The global model: the seed's initial one, then each round's aggregate."""

    def send(self, server_round: int) -> list[Message]:
        """The round's train messages, sent; the nodes' replies (nothing aggregated yet)."""
        messages = self.server.configure_train(server_round, self.arrays, ConfigRecord(), self.grid)
        return list(self.grid.send_and_receive(list(messages)))

    def aggregate(self, server_round: int, replies: list[Message]) -> RoundResult:
        """The strategy's aggregate of ``replies``; its arrays become the global model."""
        result = self.server.aggregate_train(server_round, replies)
        if result.arrays is not None:
            self.arrays = result.arrays
        return result

    def train_round(self, server_round: int) -> RoundResult:
        """One training round: send, then aggregate the replies."""
        return self.aggregate(server_round, self.send(server_round))


def client_context(
    overrides: Iterable[str],
    client_id: int = 0,
    server_round: int = 1,
    content: RecordDict | None = None,
    state: ClientState | None = None,
) -> ClientContext:
    """What client ``client_id``'s hooks are told in ``server_round`` of the configured run:
    its job and typed parameters, ``content`` as its node message (default: empty) and
    ``state`` (default: an empty one, kept in memory)."""
    job = client_job(configured(overrides)).for_round(server_round, [client_id])
    state = ClientState(RecordDict(), client_id) if state is None else state
    return context_of(RecordDict() if content is None else content, job, client_id, state)
