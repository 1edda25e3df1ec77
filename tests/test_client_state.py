"""Per-client state kept by the engine (strategies/core/client_state.py): a client reads the
version the server names, a dropped reply or a resume rolls it back, a lost version is said
and replaced by empty state, and only the versions a checkpoint may name are kept."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto

from client_app.state_files import FolderStore
from server_app.experiment import run_experiment
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics
from server_app.settings import compose_config
from strategies.core.client_state import (
    NONE,
    ContextStore,
    KeptState,
    StateRounds,
)
from strategies.core.job import ClientJob
from strategies.core.update import STATE_LOST, ClientUpdate, reply_bytes
from strategies.core.wire import ClientState, record_bytes, shared_payload_bytes


def _stores(tmp_path: Path) -> dict[str, object]:
    return {"context": ContextStore(RecordDict(), 3), "folder": FolderStore(tmp_path / "c3")}


def _round(store, named: int, server_round: int, value: float, floor: int = NONE) -> KeptState:
    """Client round ``server_round`` from version ``named``: writes ``value``, commits."""
    state = KeptState(store, named, floor, server_round, writable=True)
    state.set_arrays("x", {"w": np.full(3, value, np.float32)})
    state.set("meta", ConfigRecord({"round": server_round}))
    state.release_superseded()
    return state


def _seen(store, named: int) -> float | None:
    arrays = KeptState(store, named, NONE, named + 1, writable=False).get_arrays("x")
    return None if arrays is None else float(arrays["w"][0])


@pytest.mark.parametrize("where", ["context", "folder"])
def test_a_client_reads_the_version_the_server_names(tmp_path: Path, where: str) -> None:
    """Rounds 1, 2 accepted; round 4's reply dropped: round 5 (named 2) sees round 2's values,
    never round 4's, and round 4's version is gone once round 5 starts."""
    store = _stores(tmp_path)[where]
    assert _round(store, NONE, 1, 1.0).lost is None
    _round(store, 1, 2, 2.0)
    _round(store, 2, 4, 4.0)
    fifth = KeptState(store, 2, NONE, 5, writable=True)
    assert float(fifth.get_arrays("x")["w"][0]) == 2.0
    assert fifth.get("meta")["round"] == 2
    fifth.release_superseded()
    assert sorted(store.read_index()) == [1, 2, 5]
    assert not any(key.endswith("@4") for key in store.held())


@pytest.mark.parametrize("where", ["context", "folder"])
def test_a_resume_rolls_back_a_client_that_trained_past_the_checkpoint(
    tmp_path: Path, where: str
) -> None:
    """The interrupted leg ran rounds 3 and 4 after the round-2 checkpoint: the resumed round 3
    starts from round 2's values and writes its own round 3."""
    store = _stores(tmp_path)[where]
    for server_round in (1, 2, 3, 4):
        _round(store, server_round - 1 or NONE, server_round, float(server_round))
    again = _round(store, 2, 3, 30.0)
    assert again.lost is None
    assert _seen(store, 3) == 30.0 and 4 not in store.read_index()


