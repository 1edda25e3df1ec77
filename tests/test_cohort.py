"""Tests for strategies.core.cohort: which node hosts which clients."""

from __future__ import annotations

import pytest
from flwr.app import Error, Message, MessageType

from strategies.core import cohort
from strategies.core.cohort import ClientDirectory, expected_nodes, hosted_clients


def test_hosted_clients_one_per_node_is_the_partition_id() -> None:
    assert [hosted_clients({"partition-id": p}, 5, 1) for p in range(5)] == [[p] for p in range(5)]


def test_hosted_clients_three_per_node_last_gets_remainder() -> None:
    hosted = [hosted_clients({"partition-id": p}, 10, 3) for p in range(4)]
    assert hosted == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    flat = [c for ids in hosted for c in ids]
    assert flat == list(range(10))  # a partition of the clients: no gaps, no overlaps


def test_hosted_clients_accepts_string_partition_id() -> None:
    assert hosted_clients({"partition-id": "2"}, 9, 3) == [6, 7, 8]


@pytest.mark.parametrize(
    ("partition_id", "num_clients", "per_node"), [(4, 10, 3), (5, 5, 1), (-1, 5, 1)]
)
def test_hosted_clients_out_of_range(partition_id: int, num_clients: int, per_node: int) -> None:
    with pytest.raises(ValueError, match="hosts no client") as info:
        hosted_clients({"partition-id": partition_id}, num_clients, per_node)
    message = str(info.value)
    assert f"partition-id {partition_id}" in message
    assert f"{num_clients} clients" in message and f"{per_node} per node" in message


def test_num_partitions_must_match_the_runs_nodes() -> None:
    """A SuperNode started with another run's num-partitions is refused, not ignored."""
    assert hosted_clients({"partition-id": 1, "num-partitions": 4}, 10, 3) == [3, 4, 5]
    assert hosted_clients({"partition-id": 1, "num-partitions": "4"}, 10, 3) == [3, 4, 5]
    with pytest.raises(ValueError, match="num-partitions=2, but") as info:
        hosted_clients({"partition-id": 1, "num-partitions": 2}, 10, 3)
    assert "need 4 nodes" in str(info.value) and "num-partitions=4" in str(info.value)


def test_hosted_clients_without_partition_id() -> None:
    with pytest.raises(ValueError, match="no 'partition-id'") as info:
        hosted_clients({"num-partitions": 4}, 4, 1)
    assert "--node-config" in str(info.value)


@pytest.mark.parametrize(
    ("num_clients", "per_node", "nodes"), [(10, 1, 10), (10, 3, 4), (9, 3, 3), (1, 5, 1), (7, 7, 1)]
)
def test_expected_nodes(num_clients: int, per_node: int, nodes: int) -> None:
    assert expected_nodes(num_clients, per_node) == nodes
    # Exactly that many partition ids host at least one client.
    assert all(hosted_clients({"partition-id": p}, num_clients, per_node) for p in range(nodes))
    with pytest.raises(ValueError):
        hosted_clients({"partition-id": nodes}, num_clients, per_node)


NODE_BASE = 1000  # FakeGrid's node id for partition-id 0 (see conftest)


@pytest.fixture
def directory_for(make_grid):
    """``directory_for(num_clients, per_node)`` -> (refreshed ClientDirectory, its FakeGrid)."""

    def build(num_clients: int, per_node: int):
        grid = make_grid(num_clients, per_node)
        assert grid.node(0) == NODE_BASE
        directory = ClientDirectory(num_clients, per_node, timeout_s=5)
        directory.refresh(grid)
        return directory, grid

    return build


def test_directory_learns_all_clients(directory_for) -> None:
    directory, grid = directory_for(10, 3)
    assert directory.available_clients() == list(range(10))
    queries = grid.queries()
    assert sorted(q.metadata.dst_node_id for q in queries) == [NODE_BASE + p for p in range(4)]
    for query in queries:
        assert query.content[cohort.QUERY_CONFIG]["num-clients"] == 10
        assert query.content[cohort.QUERY_CONFIG]["clients-per-node"] == 3


