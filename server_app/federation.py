"""How many clients a deployed run has, and waiting for its SuperNodes out loud.

A simulation starts its own nodes; a deployment has whichever SuperNodes are connected. With
``num_clients=auto`` (the default in deployment) the run asks the nodes connected within
``deployment.node_grace_s`` for their partition ids: the federation has as many clients as
the nodes declare (``num-partitions``), else one past the highest partition id. Nodes of that
federation that connect later are used from the next round. A given ``num_clients`` waits for
that many nodes. Either way the run never waits silently: it says every few seconds how many
nodes it has and how many it waits for, and gives up with one line after
``deployment.node_wait_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client_app.census import CENSUS, NUM_PARTITIONS, PARTITION_ID, UNDECLARED
from server_app.resume import given_keys
from strategies.core.cohort import QUERY_CONFIG, hosted_clients

AUTO = "auto"
POLL_S = 0.5
PROGRESS_EVERY_S = 5.0
NODE_ERROR = "<class '"  # Flower's "<class 'ValueError'>:<'message'>" form of a node's error


class FederationError(RuntimeError):
    """The SuperNodes cannot make up the run's federation; the message says what to do."""


@dataclass(frozen=True)
class NodeSeat:
    """A node's partition id and the federation size it was started for (0: undeclared)."""

    partition_id: int
    declared: int


def node_error_text(reason: str) -> str:
    """A node's error without Flower's ``<class '...'>:<'...'>`` wrapping."""
    if reason.startswith(NODE_ERROR) and ">:<'" in reason and reason.endswith("'>"):
        return reason.split(">:<'", 1)[1][:-2]
    return reason


def federation_size(seats: Iterable[NodeSeat]) -> int:
    """The clients the nodes make up: the ``num-partitions`` they declare, else one past the
    highest partition id; nodes declaring different sizes are refused."""
    seats = list(seats)
    declared = sorted({s.declared for s in seats if s.declared != UNDECLARED})
    if len(declared) > 1:
        raise FederationError(
            f"num_clients=auto: the SuperNodes declare num-partitions {declared}; start every "
            "node with the same num-partitions, or pass num_clients=N"
        )
    highest = max(s.partition_id for s in seats)
    size = declared[0] if declared else highest + 1
    if highest >= size:
        raise FederationError(
            f"num_clients=auto: a SuperNode has partition-id={highest} but the nodes declare "
            f"num-partitions={size}; partition ids run from 0 to num-partitions-1"
        )
    return size


def census(grid: Grid, node_ids: Iterable[int], timeout_s: float) -> dict[int, NodeSeat]:
    """Ask ``node_ids`` for their seats; a node that cannot answer stops the run."""
    query = ConfigRecord({"num-clients": CENSUS, "clients-per-node": 1})
    messages = [
        Message(RecordDict({QUERY_CONFIG: query}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    seats = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise FederationError(
                f"SuperNode {node} cannot take part: {node_error_text(reply.error.reason)}"
            )
        record = reply.content[QUERY_CONFIG]
        seats[node] = NodeSeat(int(record[PARTITION_ID]), int(record[NUM_PARTITIONS]))
    return seats


class NodeWait:
    """The clock and the progress lines of one wait for SuperNodes."""

    def __init__(self, wait_s: float, say: Callable[[str], None]) -> None:
        self.wait_s = wait_s
        self.say = say
        self.started = time.monotonic()
        self._said = -PROGRESS_EVERY_S

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self, progress: str) -> None:
        """Say ``progress`` (with the time left) every few seconds; sleep one poll."""
        if self.elapsed - self._said >= PROGRESS_EVERY_S:
            left = max(self.wait_s - self.elapsed, 0.0)
            self.say(f"[fedsparse] {progress}; giving up in {left:.0f} s (deployment.node_wait_s)")
            self._said = self.elapsed
        time.sleep(POLL_S)

    def expired(self) -> bool:
        return self.elapsed >= self.wait_s


def count_clients(
    grid: Grid, grace_s: float, wait_s: float, say: Callable[[str], None] = print
) -> tuple[int, dict[int, NodeSeat]]:
    """``num_clients=auto``: the clients of the nodes connected within ``grace_s`` (sooner
    once every node the connected ones declare is there), and the seats of those nodes;
    waits up to ``wait_s`` for a first node."""
    say(
        f"[fedsparse] num_clients=auto: counting the SuperNodes that connect within "
        f"{grace_s:g} s (deployment.node_grace_s)"
    )
    wait = NodeWait(wait_s, say)
    seats: dict[int, NodeSeat] = {}
    while True:
        connected = set(grid.get_node_ids())
        new = sorted(connected - seats.keys())
        if new:
            seats.update(census(grid, new, max(wait_s - wait.elapsed, POLL_S)))
        present = {n: seats[n] for n in connected if n in seats}
        if present:
            size = federation_size(present.values())
            seated = {s.partition_id for s in present.values()}
            declared = all(s.declared != UNDECLARED for s in present.values())
            if (declared and len(seated) == size) or wait.elapsed >= grace_s:
                say(_counted(len(present), size, seated))
                return size, present
        elif wait.expired():
            raise FederationError(
                f"no SuperNode connected within {wait_s:g} s (deployment.node_wait_s); start "
                "the SuperNodes (docs/deployment.md) and run again"
            )
        if wait.elapsed >= grace_s:
            wait.tick("num_clients=auto: no SuperNode connected yet")
        else:
            time.sleep(POLL_S)


def _counted(count: int, size: int, seated: set[int]) -> str:
    missing = sorted(set(range(size)) - seated)
    nodes = f"{count} SuperNode{'s' if count > 1 else ''}"
    line = f"[fedsparse] num_clients=auto: {nodes} connected -> {size} clients"
    if missing:
        line += f" (clients {missing} join when their nodes connect)"
    return line


def await_nodes(
    grid: Grid,
    needed: int,
    wait_s: float,
    grace_s: float | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Wait until ``needed`` nodes are connected, saying every few seconds how many there are;
    with ``grace_s`` (a resumed ``num_clients=auto`` run) any node at all will do once the
    grace period is over. Gives up after ``wait_s`` with a FederationError."""
    wait = NodeWait(wait_s, say)
    while (count := len(list(grid.get_node_ids()))) < needed:
        if count and grace_s is not None and wait.elapsed >= grace_s:
            return
        if wait.expired():
            raise FederationError(
                f"only {count} of {needed} SuperNodes connected within {wait_s:g} s "
                f"(deployment.node_wait_s): start the missing {needed - count}, or run with "
                f"num_clients=auto (the connected nodes)"
            )
        wait.tick(f"waiting for SuperNodes: {count} of {needed} connected")


def seated_clients(
    seats: Mapping[int, NodeSeat], num_clients: int, clients_per_node: int
) -> dict[int, list[int]]:
    """The clients each counted node hosts, as its answer to a directory query would say."""
    return {
        node: hosted_clients({PARTITION_ID: seat.partition_id}, num_clients, clients_per_node)
        for node, seat in seats.items()
    }


def without_auto(overrides: Iterable[str]) -> list[str]:
    """``overrides`` less ``num_clients=auto``: the config holds a number, counted later."""
    return [o for o in overrides if o.replace(" ", "") != f"num_clients={AUTO}"]


def sized_by_nodes(overrides: Iterable[str]) -> bool:
    """Whether the run takes its size from the SuperNodes: ``num_clients=auto``, or no
    ``num_clients`` at all (deployment's default)."""
    return "num_clients" not in given_keys(without_auto(overrides))
