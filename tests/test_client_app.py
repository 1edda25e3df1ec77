"""The generic ClientApp runtime, called directly (no Ray): cohorts, determinism, replies."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from client_app import app as app_module
from client_app.app import _ModelTemplates, directory, evaluate_global, train
from client_app.state_files import FileClientState
from data.federated import client_data
from server_app.experiment import initial_arrays, run_experiment
from server_app.inprocess import InProcessGrid
from server_app.settings import client_job, compose_config
from strategies.core.cohort import QUERY_CONFIG
from strategies.core.wire import unpack_clients
from tests.runs import SHIPPED_STRATEGIES


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def _setup(clients_per_node: int):
    cfg = compose_config(
        [
            "dataset=digits",
            "num_clients=4",
            "clients_per_round=4",
            "partition=iid",
            f"engine.clients_per_node={clients_per_node}",
            "engine.reduce_cohorts=false",  # replies per client (tests/test_reduction.py: not)
        ]
    )
    return cfg, client_job(cfg), initial_arrays(cfg)


def _context(partition_id: int) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": partition_id},
        state=RecordDict(),
        run_config={},
    )


def _message(job, arrays, client_ids, message_type=MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": arrays, "config": job.for_round(3, client_ids).to_record()})
    return Message(content, dst_node_id=7, message_type=message_type)


def test_cohort_reply_has_one_update_per_client() -> None:
    _, job, arrays = _setup(clients_per_node=2)
    reply = train(_message(job, arrays, [2, 3]), _context(partition_id=1))
    per_client = unpack_clients(reply.content)
    assert sorted(per_client) == [2, 3]
    for client_id, records in per_client.items():
        train_split, _ = client_data(job.data_spec(), client_id)
        assert records["metrics"]["num-examples"] == len(train_split)
        assert np.isfinite(records["metrics"]["train-loss"])
        assert list(records["arrays"].keys()) == list(arrays.keys())


def test_cohort_training_equals_training_alone() -> None:
    """Hosting clients in cohorts changes the number of messages, not the numbers."""
    _, cohort_job, arrays = _setup(clients_per_node=2)
    cohort = unpack_clients(train(_message(cohort_job, arrays, [2, 3]), _context(1)).content)
    _, solo_job, _ = _setup(clients_per_node=1)
    alone = unpack_clients(train(_message(solo_job, arrays, [3]), _context(3)).content)
    for name, array in alone[3]["arrays"].items():
        assert np.array_equal(array.numpy(), cohort[3]["arrays"][name].numpy()), name
    assert alone[3]["metrics"]["train-loss"] == cohort[3]["metrics"]["train-loss"]


def test_training_moves_weights_and_differs_per_client() -> None:
    _, job, arrays = _setup(clients_per_node=2)
    per_client = unpack_clients(train(_message(job, arrays, [0, 1]), _context(0)).content)
    first = per_client[0]["arrays"]["fc2.weight"].numpy()
    assert not np.array_equal(first, arrays["fc2.weight"].numpy())
    assert not np.array_equal(first, per_client[1]["arrays"]["fc2.weight"].numpy())


def test_node_refuses_clients_it_does_not_host() -> None:
    _, job, arrays = _setup(clients_per_node=2)
    with pytest.raises(ValueError, match="not all hosted"):
        train(_message(job, arrays, [0, 3]), _context(partition_id=0))


def test_directory_query_reports_hosted_clients() -> None:
    query = RecordDict({QUERY_CONFIG: ConfigRecord({"num-clients": 5, "clients-per-node": 2})})
    reply = directory(Message(query, dst_node_id=7, message_type=MessageType.QUERY), _context(2))
    assert list(reply.content[QUERY_CONFIG]["client_ids"]) == [4]


def test_evaluate_reports_local_test_metrics() -> None:
    _, job, arrays = _setup(clients_per_node=2)
    message = _message(job, arrays, [0, 1], MessageType.EVALUATE)
    per_client = unpack_clients(evaluate_global(message, _context(0)).content)
    for client_id in (0, 1):
        metrics = per_client[client_id]["metrics"]
        _, test_split = client_data(job.data_spec(), client_id)
        assert metrics["num-examples"] == len(test_split)
        assert 0.0 <= metrics["accuracy"] <= 1.0


def test_model_template_cache_does_not_change_results() -> None:
    """A client trained in a process that never built the model equals one trained after the
    process has built (and trained) other clients: building never moves the seeded RNG."""

    _, job, arrays = _setup(clients_per_node=2)
    _ModelTemplates.built.clear()
    cold = unpack_clients(train(_message(job, arrays, [2]), _context(1)).content)[2]
    warm = unpack_clients(train(_message(job, arrays, [2]), _context(1)).content)[2]
    assert len(_ModelTemplates.built) == 1
    for name, array in cold["arrays"].items():
        assert np.array_equal(array.numpy(), warm["arrays"][name].numpy()), name


def test_reused_working_model_is_reset_to_a_fresh_build() -> None:
    """Whatever one client did to the shared working model (weights, BatchNorm statistics,
    gradients, frozen flags, eval mode), the next client starts from the pristine build."""
    cfg = compose_config(["dataset=digits", "num_clients=4", "model=resnet18"])
    job = client_job(cfg)
    _ModelTemplates.built.clear()
    model = _ModelTemplates.fresh(job, torch.device("cpu"))
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(4, 1, 8, 8)).sum().backward()  # train mode: BN statistics move
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    next(model.parameters()).requires_grad_(False)
    model.eval()

    again = _ModelTemplates.fresh(job, torch.device("cpu"))
    assert again is model  # reused, not copied
    for name, value in again.state_dict().items():
        assert torch.equal(value, pristine[name]), name
    assert all(p.grad is None and p.requires_grad for p in again.parameters())
    assert all(m.training for m in again.modules())


def test_replaced_state_files_go_only_when_the_whole_cohort_succeeded(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client 2 writes new state, then client 3 fails: Flower keeps the node's old context, so
    client 2's old file must still be there; a later successful message removes it."""
    _, job, arrays = _setup(clients_per_node=2)
    job = replace(job, state_dir=str(tmp_path))
    context = _context(partition_id=1)
    folder = tmp_path / "run-1" / "client-2"
    FileClientState(context.state, 2, tmp_path, 1).set("lbg", ArrayRecord({"v": Array(np.ones(3))}))
    (committed,) = folder.iterdir()
    fail_client = [3]

    def train_one(msg, context, ctx) -> tuple[dict, float]:
        if ctx.client_id in fail_client:
            raise RuntimeError("client 3 fails")
        ctx.state.set("lbg", ArrayRecord({"v": Array(np.full(3, 2.0))}))
        return {"metrics": MetricRecord({"num-examples": 1, "train-loss": 0.0})}, 0.0

    monkeypatch.setattr(app_module, "_train_one", train_one)
    discarded = _context(partition_id=1)  # Flower runs a copy and drops it when the app raises
    discarded.state = RecordDict(dict(context.state))
    with pytest.raises(RuntimeError, match="client 3 fails"):
        train(_message(job, arrays, [2, 3]), discarded)
    assert committed.exists()
    fail_client.clear()
    train(_message(job, arrays, [2, 3]), context)
    assert not committed.exists() and len(list(folder.iterdir())) == 1
    np.testing.assert_array_equal(
        FileClientState(context.state, 2, tmp_path, 1).get("lbg")["v"].numpy(), np.full(3, 2.0)
    )