def test_refresh_queries_each_node_only_once(directory_for) -> None:
    directory, grid = directory_for(6, 2)
    directory.refresh(grid)
    directory.refresh(grid)
    assert len(grid.queries()) == 3
    assert directory.available_clients() == list(range(6))


def test_group_by_node_groups_and_sorts(directory_for) -> None:
    directory, _ = directory_for(10, 3)
    groups = directory.group_by_node([9, 5, 0, 4, 2, 7])
    assert groups == {
        NODE_BASE: [0, 2],
        NODE_BASE + 1: [4, 5],
        NODE_BASE + 2: [7],
        NODE_BASE + 3: [9],
    }
    assert directory.group_by_node([]) == {}


def test_group_by_node_one_client_per_node(directory_for) -> None:
    directory, _ = directory_for(4, 1)
    assert directory.group_by_node([3, 1]) == {NODE_BASE + 1: [1], NODE_BASE + 3: [3]}


def test_node_leaving_removes_its_clients(directory_for) -> None:
    directory, grid = directory_for(10, 3)
    del grid.partition_of[NODE_BASE + 1]
    directory.refresh(grid)
    assert directory.available_clients() == [0, 1, 2, 6, 7, 8, 9]
    with pytest.raises(KeyError):
        directory.group_by_node([4])


def test_client_moves_to_a_new_node(directory_for) -> None:
    directory, grid = directory_for(6, 2)
    del grid.partition_of[NODE_BASE + 2]
    grid.partition_of[2000] = 2  # the same partition comes back under a new node id
    directory.refresh(grid)
    assert directory.available_clients() == list(range(6))
    assert directory.group_by_node([4, 5, 0]) == {NODE_BASE: [0], 2000: [4, 5]}


def test_failed_query_is_retried_on_next_refresh(make_grid) -> None:
    grid = make_grid(4, 1)
    real = grid.send_and_receive
    grid.send_and_receive = lambda messages, timeout=None: [
        r for r in real(messages, timeout=timeout) if r.metadata.src_node_id != NODE_BASE + 2
    ]
    directory = ClientDirectory(4, 1)
    directory.refresh(grid)
    assert directory.available_clients() == [0, 1, 3]
    grid.send_and_receive = real
    directory.refresh(grid)
    assert directory.available_clients() == [0, 1, 2, 3]
    assert [q.metadata.dst_node_id for q in grid.queries()][-1] == NODE_BASE + 2


def test_wait_for_nodes_returns_when_all_connected(make_grid) -> None:
    grid = make_grid(5, 2)
    directory = ClientDirectory(5, 2, timeout_s=1)
    directory.wait_for_nodes(grid)
    assert directory.available_clients() == list(range(5))
    assert all(q.metadata.message_type == MessageType.QUERY for q in grid.sent)


def test_wait_for_nodes_times_out(monkeypatch: pytest.MonkeyPatch, make_grid) -> None:
    monkeypatch.setattr(cohort, "NODE_POLL_S", 0.001)
    grid = make_grid(5, 1)
    del grid.partition_of[NODE_BASE + 4]
    directory = ClientDirectory(5, 1, timeout_s=0.01)
    with pytest.raises(TimeoutError, match="only 4 of 5 nodes"):
        directory.wait_for_nodes(grid)


def test_wait_for_nodes_retries_failing_queries_then_names_the_error(make_grid) -> None:
    grid = make_grid(3, 1)
    real = grid.send_and_receive

    def failing(messages, timeout=None):
        replies = []
        for reply, message in zip(real(messages, timeout=timeout), messages, strict=True):
            if message.metadata.dst_node_id == NODE_BASE + 1:
                reply = Message(Error(code=1, reason="ImportError('boom')"), reply_to=message)
            replies.append(reply)
        return replies

    grid.send_and_receive = failing
    directory = ClientDirectory(3, 1, timeout_s=0.5)
    with pytest.raises(TimeoutError, match=r"only 2 of 3 clients.*ImportError\('boom'\)"):
        directory.wait_for_nodes(grid)
    grid.send_and_receive = real
    directory.wait_for_nodes(grid)  # a node that recovers is picked up
    assert directory.available_clients() == [0, 1, 2]
