"""The data each federated client and the server see, derived from one :class:`DataSpec`.

The partition depends only on the spec, so every process (server, clients,
simulation workers) that builds the same spec gets the same split without
sending indices around. It is computed once per process and spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from data.datasets import DATASETS, ArrayDataset, DatasetSplits, load_dataset
from data.partition import PARTITIONS, draw_by_class, partition_indices, split_counts

LOCAL_TESTS: tuple[str, ...] = ("split", "matched")


@dataclass(frozen=True)
class DataSpec:
    """Which data set, how it is split among clients, and where its files live.

    ``local_test="split"``: ``local_test_fraction`` of each client's samples is held out as
    that client's local test set. ``local_test="matched"`` (the LIPS paper's metric): the client
    trains on all its samples and tests on ``local_test_size`` samples of the data set's test
    split drawn with its own class proportions. The server's central test set is the data
    set's own test split and does not depend on ``seed``.
    """

    dataset: str
    partition: str
    num_clients: int
    seed: int
    alpha: float = 0.5
    min_size: int = 10
    classes_per_client: int = 2
    samples_per_client: int = 100
    local_test_fraction: float = 0.2
    local_test: str = "split"
    local_test_size: int = 400
    root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(
                f"Unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}."
            )
        if self.partition not in PARTITIONS:
            raise ValueError(
                f"Unknown partition {self.partition!r}; choose one of {', '.join(PARTITIONS)}."
            )
        if self.num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {self.num_clients}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        if not 0.0 <= self.local_test_fraction < 1.0:
            raise ValueError(
                f"local_test_fraction must be in [0, 1), got {self.local_test_fraction}; "
                "use 0 for no local test set."
            )
        if self.local_test not in LOCAL_TESTS:
            raise ValueError(
                f"Unknown local_test {self.local_test!r}; choose one of {', '.join(LOCAL_TESTS)}."
            )
        if self.local_test == "matched" and self.local_test_size < 1:
            raise ValueError(f"local_test_size must be >= 1, got {self.local_test_size}.")


def dataset_info(spec: DataSpec) -> DatasetSplits:
    """The loaded data set of ``spec`` (cached), for its classes, shape and normalisation."""
    return load_dataset(spec.dataset, root=spec.root, download=spec.download)


def central_test(spec: DataSpec) -> ArrayDataset:
    """The server's test set: the data set's test split, the same for every seed."""
    return dataset_info(spec).test


@cache
def client_partition(spec: DataSpec) -> tuple[np.ndarray, ...]:
    """Indices into the train split held by each client, computed once per process."""
    labels = dataset_info(spec).train.y
    parts = partition_indices(
        labels,
        spec.num_clients,
        spec.partition,
        spec.seed,
        alpha=spec.alpha,
        min_size=spec.min_size,
        classes_per_client=spec.classes_per_client,
        samples_per_client=spec.samples_per_client,
    )
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def _held(spec: DataSpec, client_id: int) -> np.ndarray:
    """The train-split indices client ``client_id`` holds (a clear error for a bad id)."""
    if not 0 <= client_id < spec.num_clients:
        raise ValueError(
            f"client_id must be in [0, {spec.num_clients - 1}] for num_clients={spec.num_clients}, "
            f"got {client_id}."
        )
    return client_partition(spec)[client_id]


def client_indices(spec: DataSpec, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client_id``'s (local train, local test) indices into the train split.

    The local test part is a random ``local_test_fraction`` (rounded down) of the
    client's samples, drawn from a generator seeded with ``(seed, client_id)``
    so it is fixed per client and independent of the other clients.
    """
    held = _held(spec, client_id)
    shuffled = np.random.default_rng([spec.seed, client_id]).permutation(held)
    num_test = int(len(shuffled) * spec.local_test_fraction)
    return np.sort(shuffled[num_test:]), np.sort(shuffled[:num_test])


def matched_test_indices(spec: DataSpec, client_id: int) -> np.ndarray:
    """Client ``client_id``'s label-matched local test set: ``local_test_size`` indices into the
    test split with the class proportions of the client's training samples (to within one
    sample per class), drawn from a generator seeded with ``(seed, client_id)``. Clients draw
    from the same test split, so their sets overlap, as in the LIPS code."""
    info = dataset_info(spec)
    classes = np.arange(info.num_classes)
    held = info.train.y[_held(spec, client_id)]
    counts = split_counts(spec.local_test_size, np.bincount(held, minlength=len(classes)))
    pools = [np.flatnonzero(info.test.y == c) for c in classes]
    if any(count and not len(pool) for pool, count in zip(pools, counts, strict=True)):
        raise ValueError(f"dataset={spec.dataset} has a class missing from its test split")
    return draw_by_class(pools, counts, np.random.default_rng([spec.seed, client_id]))


def client_data(spec: DataSpec, client_id: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Client ``client_id``'s (local train, local test) sets; see :func:`client_indices` and,
    under ``local_test="matched"``, :func:`matched_test_indices`."""
    info = dataset_info(spec)
    if spec.local_test == "matched":
        train = _held(spec, client_id)
        test_idx = matched_test_indices(spec, client_id)
        return (
            ArrayDataset(info.train.x[train], info.train.y[train]),
            ArrayDataset(info.test.x[test_idx], info.test.y[test_idx]),
        )
    train, test = client_indices(spec, client_id)
    return (
        ArrayDataset(info.train.x[train], info.train.y[train]),
        ArrayDataset(info.train.x[test], info.train.y[test]),
    )