def _training_steps(tmp_path, overrides: list[str]) -> list[int]:
    """The batch size of every optimizer step a 2-client, 2-round in-process run takes (any
    optimizer, any strategy): counted by global hooks, so no strategy's client is trusted."""
    cfg = compose_config(
        [
            "dataset=digits",
            "num_clients=2",
            "partition=iid",
            "num_rounds=2",
            "plots=false",
            "federated_eval=false",
            *overrides,
        ]
    )
    batches: list[int] = []
    stepped: list[int] = []

    def record_batch(module: nn.Module, args: tuple) -> None:
        if module.training and isinstance(args[0], torch.Tensor):
            batches.append(len(args[0]))

    forward = nn.modules.module.register_module_forward_pre_hook(record_batch)
    step = register_optimizer_step_post_hook(lambda *args: stepped.append(batches[-1]))
    try:
        run_experiment(InProcessGrid(cfg.num_clients), cfg, tmp_path)
    finally:
        forward.remove()
        step.remove()
    return stepped


def _training_sizes() -> list[int]:
    """Each client's training samples in ``_training_steps``'s runs: with ``federated_eval=false``
    nothing is held back for a local test."""
    cfg = compose_config(
        ["dataset=digits", "num_clients=2", "partition=iid", "federated_eval=false"]
    )
    return [len(client_data(client_job(cfg).data_spec(), c)[0]) for c in (0, 1)]


@pytest.mark.parametrize("strategy", SHIPPED_STRATEGIES)
def test_local_steps_is_the_exact_step_count_for_every_strategy(tmp_path, strategy: str) -> None:
    """Batches of 50 over each client's whole split: 3 steps are a fraction of an epoch, 40 run
    into a fourth (digits/iid gives each client ~720 samples, 15 batches an epoch)."""
    epochs = [[50] * (size // 50) + [size % 50] * (size % 50 > 0) for size in _training_sizes()]
    for steps in (3, 40):
        stepped = _training_steps(
            tmp_path / str(steps), [f"strategy={strategy}", f"local_steps={steps}", "batch_size=50"]
        )
        one_round = [batch for epoch in epochs for batch in (epoch * 4)[:steps]]
        assert stepped == one_round * 2  # x rounds


@pytest.mark.parametrize("strategy", SHIPPED_STRATEGIES)
def test_full_batch_is_the_whole_split_once_per_epoch_for_every_strategy(
    tmp_path, strategy: str
) -> None:
    sizes = _training_sizes()
    stepped = _training_steps(
        tmp_path, [f"strategy={strategy}", "batch_size=full", "local_epochs=2"]
    )
    assert stepped == [sizes[0]] * 2 + [sizes[1]] * 2 + [sizes[0]] * 2 + [sizes[1]] * 2
