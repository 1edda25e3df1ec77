"""Tests for data.federated: what each client and the server receive."""

import numpy as np
import pytest

from data.datasets import load_dataset
from data.federated import (
    DataSpec,
    central_test,
    client_data,
    client_indices,
    client_partition,
    dataset_info,
)
from data.partition import DISJOINT_PARTITIONS


def _spec(**overrides: object) -> DataSpec:
    fields = {"dataset": "digits", "partition": "dirichlet", "num_clients": 6, "seed": 0}
    return DataSpec(**(fields | overrides))


@pytest.mark.parametrize("partition", DISJOINT_PARTITIONS)
def test_clients_cover_the_train_split_exactly(partition: str) -> None:
    spec = _spec(partition=partition)
    train = dataset_info(spec).train
    pieces = []
    for client in range(spec.num_clients):
        local_train, local_test = client_indices(spec, client)
        assert not np.intersect1d(local_train, local_test).size
        held = len(local_train) + len(local_test)
        assert len(local_test) == int(held * spec.local_test_fraction)
        pieces += [local_train, local_test]
    np.testing.assert_array_equal(np.sort(np.concatenate(pieces)), np.arange(len(train)))


def test_client_data_holds_the_indexed_samples() -> None:
    spec = _spec()
    train = dataset_info(spec).train
    for client in range(spec.num_clients):
        datasets = client_data(spec, client)
        for indices, local in zip(client_indices(spec, client), datasets, strict=True):
            np.testing.assert_array_equal(local.x, train.x[indices])
            np.testing.assert_array_equal(local.y, train.y[indices])
            assert local.x.shape[1:] == dataset_info(spec).input_shape


def test_zero_local_test_fraction_gives_empty_local_test() -> None:
    spec = _spec(local_test_fraction=0.0)
    local_train, local_test = client_data(spec, 0)
    assert len(local_test) == 0 and local_test.x.shape == (0, 1, 8, 8)
    assert len(local_train) == len(client_partition(spec)[0])


def test_same_seed_same_data_other_seed_differs() -> None:
    first = client_data(_spec(seed=1), 2)[0]
    again = client_data(_spec(seed=1), 2)[0]
    np.testing.assert_array_equal(first.y, again.y)
    np.testing.assert_array_equal(first.x, again.x)
    one, other = client_partition(_spec(seed=1)), client_partition(_spec(seed=2))
    assert any(not np.array_equal(a, b) for a, b in zip(one, other, strict=True))


def test_central_test_is_the_fixed_test_split() -> None:
    tests = [central_test(_spec(seed=seed, partition="iid")) for seed in (0, 1, 2)]
    assert all(t is tests[0] for t in tests)
    assert tests[0] is load_dataset("digits").test


def test_partition_and_dataset_are_cached() -> None:
    spec = _spec(seed=5)
    assert client_partition(spec) is client_partition(_spec(seed=5))
    assert dataset_info(spec) is dataset_info(_spec(seed=6))
    assert dataset_info(spec).num_classes == 10


@pytest.mark.parametrize("client_id", [-1, 6])
def test_client_id_out_of_range(client_id: int) -> None:
    with pytest.raises(ValueError, match="client_id"):
        client_data(_spec(), client_id)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dataset": "svhn"}, "dataset"),
        ({"partition": "shards"}, "partition"),
        ({"num_clients": 0}, "num_clients"),
        ({"seed": -1}, "seed"),
        ({"local_test_fraction": 1.0}, "local_test_fraction"),
    ],
)
def test_invalid_spec_raises(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _spec(**overrides)
