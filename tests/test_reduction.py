"""Cohort reduction: a node's one partial sum gives the server what its clients' replies would.

Every round here runs the real ClientApp handlers in process (``InProcessGrid``), once with
nodes replying per client and once with each node reducing its cohort, and compares the
aggregate (within the stated tolerance: float64 partial sums, so the float32 model is the same
or one unit in the last place away per entry; FedPM's counts exactly), the per-client measures
and the reasons replies were dropped (identical).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

import client_app.app as client_app
from client_app.faults import plan_faults
from server_app.experiment import initial_arrays
from server_app.inprocess import InProcessGrid
from server_app.settings import (
    ConfigError,
    build_strategy,
    cohorts_reduce,
    cohorts_unreduced_because,
    compose_config,
    validate,
)
from strategies.core.cohort import ClientDirectory, expected_nodes
from strategies.core.reduction import PARTIAL, PARTIAL_WEIGHT, is_reduced
from strategies.numeric.arrays import to_array_record, to_numpy_dict
from tests.runs import REDUCING_STRATEGIES, SHIPPED_STRATEGIES, run_and_read

REDUCING = ("fedavg", "lips", "fedpm", "topk", "signsgd")
CORRUPT_KIND = {"fedpm": "garble"}  # FedPM's reply is a byte stream: damage it as one
NUM_CLIENTS, PER_NODE = 8, 4


def _cfg(strategy: str, reduce: bool, *extra: str):
    return compose_config(
        [
            f"strategy={strategy}",
            "dataset=digits",
            "partition=iid",
            f"num_clients={NUM_CLIENTS}",
            f"clients_per_round={NUM_CLIENTS}",
            "num_rounds=3",
            "plots=false",
            f"engine.clients_per_node={PER_NODE}",
            f"engine.reduce_cohorts={str(reduce).lower()}",
            *extra,
        ]
    )


def _round(strategy: str, reduce: bool, *extra: str, server_round: int = 2, tamper=None):
    """One train round of fresh nodes (round 2: LIPS prunes, FedPM's θ is no longer flat):
    the strategy after aggregating, the new arrays and the nodes' replies (``tamper`` may
    change those before the server reads them)."""
    cfg = _cfg(strategy, reduce, *extra)
    grid = InProcessGrid(expected_nodes(NUM_CLIENTS, PER_NODE))
    built = build_strategy(cfg, ClientDirectory(NUM_CLIENTS, PER_NODE))
    built.directory.wait_for_nodes(grid)
    messages = built.configure_train(server_round, initial_arrays(cfg), ConfigRecord(), grid)
    replies = grid.send_and_receive(messages)
    if tamper is not None:
        tamper(replies)
    arrays, _ = built.aggregate_train(server_round, replies)
    return built, arrays, replies


def _assert_within_one_ulp(reduced: dict, unreduced: dict) -> None:
    """Same names, dtypes and shapes; floats equal or one float32 step apart, the rest equal."""
    assert list(reduced) == list(unreduced)
    for name, a in reduced.items():
        b = unreduced[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        steps = np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))
        assert steps.max(initial=0) <= 1 or np.allclose(a, b, rtol=0, atol=1e-30), name


def _per_client(strategy) -> dict[int, tuple]:
    return {
        u.client_id: (u.num_examples, dict(u.metrics), u.delta_norms, u.stats)
        for u in strategy.last_updates
    }


def _without_seconds(values: dict) -> dict:
    """``values`` without wall times (keys ending in ``_s`` or ``-s``)."""
    return {k: v for k, v in values.items() if not k.endswith(("_s", "-s"))}


@pytest.mark.parametrize("strategy", REDUCING)
def test_reduced_cohorts_aggregate_like_per_client_replies(strategy: str) -> None:
    """With a share of replies corrupted inside the cohorts, both ways drop the same clients
    under the same reasons, count the same bytes, and agree on the model within tolerance."""
    faults = [
        "faults.corrupt_rate=0.3",
        f"faults.corrupt_kind={CORRUPT_KIND.get(strategy, 'non-finite')}",
    ]
    reduced, reduced_arrays, replies = _round(strategy, True, *faults)
    unreduced, unreduced_arrays, plain = _round(strategy, False, *faults)
    assert all(is_reduced(r.content) for r in replies) and not any(
        is_reduced(r.content) for r in plain
    )
    assert sum(reduced.stats.rejected.values()) >= 1  # the seed corrupts someone
    assert reduced.stats.to_metrics()["rejected"] == unreduced.stats.to_metrics()["rejected"]
    for key in ("clients", "failures", "uplink_bytes", "downlink_bytes", "train_loss"):
        assert getattr(reduced.stats, key) == getattr(unreduced.stats, key), key
    assert _per_client(reduced).keys() == _per_client(unreduced).keys()
    for client_id, (n, metrics, norms, stats) in _per_client(unreduced).items():
        r_n, r_metrics, r_norms, r_stats = _per_client(reduced)[client_id]
        assert (r_n, r_norms) == (n, norms)
        assert _without_seconds(r_metrics) == _without_seconds(metrics)
        assert _without_seconds(r_stats) == _without_seconds(stats)
    if strategy == "fedpm":  # counts of ones: exact
        assert to_numpy_dict(reduced_arrays).keys() == to_numpy_dict(unreduced_arrays).keys()
        for name, values in to_numpy_dict(reduced_arrays).items():
            np.testing.assert_array_equal(values, to_numpy_dict(unreduced_arrays)[name])
    else:
        _assert_within_one_ulp(to_numpy_dict(reduced_arrays), to_numpy_dict(unreduced_arrays))
    assert _without_seconds(reduced.round_metrics(2)) == _without_seconds(
        unreduced.round_metrics(2)
    )


def test_lbgm_and_a_weight_cap_keep_per_client_replies() -> None:
    """LBGM decodes against the server's look-back gradients, and max_client_weight judges
    every claim against the round's median: neither job asks the nodes to reduce."""
    lbgm, _, replies = _round("lbgm", True, server_round=1)
    assert not lbgm.job.reduce_cohorts and not any(is_reduced(r.content) for r in replies)
    capped, _, replies = _round("fedavg", True, "max_client_weight=10", server_round=1)
    assert not capped.job.reduce_cohorts and not any(is_reduced(r.content) for r in replies)
    one_per_node = build_strategy(
        compose_config(["engine.clients_per_node=1"]), ClientDirectory(NUM_CLIENTS, 1)
    )
    assert not one_per_node.job.reduce_cohorts  # deployment's one client per node: unchanged


