"""The LIPS paper's data regime and metric: per-client Dirichlet draws, label-matched local test
sets and ``local_accuracy_mean`` (each client's accuracy of the global model, averaged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import strategies
from client_app.batchnorm import restore_local_batchnorm
from data.federated import DataSpec, client_data, client_partition, dataset_info
from data.partition import dirichlet_draw_partition, split_counts
from models.training import TensorData, evaluate
from server_app.checkpoint import load_checkpoint
from server_app.experiment import run_experiment
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics
from server_app.settings import client_job, compose_config, validate
from strategies.core.client_state import ContextStore, KeptState


def _spec(**overrides: object) -> DataSpec:
    fields = {
        "dataset": "digits",
        "partition": "dirichlet_draw",
        "num_clients": 5,
        "seed": 0,
        "alpha": 0.3,
        "samples_per_client": 40,
        "local_test": "matched",
        "local_test_size": 50,
    }
    return DataSpec(**(fields | overrides))


def test_split_counts_sum_exactly_and_stay_within_one_of_the_proportions() -> None:
    rng = np.random.default_rng(0)
    for total in (1, 7, 100, 400):
        mix = rng.dirichlet(np.full(10, 0.1))
        counts = split_counts(total, mix)
        assert counts.sum() == total and counts.min() >= 0
        assert np.all(np.abs(counts - mix * total) < 1)


def test_dirichlet_draws_have_the_size_and_skew_asked_for() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_draw_partition(
        labels, 30, np.random.default_rng(1), alpha=0.1, samples_per_client=100
    )
    assert [len(p) for p in parts] == [100] * 30
    for part in parts:
        assert len(np.unique(part)) == 100  # no sample twice: every class pool is large enough
    top_share = np.mean([np.bincount(labels[p]).max() / 100 for p in parts])
    assert top_share > 0.6  # alpha=0.1 concentrates a client on few classes (IID: ~0.15)
    union = np.unique(np.concatenate(parts))
    assert len(union) < 30 * 100  # draws from the full pools overlap across clients


def test_matched_local_test_has_the_clients_class_proportions() -> None:
    spec = _spec()
    info = dataset_info(spec)
    for client in range(spec.num_clients):
        train, test = client_data(spec, client)
        np.testing.assert_array_equal(train.y, info.train.y[client_partition(spec)[client]])
        assert len(test) == spec.local_test_size
        train_share = np.bincount(train.y, minlength=10) / len(train)
        test_count = np.bincount(test.y, minlength=10)
        assert np.all(np.abs(test_count - train_share * spec.local_test_size) < 1)
        # the samples are the test split's: each one is found there with its label
        pool = {(x.tobytes(), int(y)) for x, y in zip(info.test.x, info.test.y, strict=True)}
        assert all((x.tobytes(), int(y)) in pool for x, y in zip(test.x, test.y, strict=True))


def test_matched_local_test_is_seeded() -> None:
    one, again = client_data(_spec(seed=2), 1)[1], client_data(_spec(seed=2), 1)[1]
    np.testing.assert_array_equal(one.x, again.x)
    other = client_data(_spec(seed=3), 1)[1]
    assert one.x.shape != other.x.shape or not np.array_equal(one.x, other.x)


def test_unknown_local_test_is_refused() -> None:
    with pytest.raises(ValueError, match="matched"):
        _spec(local_test="paired")


def _tiny_run(tmp_path, bn_policy: str):
    cfg = compose_config(
        [
            "dataset=digits",
            f"model={'resnet6' if bn_policy == 'local' else 'cnn'}",
            "partition=dirichlet_draw",
            "partition.alpha=0.3",
            "partition.samples_per_client=30",
            "partition.local_test=matched",
            "partition.local_test_size=40",
            "num_clients=3",
            "num_rounds=2",
            f"bn_policy={bn_policy}",
            "plots=false",
        ]
    )
    validate(cfg)
    grid = InProcessGrid(cfg.num_clients)
    run_experiment(grid, cfg, tmp_path)
    return cfg, grid, read_metrics(tmp_path)[-1], load_checkpoint(tmp_path / "checkpoint")


def _last_kept_state(node_state, client: int) -> KeptState:
    """The client's state as its last trained round left it, read-only (the version the
    final federated evaluation was named)."""
    store = ContextStore(node_state, client)
    last = max(store.read_index())
    return KeptState(store, last, last, last, writable=False)


@pytest.mark.parametrize("bn_policy", ["global", "local"])
def test_local_accuracy_mean_is_the_mean_of_each_clients_accuracy(tmp_path, bn_policy) -> None:
    """By hand: the final global model on each client's matched set (under bn_policy=local with
    that client's own BatchNorm values from its node's state), averaged over clients."""
    cfg, grid, row, checkpoint = _tiny_run(tmp_path, bn_policy)
    job = client_job(cfg)
    spec = job.data_spec()
    info = dataset_info(spec)
    accuracies, losses, without_own_bn, sizes = [], [], [], []
    for client, context in enumerate(grid.contexts.values()):
        model = strategies.build_job_model(job, info.input_shape, info.num_classes)
        model.load_state_dict(checkpoint.arrays.to_torch_state_dict())
        _, test = client_data(spec, client)
        data = TensorData.from_arrays(test, info.mean, info.std, torch.device("cpu"))
        without_own_bn.append(evaluate(model, data)[0])
        if bn_policy == "local":
            restore_local_batchnorm(model, _last_kept_state(context.state, client))
        loss, accuracy = evaluate(model, data)
        losses.append(loss)
        accuracies.append(accuracy)
        sizes.append(len(test))
    assert row["local_accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert row["local_accuracy_std"] == pytest.approx(np.std(accuracies), abs=1e-12)
    assert row["fed_accuracy"] == pytest.approx(np.average(accuracies, weights=sizes), abs=1e-12)
    assert row["fed_loss"] == pytest.approx(np.average(losses, weights=sizes), abs=1e-9)
    if bn_policy == "local":  # each client's own BN changes what it measures
        assert all(a != b for a, b in zip(losses, without_own_bn, strict=True))
