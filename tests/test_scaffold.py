"""SCAFFOLD: its first round is FedAvg's, c stays the mean of the cᵢ the clients keep (also when
replies are dropped), and client drift shrinks. Its resume: tests/test_resume.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from client_app.state_files import FolderStore
from server_app.checkpoint import load_checkpoint
from server_app.experiment import initial_arrays
from server_app.inprocess import InProcessGrid
from server_app.settings import build_strategy, compose_config, validate
from strategies.core.client_state import NONE, ROUNDS_KEY, RUN_KEY, STATE_PREFIX, KeptState
from strategies.core.cohort import ClientDirectory
from strategies.core.update import ARRAYS
from strategies.core.wire import unpack_clients
from strategies.numeric.arrays import to_numpy_dict
from strategies.scaffold import CLIENT_CONTROL
from tests.runs import run_and_read

RUN = [
    "dataset=digits",
    "num_clients=6",
    "partition.min_size=20",
    "engine.clients_per_node=2",
    "engine.reduce_cohorts=false",  # FedAvg's sums then add in the same order as SCAFFOLD's
    "momentum=0",
    "plots=false",
]


def _checkpoint(run_dir: Path):
    return load_checkpoint(run_dir / "checkpoint")


def test_first_round_with_one_local_step_is_fedavg_bit_for_bit(tmp_path: Path) -> None:
    """c = cᵢ = 0 in round 1: no correction, and the weights are averaged as FedAvg does."""
    same = [*RUN, "clients_per_round=6", "local_steps=1", "num_rounds=1"]
    fedavg = run_and_read(["strategy=fedavg", *same], tmp_path / "fedavg")
    scaffold = run_and_read(["strategy=scaffold", *same], tmp_path / "scaffold")
    for key in ("accuracy", "loss", "train_loss", "fed_accuracy", "clients"):
        assert scaffold[0][key] == fedavg[0][key], key
    expected = to_numpy_dict(_checkpoint(tmp_path / "fedavg").arrays)
    found = to_numpy_dict(_checkpoint(tmp_path / "scaffold").arrays)
    assert all(expected[k].tobytes() == found[k].tobytes() for k in expected)
    assert scaffold[0]["uplink_bytes"] > fedavg[0]["uplink_bytes"]  # Δcᵢ beside the weights


def _client_controls(run_dir: Path, state_dir: Path) -> list[dict[str, np.ndarray]]:
    """Each client's cᵢ as the last checkpoint names it (zeros: none accepted yet), read from
    its kept state on disk."""
    state = _checkpoint(run_dir).strategy_state
    rounds = state[STATE_PREFIX + ROUNDS_KEY][0]
    folder = state_dir / f"run-{bytes(state[STATE_PREFIX + RUN_KEY]).decode()}"
    zeros = {k.removeprefix("c/"): np.zeros_like(v) for k, v in state.items() if k[:2] == "c/"}
    controls = []
    for client_id, named in enumerate(rounds):
        kept = KeptState(FolderStore(folder / f"client-{client_id}"), int(named), NONE, 0, False)
        controls.append(kept.get_arrays(CLIENT_CONTROL) if named != NONE else zeros)
    return controls


def _c_is_the_mean_of_the_client_controls(run_dir: Path, state_dir: Path) -> None:
    state = _checkpoint(run_dir).strategy_state
    controls = _client_controls(run_dir, state_dir)
    for name in controls[0]:
        mean = np.mean([c[name].astype(np.float64) for c in controls], axis=0)
        np.testing.assert_allclose(state[f"c/{name}"], mean, rtol=1e-5, atol=1e-6)
        assert np.abs(state[f"c/{name}"]).max() > 0


def test_with_every_client_c_is_the_mean_of_the_client_controls(tmp_path: Path) -> None:
    """cᵢ lives on the clients only (nodes reduce their cohorts): c is still their mean."""
    state_dir = tmp_path / "state"
    rows = run_and_read(
        [
            "strategy=scaffold",
            *(o for o in RUN if o != "engine.reduce_cohorts=false"),
            "clients_per_round=6",
            "num_rounds=3",
            f"engine.client_state_dir={state_dir}",
        ],
        tmp_path / "run",
    )
    assert [r["clients"] for r in rows] == [6, 6, 6]
    assert set(_checkpoint(tmp_path / "run").strategy_state[STATE_PREFIX + ROUNDS_KEY][0]) == {3}
    _c_is_the_mean_of_the_client_controls(tmp_path / "run", state_dir)


def _client_spread(strategy: str, rounds: int) -> list[float]:
    """Per round, the clients' mean distance from their average trained model, on a split
    where every client holds two classes."""
    cfg = compose_config(
        [
            f"strategy={strategy}",
            *(o for o in RUN if not o.startswith("partition.")),
            "engine.clients_per_node=1",
            "clients_per_round=6",
            "partition=pathological",
            "partition.classes_per_client=2",
            "lr=0.05",
            "local_epochs=2",
        ]
    )
    validate(cfg)
    grid, arrays = InProcessGrid(6), initial_arrays(cfg)
    server = build_strategy(cfg, ClientDirectory(6, 1))
    spreads = []
    for server_round in range(1, rounds + 1):
        messages = server.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = list(grid.send_and_receive(list(messages)))
        trained = [
            to_numpy_dict(records[ARRAYS])
            for reply in replies
            for records in unpack_clients(reply.content).values()
        ]
        mean = {k: np.mean([y[k] for y in trained], axis=0) for k in trained[0]}
        distances = [np.sqrt(sum(((y[k] - mean[k]) ** 2).sum() for k in y)) for y in trained]
        spreads.append(float(np.mean(distances)))
        arrays = server.aggregate_train(server_round, replies).arrays
    return spreads


def test_control_variates_reduce_client_drift_on_a_pathological_split() -> None:
    fedavg, scaffold = _client_spread("fedavg", 4), _client_spread("scaffold", 4)
    assert scaffold[0] == pytest.approx(fedavg[0])  # round 1: no correction yet
    assert all(s < 0.85 * f for s, f in zip(scaffold[1:], fedavg[1:], strict=True))


def test_a_client_whose_reply_was_dropped_rolls_its_control_variate_back(
    tmp_path: Path,
) -> None:
    """A dropped reply leaves the client's newer cᵢ out of c: the client starts its next round
    from the cᵢ the server's c added, so c stays the mean of the clients' cᵢ."""
    state_dir = tmp_path / "state"
    rows = run_and_read(
        [
            "strategy=scaffold",
            *RUN,
            "clients_per_round=6",
            "num_rounds=4",
            "faults.corrupt_rate=0.3",
            "faults.corrupt_kind=non-finite",
            f"engine.client_state_dir={state_dir}",
        ],
        tmp_path / "run",
    )
    assert sum(r["failures"] for r in rows) > 0
    assert all(r["failures"] == sum(r["rejected"].values()) for r in rows)  # no node failed
    assert [r["clients"] + r["failures"] for r in rows] == [6] * 4
    _c_is_the_mean_of_the_client_controls(tmp_path / "run", state_dir)