@pytest.mark.parametrize("strategy", ["fedavg", "fedpm"])
def test_a_cohort_whose_every_reply_is_dropped_contributes_nothing(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 0's four clients all send corrupt replies: its reduced reply carries an empty
    partial sum of weight 0, and the model is node 1's clients' alone, as without reduction."""
    kind = CORRUPT_KIND.get(strategy, "non-finite")

    def node_zero_corrupt(job, client_id):
        return replace(plan_faults(job, client_id), corrupt=kind if client_id < PER_NODE else None)

    monkeypatch.setattr(client_app, "plan_faults", node_zero_corrupt)
    reduced, reduced_arrays, replies = _round(strategy, True)
    unreduced, unreduced_arrays, _ = _round(strategy, False)
    first = next(r for r in replies if r.content[PARTIAL_WEIGHT]["weight"] == 0)
    assert len(first.content[PARTIAL]) == 0
    assert reduced.stats.clients == unreduced.stats.clients == NUM_CLIENTS - PER_NODE
    assert sum(reduced.stats.rejected.values()) == PER_NODE
    assert reduced.stats.rejected == unreduced.stats.rejected
    _assert_within_one_ulp(to_numpy_dict(reduced_arrays), to_numpy_dict(unreduced_arrays))


def test_a_cohort_that_fails_contributes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that raises fails its node's whole message, reduced or not: its cohort counts
    as failures and the other node's partial sum is the round's aggregate."""

    def client_zero_fails(job, client_id):
        return replace(plan_faults(job, client_id), error=client_id == 0)

    monkeypatch.setattr(client_app, "plan_faults", client_zero_fails)
    reduced, reduced_arrays, _ = _round("fedavg", True)
    unreduced, unreduced_arrays, _ = _round("fedavg", False)
    assert reduced.stats.failures == unreduced.stats.failures == PER_NODE
    assert reduced.stats.clients == NUM_CLIENTS - PER_NODE
    _assert_within_one_ulp(to_numpy_dict(reduced_arrays), to_numpy_dict(unreduced_arrays))


def test_a_reduced_reply_to_a_round_that_does_not_reduce_is_dropped_whole() -> None:
    """A partial sum the server cannot merge (here: LBGM, which aggregates per client) drops
    the node's cohort under ``reduction``, and the round goes on."""
    strategy, _, _ = _round("fedavg", True, server_round=1)
    lbgm = build_strategy(_cfg("lbgm", True), ClientDirectory(NUM_CLIENTS, PER_NODE))
    grid = InProcessGrid(expected_nodes(NUM_CLIENTS, PER_NODE))
    lbgm.directory.wait_for_nodes(grid)
    messages = list(
        lbgm.configure_train(1, initial_arrays(_cfg("lbgm", True)), ConfigRecord(), grid)
    )
    for message in messages:  # every node answers as a reducing FedAvg node would
        cohort = lbgm.engine._sent[message.metadata.dst_node_id]
        message.content["config"] = strategy.train_job(1, cohort).to_record()
    replies = grid.send_and_receive(messages)
    assert all(is_reduced(r.content) for r in replies)
    arrays, _ = lbgm.aggregate_train(1, replies)
    assert arrays is None
    assert lbgm.stats.rejected == {"reduction": NUM_CLIENTS}


def test_k8_and_k1_runs_report_the_same_metrics_within_tolerance(tmp_path: Path) -> None:
    """A whole FedAvg run hosting all 8 clients on one reducing node and one with a node per
    client: same bytes and counts exactly; accuracy and losses equal to float rounding."""
    rows = {}
    for k in (1, 8):
        run = run_and_read(
            [
                "dataset=digits",
                "num_clients=8",
                "clients_per_round=8",
                "num_rounds=3",
                "plots=false",
                f"engine.clients_per_node={k}",
            ],
            tmp_path / f"k{k}",
        )
        rows[k] = [_without_seconds(row) for row in run]
    for one, eight in zip(rows[1], rows[8], strict=True):
        for key, value in one.items():
            if isinstance(value, float):
                assert eight[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
            elif key.startswith("layer_"):
                assert eight[key] == pytest.approx(value, rel=1e-4), key
            else:
                assert eight[key] == value, key


def test_reduce_cohorts_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"engine\.reduce_cohorts='yes'.*true or false"):
        validate(compose_config(["engine.reduce_cohorts=yes"]))


def test_auto_cohorts_are_not_capped_by_the_model_when_they_reduce() -> None:
    """A reduced reply is one partial sum whatever K, so ``auto`` needs no model-size cap;
    LBGM (per-client replies) keeps it."""
    assert cohorts_reduce(compose_config(["strategy=fedavg"]))
    assert not cohorts_reduce(compose_config(["strategy=lbgm"]))
    assert not cohorts_reduce(compose_config(["engine.reduce_cohorts=false"]))
    assert not cohorts_reduce(compose_config(["max_client_weight=10"]))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["strategy=fedavg"], ""),
        (["strategy=lbgm"], "lbgm: decoding needs the server's look-back gradients"),
        (["strategy=scaffold"], ""),  # cᵢ lives on the clients: its sums reduce
        (["engine.reduce_cohorts=false"], "engine.reduce_cohorts=false"),
        (["max_client_weight=10"], "max_client_weight judges every claim"),
    ],
)
def test_a_run_whose_cohorts_cannot_reduce_says_why(overrides: list[str], reason: str) -> None:
    cfg = compose_config(overrides)
    because = cohorts_unreduced_because(cfg)
    assert because.startswith(reason) and bool(because) != cohorts_reduce(cfg)


@pytest.mark.parametrize("strategy", SHIPPED_STRATEGIES)
def test_every_shipped_strategy_reduces_or_says_why(strategy: str) -> None:
    cfg = compose_config([f"strategy={strategy}"])
    assert cohorts_reduce(cfg) or cohorts_unreduced_because(cfg).startswith(f"{strategy}: ")


@pytest.mark.parametrize("strategy", REDUCING_STRATEGIES)
def test_a_partial_sum_that_does_not_fit_drops_its_node_whole(strategy: str) -> None:
    """A partial sum missing an array, or of another shape, drops the node's cohort under
    ``partial`` (not a crash in the aggregate); the other node's sum is the round's."""

    def cut_one_array(replies) -> None:
        partial = replies[0].content[PARTIAL]
        name = next(iter(partial.keys()))
        arrays = to_numpy_dict(partial)
        arrays[name] = arrays[name].reshape(-1)[:-1]
        replies[0].content[PARTIAL] = to_array_record(arrays)

    tampered, arrays, _ = _round(strategy, True, tamper=cut_one_array)
    assert tampered.stats.rejected == {"partial": PER_NODE}
    assert tampered.stats.clients == NUM_CLIENTS - PER_NODE and arrays is not None
