"""Tests for the client partitioners in data.partition."""

import numpy as np
import pytest

from data.partition import (
    DISJOINT_PARTITIONS,
    PARTITIONS,
    dirichlet_partition,
    iid_partition,
    partition_indices,
    pathological_partition,
)

# Sorted labels (10 classes x 100) catch partitioners that forget to shuffle.
SORTED_LABELS = np.repeat(np.arange(10), 100)
# Unbalanced, non-contiguous class ids.
UNEVEN_LABELS = np.random.default_rng(123).choice(
    [3, 7, 11, 42], size=777, p=[0.5, 0.3, 0.15, 0.05]
)


def _assert_exact_cover(parts: list[np.ndarray], num_samples: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each part must be sorted and free of duplicates"
    joined = np.concatenate(parts)
    assert len(joined) == num_samples, "parts must be pairwise disjoint"
    np.testing.assert_array_equal(np.sort(joined), np.arange(num_samples))


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the share of the client's most common class."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


@pytest.mark.parametrize("kind", DISJOINT_PARTITIONS)
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("num_clients", [1, 3, 10])
def test_partitions_are_disjoint_and_complete(kind: str, seed: int, num_clients: int) -> None:
    for labels in (SORTED_LABELS, UNEVEN_LABELS):
        # The fewest classes per client that still lets every class be held.
        k = -(-len(np.unique(labels)) // num_clients)
        parts = partition_indices(labels, num_clients, kind, seed, min_size=5, classes_per_client=k)
        _assert_exact_cover(parts, len(labels), num_clients)


@pytest.mark.parametrize("kind", PARTITIONS)
def test_same_seed_same_partition_other_seed_differs(kind: str) -> None:
    first = partition_indices(SORTED_LABELS, 8, kind, seed=3)
    again = partition_indices(SORTED_LABELS, 8, kind, seed=3)
    other = partition_indices(SORTED_LABELS, 8, kind, seed=4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(first, other, strict=True)
    )


def test_generator_functions_match_partition_indices() -> None:
    expected = partition_indices(SORTED_LABELS, 5, "dirichlet", seed=9, alpha=0.3, min_size=20)
    direct = dirichlet_partition(SORTED_LABELS, 5, np.random.default_rng(9), alpha=0.3, min_size=20)
    for a, b in zip(expected, direct, strict=True):
        np.testing.assert_array_equal(a, b)


def test_iid_shuffles_sorted_labels_and_balances_sizes() -> None:
    parts = iid_partition(SORTED_LABELS, 7, np.random.default_rng(0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(np.unique(SORTED_LABELS[p])) == 10 for p in parts)


def test_smaller_alpha_gives_more_label_skew() -> None:
    labels = np.repeat(np.arange(10), 500)
    skewed = _label_skew(labels, partition_indices(labels, 10, "dirichlet", 0, alpha=0.1))
    near_iid = _label_skew(labels, partition_indices(labels, 10, "dirichlet", 0, alpha=100.0))
    assert near_iid < 0.2  # IID would be 0.1
    assert skewed > near_iid + 0.3


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_respects_min_size(seed: int) -> None:
    parts = partition_indices(SORTED_LABELS, 10, "dirichlet", seed, alpha=0.1, min_size=40)
    assert min(len(p) for p in parts) >= 40


@pytest.mark.parametrize(("num_clients", "k"), [(10, 1), (5, 2), (4, 3), (25, 2), (30, 3)])
def test_pathological_gives_exactly_k_classes(num_clients: int, k: int) -> None:
    parts = pathological_partition(
        SORTED_LABELS, num_clients, np.random.default_rng(1), classes_per_client=k
    )
    _assert_exact_cover(parts, len(SORTED_LABELS), num_clients)
    held = [set(np.unique(SORTED_LABELS[p]).tolist()) for p in parts]
    assert all(len(classes) == k for classes in held)
    assert set().union(*held) == set(range(10))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 1001}, "num_clients"),
        ({"kind": "shards"}, "iid, dirichlet, dirichlet_draw, pathological"),
        ({"kind": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"kind": "dirichlet", "alpha": -1.0}, "alpha"),
        ({"kind": "dirichlet", "min_size": 201}, "min_size"),
        ({"kind": "pathological", "classes_per_client": 11}, "classes_per_client"),
        ({"kind": "pathological", "classes_per_client": 0}, "classes_per_client"),
        ({"kind": "pathological", "num_clients": 4, "classes_per_client": 2}, "num_clients"),
        ({"kind": "pathological", "num_clients": 900, "classes_per_client": 10}, "samples"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict, key: str) -> None:
    arguments = {"num_clients": 5, "kind": "iid", "seed": 0} | kwargs
    with pytest.raises(ValueError, match=key):
        partition_indices(SORTED_LABELS, **arguments)


def test_dirichlet_tops_up_when_no_draw_reaches_min_size() -> None:
    # With alpha this small each class lands on one client, so no draw gives all
    # 20 clients a sample: the partition is topped up instead of failing.
    parts = partition_indices(SORTED_LABELS, 20, "dirichlet", 0, alpha=1e-3, min_size=3)
    assert min(len(p) for p in parts) >= 3
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(SORTED_LABELS)))


def test_dirichlet_many_clients_little_data_low_alpha() -> None:
    """The low-data regime LIPS targets: 100 clients, 40 samples each on average, alpha=0.1."""
    labels = np.repeat(np.arange(10), 400)
    parts = partition_indices(labels, 100, "dirichlet", 0, alpha=0.1, min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    top_share = np.mean([np.bincount(labels[p]).max() / len(p) for p in parts])
    assert top_share > 0.5  # still strongly skewed


def test_labels_must_be_integer_vector() -> None:
    with pytest.raises(ValueError, match="labels"):
        partition_indices(np.zeros((4, 2), dtype=np.int64), 2, "iid", 0)
    with pytest.raises(ValueError, match="labels"):
        partition_indices(np.zeros(4), 2, "iid", 0)
