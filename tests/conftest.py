"""Shared fixtures: a Flower task identity, a fake Grid hosting clients per node, small jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies.core.cohort import QUERY_CONFIG, expected_nodes, hosted_clients
from strategies.core.job import ClientJob
from strategies.core.wire import CLIENT_IDS_KEY

NODE_BASE = 1000


@pytest.fixture(autouse=True)
def task_identity():
    """Messages (and replies) can only be built once the process has a task identity."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    """Just enough of ``flwr.serverapp.Grid`` for the directory and the strategies.

    Node ``NODE_BASE + p`` has ``partition-id`` p and answers directory queries with the clients
    :func:`hosted_clients` gives it. Other messages go to ``handler`` (no reply when it is None
    or returns None).
    """

    def __init__(
        self,
        num_clients: int,
        clients_per_node: int,
        handler: Callable[[Message], Message | None] | None = None,
    ) -> None:
        self.num_clients = num_clients
        self.clients_per_node = clients_per_node
        self.handler = handler
        self.partition_of: dict[int, int] = {
            NODE_BASE + p: p for p in range(expected_nodes(num_clients, clients_per_node))
        }
        self.sent: list[Message] = []

    @staticmethod
    def node(partition_id: int) -> int:
        """Node id of the node whose partition-id is ``partition_id``."""
        return NODE_BASE + partition_id

    def get_node_ids(self) -> list[int]:
        return list(self.partition_of)

    def queries(self) -> list[Message]:
        return [m for m in self.sent if m.metadata.message_type == MessageType.QUERY]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node_id = msg.metadata.dst_node_id
            if node_id not in self.partition_of:
                continue
            if msg.metadata.message_type == MessageType.QUERY:
                query = msg.content[QUERY_CONFIG]
                ids = hosted_clients(
                    {"partition-id": self.partition_of[node_id]},
                    int(query["num-clients"]),
                    int(query["clients-per-node"]),
                )
                content = RecordDict({QUERY_CONFIG: ConfigRecord({CLIENT_IDS_KEY: ids})})
                replies.append(Message(content, reply_to=msg))
            elif self.handler is not None:
                reply = self.handler(msg)
                if reply is not None:
                    replies.append(reply)
        return replies


@pytest.fixture
def make_grid() -> Callable[..., FakeGrid]:
    """``make_grid(num_clients, clients_per_node, handler=None)`` -> FakeGrid."""
    return FakeGrid


def _make_job(num_clients: int = 6, clients_per_node: int = 1, **changes) -> ClientJob:
    """A small, valid job (digits / iid) for strategy tests."""
    values = dict(
        algorithm="fedavg",
        model="cnn",
        dataset="digits",
        partition="iid",
        num_clients=num_clients,
        seed=7,
        clients_per_node=clients_per_node,
    )
    values.update(changes)
    return ClientJob(**values)


def _model_arrays(seed: int = 0) -> ArrayRecord:
    """A tiny 'model': a 2-D float32 weight, a float32 bias and a one-element int64 counter.

    (The counter is 1-D on purpose: FedAvg cannot rebuild 0-d integer arrays, see test_fedavg.)
    """
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "fc.weight": Array(rng.standard_normal((3, 4)).astype(np.float32)),
            "fc.bias": Array(rng.standard_normal(3).astype(np.float32)),
            "bn.num_batches_tracked": Array(np.array([seed * 10], dtype=np.int64)),
        }
    )


@pytest.fixture
def make_job() -> Callable[..., ClientJob]:
    """``make_job(num_clients=6, clients_per_node=1, **changes)`` -> a small valid ClientJob."""
    return _make_job


@pytest.fixture
def model_arrays() -> Callable[[int], ArrayRecord]:
    """``model_arrays(seed)`` -> a tiny ArrayRecord (float32 weight and bias, int64 counter)."""
    return _model_arrays
