"""Clients, nodes and cohorts: which node hosts which clients.

A *client* is a unit of data and state with a stable id; a *node* is what Flower addresses.
The server learns the mapping by sending each new node a query once; the node answers with
the client ids it hosts (from its node config). Strategies sample clients, then group them
by hosting node so that one message per node carries the whole cohort.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from strategies.core.wire import CLIENT_IDS_KEY

log = logging.getLogger(__name__)

QUERY_CONFIG = "directory"
NODE_POLL_S = 0.2


def hosted_clients(
    node_config: Mapping[str, object], num_clients: int, clients_per_node: int
) -> list[int]:
    """The client ids a node hosts.

    A node with ``partition-id`` p hosts clients ``[p*K, (p+1)*K)`` (clipped to ``num-clients``),
    where K is ``clients_per_node``. In deployment K is 1, so a node's
    partition id is its client id. A ``num-partitions`` that does not match the run's number of
    nodes means the federation was started for another run: refused, not silently ignored.
    """
    if "partition-id" not in node_config:
        raise ValueError(
            "this node has no 'partition-id' in its node config; start the SuperNode with "
            "--node-config 'partition-id=<client id> num-partitions=<number of clients>'"
        )
    nodes = expected_nodes(num_clients, clients_per_node)
    if "num-partitions" in node_config and int(node_config["num-partitions"]) != nodes:
        raise ValueError(
            f"node config num-partitions={node_config['num-partitions']}, but the run's "
            f"{num_clients} clients ({clients_per_node} per node) need {nodes} nodes: start every "
            f"SuperNode with num-partitions={nodes}, or without num-partitions"
        )
    first = int(node_config["partition-id"]) * clients_per_node
    if not 0 <= first < num_clients:
        raise ValueError(
            f"node partition-id {node_config['partition-id']} hosts no client: the run has "
            f"{num_clients} clients and {clients_per_node} per node"
        )
    return list(range(first, min(first + clients_per_node, num_clients)))


def expected_nodes(num_clients: int, clients_per_node: int) -> int:
    """Number of nodes needed to host ``num_clients`` in cohorts of ``clients_per_node``."""
    return math.ceil(num_clients / clients_per_node)


class ClientDirectory:
    """Maps client ids to the node that hosts them, refreshed as nodes come and go."""

    def __init__(self, num_clients: int, clients_per_node: int, timeout_s: float = 120.0) -> None:
        self.num_clients = num_clients
        self.clients_per_node = clients_per_node
        self.timeout_s = timeout_s
        self.query_errors: list[str] = []
        self._node_of: dict[int, int] = {}
        self._clients_of: dict[int, list[int]] = {}

    def wait_for_nodes(self, grid: Grid) -> None:
        """Block until every node the run needs has connected, then learn their clients."""
        needed = expected_nodes(self.num_clients, self.clients_per_node)
        deadline = time.monotonic() + self.timeout_s
        while len(list(grid.get_node_ids())) < needed:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(list(grid.get_node_ids()))} of {needed} nodes connected within "
                    f"{self.timeout_s:.0f} s; start more SuperNodes or lower num_clients"
                )
            time.sleep(NODE_POLL_S)
        self.refresh(grid)
        while len(self._node_of) < self.num_clients:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(self._node_of)} of {self.num_clients} clients answered the "
                    f"directory query within {self.timeout_s:.0f} s; last node errors: "
                    f"{self.query_errors[-3:] or 'none'}"
                )
            time.sleep(NODE_POLL_S)
            self.refresh(grid)

    def refresh(self, grid: Grid) -> None:
        """Forget nodes that left and ask new nodes which clients they host."""
        live = set(grid.get_node_ids())
        for node_id in set(self._clients_of) - live:
            self._forget(node_id)
        new_nodes = sorted(live - set(self._clients_of))
        if not new_nodes:
            return
        query = ConfigRecord(
            {"num-clients": self.num_clients, "clients-per-node": self.clients_per_node}
        )
        messages = [
            Message(
                RecordDict({QUERY_CONFIG: query}),
                dst_node_id=node_id,
                message_type=MessageType.QUERY,
            )
            for node_id in new_nodes
        ]
        for reply in grid.send_and_receive(messages, timeout=self.timeout_s):
            if reply.has_error():
                log.warning(
                    "node %d failed the directory query: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                self.query_errors.append(reply.error.reason)
                continue
            client_ids = reply.content[QUERY_CONFIG][CLIENT_IDS_KEY]
            self._assign(reply.metadata.src_node_id, [int(c) for c in client_ids])

    def seat(self, node_id: int, client_ids: list[int]) -> None:
        """Record that ``node_id`` hosts ``client_ids``, learned without a directory query (a
        deployed run's census of its nodes)."""
        self._assign(node_id, client_ids)

    def available_clients(self) -> list[int]:
        """Sorted ids of the clients currently reachable."""
        return sorted(self._node_of)

    def group_by_node(self, client_ids: Iterable[int]) -> dict[int, list[int]]:
        """Group clients by hosting node, keeping each cohort sorted."""
        groups: dict[int, list[int]] = {}
        for client_id in sorted(client_ids):
            groups.setdefault(self._node_of[client_id], []).append(client_id)
        return groups

    def _assign(self, node_id: int, client_ids: list[int]) -> None:
        for client_id in client_ids:
            previous = self._node_of.get(client_id)
            if previous is not None and previous != node_id:
                self._clients_of[previous].remove(client_id)
            self._node_of[client_id] = node_id
        self._clients_of[node_id] = client_ids

    def _forget(self, node_id: int) -> None:
        for client_id in self._clients_of.pop(node_id):
            if self._node_of.get(client_id) == node_id:
                del self._node_of[client_id]
