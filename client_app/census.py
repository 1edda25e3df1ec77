"""What a SuperNode says about itself before a deployed run knows its size.

A deployed run with ``num_clients=auto`` asks every connected node for its ``partition-id``
and, when the node declares one, the federation size it was started for (``num-partitions``),
so the run can size itself from the nodes instead of waiting for a number it was never told.
Light on purpose: the ClientApp answers it without loading data or building a model.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ConfigRecord

CENSUS = 0  # a directory query for num-clients=0 is a census
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
UNDECLARED = 0  # num-partitions of a node started without one


def node_census(node_config: Mapping[str, object]) -> ConfigRecord:
    """The node's ``partition-id`` and declared ``num-partitions`` (0: none declared)."""
    if PARTITION_ID not in node_config:
        raise ValueError(
            "this node has no 'partition-id' in its node config; start the SuperNode with "
            "--node-config 'partition-id=<client id> num-partitions=<number of clients>'"
        )
    partition_id = node_config[PARTITION_ID]
    declared = node_config.get(NUM_PARTITIONS, UNDECLARED)
    for key, value in ((PARTITION_ID, partition_id), (NUM_PARTITIONS, declared)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"node config {key}={value!r} must be an integer >= 0, e.g. "
                "--node-config 'partition-id=0 num-partitions=2'"
            )
    return ConfigRecord({PARTITION_ID: partition_id, NUM_PARTITIONS: declared})
