"""A deployed run's size and its wait for SuperNodes (``server_app.federation``), against
stand-in nodes that answer with the real ClientApp's directory handler."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Context, Error, Message, RecordDict
from omegaconf import OmegaConf

from client_app.app import directory
from server_app import deploy, federation
from server_app.app import deployed_config
from server_app.federation import (
    FederationError,
    NodeSeat,
    await_nodes,
    count_clients,
    federation_size,
    node_error_text,
    sized_by_nodes,
    without_auto,
)
from server_app.settings import ConfigError, compose_config


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(federation, "POLL_S", 0.01)
    monkeypatch.setattr(federation, "PROGRESS_EVERY_S", 0.1)


class Nodes:
    """SuperNodes as a ServerApp sees them: node id -> node config, each connected from its
    ``joins_after`` seconds on; queries go through the ClientApp's own handler, and a handler
    that raises replies with Flower's error form."""

    def __init__(self, configs: dict[int, dict], joins_after: dict[int, float] | None = None):
        self.configs = configs
        self.joins_after = joins_after or {}
        self.started = time.monotonic()
        self.queried: list[int] = []

    def get_node_ids(self) -> list[int]:
        now = time.monotonic() - self.started
        return [n for n in self.configs if self.joins_after.get(n, 0.0) <= now]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.queried.append(node)
            context = Context(
                run_id=1, node_id=node, node_config=self.configs[node], state=RecordDict(),
                run_config={},
            )  # fmt: skip
            try:
                replies.append(directory(msg, context))
            except Exception as ex:
                reason = str(type(ex)) + ":<'" + str(ex) + "'>"
                replies.append(Message(Error(code=2, reason=reason), reply_to=msg))
        return replies


def _seat(partition: int, declared: int = 2) -> dict:
    return {"partition-id": partition, "num-partitions": declared}


class Said(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def test_size_is_the_declared_one_else_one_past_the_highest_partition() -> None:
    assert federation_size([NodeSeat(0, 3)]) == 3
    assert federation_size([NodeSeat(0, 0), NodeSeat(4, 0)]) == 5
    assert federation_size([NodeSeat(1, 2), NodeSeat(0, 0)]) == 2
    with pytest.raises(FederationError, match=r"num-partitions \[2, 3\]"):
        federation_size([NodeSeat(0, 2), NodeSeat(1, 3)])
    with pytest.raises(FederationError, match="partition-id=2 but the nodes declare"):
        federation_size([NodeSeat(2, 2)])


def test_node_errors_lose_flowers_wrapping() -> None:
    assert node_error_text("<class 'ValueError'>:<'no 'x' here'>") == "no 'x' here"
    assert node_error_text("Node unavailable") == "Node unavailable"


def test_auto_starts_as_soon_as_every_declared_node_is_there() -> None:
    said = Said()
    started = time.monotonic()
    size, seats = count_clients(Nodes({7: _seat(0), 9: _seat(1)}), grace_s=30, wait_s=60, say=said)
    assert (
        size == 2
        and seats == {7: NodeSeat(0, 2), 9: NodeSeat(1, 2)}
        and time.monotonic() - started < 5
    )
    assert "within 30 s" in said[0] and said[-1].endswith("2 SuperNodes connected -> 2 clients")


def test_auto_waits_the_grace_period_for_missing_nodes_then_starts_without_them() -> None:
    said = Said()
    nodes = Nodes({7: _seat(0, declared=3), 9: _seat(2, declared=3)})
    started = time.monotonic()
    assert count_clients(nodes, grace_s=0.3, wait_s=60, say=said)[0] == 3
    assert time.monotonic() - started >= 0.3
    assert said[-1].endswith(
        "2 SuperNodes connected -> 3 clients (clients [1] join when their nodes connect)"
    )
    assert sorted(nodes.queried) == [7, 9]  # each node asked once, however long the wait


def test_auto_counts_undeclared_nodes_that_connect_within_the_grace_period() -> None:
    nodes = Nodes({7: {"partition-id": 0}, 9: {"partition-id": 1}}, joins_after={9: 0.1})
    assert count_clients(nodes, grace_s=0.4, wait_s=60, say=Said())[0] == 2


def test_auto_without_any_node_says_so_and_gives_up_after_the_wait() -> None:
    said = Said()
    with pytest.raises(FederationError, match=r"no SuperNode connected within 0.5 s"):
        count_clients(Nodes({}), grace_s=0.1, wait_s=0.5, say=said)
    progress = [line for line in said if "no SuperNode connected yet" in line]
    assert len(progress) >= 2 and "giving up in" in progress[0]


def test_a_node_without_partition_id_stops_the_run_in_one_line() -> None:
    with pytest.raises(FederationError, match=r"SuperNode 7 cannot take part: this node has no"):
        count_clients(Nodes({7: {"num-partitions": 2}}), grace_s=0.1, wait_s=5, say=Said())


def test_a_given_size_reports_progress_and_gives_up_after_the_wait() -> None:
    said = Said()
    started = time.monotonic()
    with pytest.raises(FederationError) as info:
        await_nodes(Nodes({7: _seat(0), 9: _seat(1)}), needed=3, wait_s=0.5, say=said)
    assert 0.5 <= time.monotonic() - started < 3
    assert "only 2 of 3 SuperNodes connected within 0.5 s" in str(info.value)
    assert "num_clients=auto" in str(info.value) and "\n" not in str(info.value)
    progress = [line for line in said if "waiting for SuperNodes: 2 of 3 connected" in line]
    assert len(progress) >= 3


def test_a_given_size_starts_when_the_last_node_connects() -> None:
    nodes = Nodes({7: _seat(0, 3), 8: _seat(1, 3), 9: _seat(2, 3)}, joins_after={9: 0.3})
    await_nodes(nodes, needed=3, wait_s=30, say=Said())
    assert time.monotonic() - nodes.started >= 0.3


def test_num_clients_is_the_nodes_unless_given() -> None:
    assert sized_by_nodes(["strategy=lips"]) and sized_by_nodes(["num_clients=auto"])
    assert not sized_by_nodes(["num_clients=4"])
    assert without_auto(["num_clients=auto", "seed=1"]) == ["seed=1"]


def test_local_check_stands_in_a_count_the_other_settings_allow() -> None:
    deploy.check_overrides(["dataset=digits", "clients_per_round=3", "min_replies=3"])
    deploy.check_overrides(["dataset=digits", "num_clients=auto"])
    with pytest.raises(ConfigError, match="between 1 and num_clients"):
        deploy.check_overrides(["dataset=digits", "num_clients=2", "clients_per_round=3"])


def test_deployed_config_counts_waits_or_resumes(tmp_path: Path) -> None:
    nodes = Nodes({7: _seat(0), 9: _seat(1)})
    config, seated = deployed_config(nodes, "dataset=digits num_rounds=1", tmp_path / "a")
    assert (config.num_clients, config.clients_per_round, seated) == (2, 2, {7: [0], 9: [1]})
    assert sorted(nodes.queried) == [7, 9]  # the census only: it seats the clients too
    config, seated = deployed_config(nodes, "dataset=digits num_clients=2", tmp_path / "b")
    assert (config.num_clients, seated) == (2, None)
    stored = compose_config(["dataset=digits", "num_clients=3"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text(OmegaConf.to_yaml(stored, resolve=True))
    fast = "deployment.node_grace_s=0 deployment.node_wait_s=5"
    config, seated = deployed_config(nodes, f"resume=true {fast}", tmp_path / "c")
    assert (config.num_clients, config.dataset.name, seated) == (3, "digits", {})
