"""Data sets, client partitions and the per-client data of a federated run."""

from data.datasets import (
    DATASETS,
    ArrayDataset,
    DataNotFoundError,
    DatasetSplits,
    load_dataset,
)
from data.federated import (
    DataSpec,
    central_test,
    client_data,
    client_indices,
    client_partition,
    dataset_info,
)
from data.partition import (
    PARTITIONS,
    dirichlet_partition,
    iid_partition,
    partition_indices,
    pathological_partition,
)

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "ArrayDataset",
    "DataNotFoundError",
    "DataSpec",
    "DatasetSplits",
    "central_test",
    "client_data",
    "client_indices",
    "client_partition",
    "dataset_info",
    "dirichlet_partition",
    "iid_partition",
    "load_dataset",
    "partition_indices",
    "pathological_partition",
]