def test_state_in_flowers_context_survives_its_protobuf_round_trip() -> None:
    """A deployed ClientApp sends its context back to the SuperNode as protobuf; an Array
    holding a numpy Payload (not bytes) made Flower drop the whole push, so every deployed
    client started each round from empty state."""
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    _round(ContextStore(context.state, 3), NONE, 1, 0.5)
    ClientState(context.state, 4).set_arrays("y", {"v": np.arange(4, dtype=np.uint16)})
    back = context_from_proto(context_to_proto(context)).state
    assert _seen(ContextStore(back, 3), 1) == 0.5
    assert ClientState(back, 4).get_arrays("y")["v"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("where", ["context", "folder"])
def test_a_lost_version_is_reported_and_the_client_starts_empty(tmp_path: Path, where: str) -> None:
    store = _stores(tmp_path)[where]
    state = KeptState(store, 5, NONE, 6, writable=True)
    assert state.lost == 5 and state.get_arrays("x") is None and state.get("meta") is None


def test_versions_below_the_floor_go_and_unchanged_records_are_shared(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "c")
    _round(store, NONE, 1, 1.0)
    state = KeptState(store, 1, NONE, 2, writable=True)
    state.set("meta", ConfigRecord({"round": 2}))  # "x" stays round 1's
    state.release_superseded()
    assert store.read_index()[2] == {"x": 1, "meta": 2}
    _round(store, 2, 3, 3.0, floor=2)
    assert sorted(store.read_index()) == [2, 3]
    assert store.held() == {"x@1", "meta@2", "x@3", "meta@3"}  # round 1's x: version 2 has it


def test_evaluation_reads_and_never_writes(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "c")
    _round(store, NONE, 1, 1.0)
    state = KeptState(store, 1, NONE, 1, writable=False)
    with pytest.raises(RuntimeError, match="evaluation"):
        state.set_arrays("x", {"w": np.zeros(3, np.float32)})


def _update(client_id: int, lost: bool = False) -> ClientUpdate:
    metrics = {"num-examples": 1, **({STATE_LOST: 2} if lost else {})}
    return ClientUpdate(client_id, 1, metrics, {})


def test_the_server_names_the_last_accepted_round_and_the_one_three_rounds_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = StateRounds(4, in_context=False)
    job = ClientJob("scaffold", "cnn", "digits", "iid", 4, 0, state_dir="/srv/state")
    rounds.accepted(1, [_update(0), _update(1)])
    rounds.accepted(2, [_update(0)])
    rounds.accepted(3, [_update(2)])
    with caplog.at_level(logging.WARNING):
        rounds.accepted(4, [_update(0, lost=True)])
    assert "clients [0] no longer had" in caplog.text and len(caplog.records) == 1
    named = rounds.job_for(job.for_round(5, [0, 1, 2, 3]))
    assert named.state_rounds == (4, 1, 3, NONE)
    assert named.state_floors == (2, 1, NONE, NONE)  # as at the end of round 2
    assert named.state_dir == f"/srv/state/run-{rounds.run_key}"
    restored = StateRounds(4, in_context=False)
    restored.load_state_dict(rounds.state_dict())
    assert restored.job_for(job.for_round(5, [0, 1, 2, 3])) == named
    plain = job.for_round(5, [0, 1, 2, 3])
    content = RecordDict({"config": plain.to_record()})
    assert shared_payload_bytes(RecordDict({"config": named.to_record()})) == (
        shared_payload_bytes(content)
    )  # engine plumbing, as the routing list: not the algorithm's bytes


def test_resuming_with_state_in_the_context_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = StateRounds(2, in_context=True)
    rounds.accepted(1, [_update(0)])
    with caplog.at_level(logging.WARNING):
        resumed = StateRounds(2, in_context=True)
        resumed.load_state_dict(rounds.state_dict())
        resumed.accepted(2, [_update(0, lost=True)])
    assert len(caplog.records) == 1 and "Flower's context" in caplog.text


def test_a_lost_state_report_is_not_counted_as_the_replys_bytes() -> None:
    plain = {"metrics": MetricRecord({"num-examples": 5, "train-loss": 0.5})}
    reported = {"metrics": MetricRecord({"num-examples": 5, "train-loss": 0.5, STATE_LOST: 7})}
    assert reply_bytes(reported) == reply_bytes(plain) == record_bytes(plain.values())


class RestartsANode(InProcessGrid):
    """An in-process grid whose node hosting partition 0 restarts (a new node, empty context)
    once it has trained in ``server_round``."""

    def __init__(self, num_nodes: int, server_round: int) -> None:
        super().__init__(num_nodes)
        self.server_round = server_round

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        due = [m for m in messages if m.metadata.message_type == "train"]
        if due and due[0].content["config"]["server_round"] == self.server_round:
            self.restart_node(0)
        return ids


def test_a_node_that_lost_its_clients_state_is_named_in_one_line_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Top-k's residuals in Flower's context; the node of clients 0 and 1 restarts after
    round 2: one warning names them, every reply is still accepted, the run finishes."""
    cfg = compose_config(
        [
            "strategy=topk",
            "dataset=digits",
            "num_clients=4",
            "clients_per_round=4",
            "engine.clients_per_node=2",
            "num_rounds=4",
            "federated_eval=false",
            "plots=false",
        ]
    )
    with caplog.at_level(logging.WARNING):
        run_experiment(RestartsANode(2, server_round=2), cfg, tmp_path)
    lost = [r for r in caplog.records if "no longer had" in r.getMessage()]
    assert len(lost) == 1 and "round 3: clients [0, 1]" in lost[0].getMessage()
    rows = read_metrics(tmp_path)
    assert [(r["clients"], r["failures"]) for r in rows] == [(4, 0)] * 4
