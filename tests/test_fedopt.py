"""FedAdam, FedYogi, FedAdagrad: the server's step is the paper's formula on the weighted mean's
change, its optimizer state survives a resume exactly, and nodes still reduce their cohorts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import strategies
from server_app.settings import ConfigError
from server_app.testing import (
    Federation,
    build_server,
    configured,
    final_arrays,
    load_checkpoint,
    run_and_read,
    without_wall_clock,
)
from strategies.api import ARRAYS, parameter_shapes, to_numpy_dict
from strategies.core.update import METRICS
from strategies.core.wire import unpack_clients

VARIANTS = ["fedadam", "fedyogi", "fedadagrad"]
RUN = [
    "dataset=digits",
    "num_clients=6",
    "clients_per_round=4",
    "partition.min_size=20",
    "engine.clients_per_node=2",
    "plots=false",
]


def _by_hand(variant: str, eta: float, tau: float, beta_1: float, beta_2: float):
    """One round's step of ``variant`` as the paper writes it (Reddi et al. 2021, Algorithm 2),
    from the weighted mean ``mean`` and the global ``x``, with moments ``m``, ``v`` (None: the
    first round: m = 0, v = τ²)."""

    def step(x, mean, m, v):
        delta = mean.astype(np.float64) - x.astype(np.float64)
        m = (1 - beta_1) * delta + (0.0 if m is None else beta_1 * m)
        v = np.full(x.shape, tau**2) if v is None else v
        if variant == "fedadam":
            v = beta_2 * v + (1 - beta_2) * delta**2
        elif variant == "fedyogi":
            v = v - (1 - beta_2) * delta**2 * np.sign(v - delta**2)
        else:
            v = v + delta**2
        return x + eta * m / (np.sqrt(v) + tau), m, v

    return step


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_rounds_take_the_papers_step_on_the_weighted_mean(variant: str) -> None:
    """Three clients, one per node (every reply travels): the new global parameters are the
    hand-computed step from Σ n_c θ_c / Σ n_c; buffers would take the mean."""
    federation = Federation([f"strategy={variant}", "dataset=digits", "num_clients=3"])
    params = federation.server.params
    beta_2 = getattr(params, "beta_2", 0.0)
    step = _by_hand(variant, params.eta, params.tau, params.beta_1, beta_2)
    layers = parameter_shapes(federation.server.job)
    moments: dict[str, tuple] = {name: (None, None) for name in layers}
    for server_round in (1, 2):
        x = to_numpy_dict(federation.arrays)
        replies = federation.send(server_round)
        clients = [r for reply in replies for r in unpack_clients(reply.content).values()]
        weights = [float(c[METRICS]["num-examples"]) for c in clients]
        trained = [to_numpy_dict(c[ARRAYS]) for c in clients]
        found = to_numpy_dict(federation.aggregate(server_round, replies).arrays)
        for name in layers:
            mean = sum(
                w * t[name].astype(np.float64) for w, t in zip(weights, trained, strict=True)
            )
            mean = (mean / sum(weights)).astype(np.float32)
            expected, *moments[name] = step(x[name], mean, *moments[name])
            np.testing.assert_allclose(found[name], expected, rtol=1e-6, atol=1e-7, err_msg=name)
        assert set(found) == set(layers)  # the cnn has no buffers


def test_fedadagrad_has_no_beta_2_and_bad_values_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameters \['beta_2'\]"):
        configured(["strategy=fedadagrad", "+strategy.beta_2=0.9"])
    with pytest.raises(ConfigError, match=r"strategy.eta=0: must be a number > 0"):
        configured(["strategy=fedadam", "strategy.eta=0"])
    with pytest.raises(ConfigError, match=r"strategy.beta_2=1: must be in \[0, 1\)"):
        configured(["strategy=fedyogi", "strategy.beta_2=1"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_nodes_still_reduce_their_cohorts(variant: str) -> None:
    assert strategies.get_algorithm(variant).cohort_sum is not None
    assert build_server([f"strategy={variant}", *RUN]).job.reduce_cohorts


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    """Cohorts of 2, reduced; stopped after round 2 of 4: the same rows (but wall clocks) and
    the same final model's bytes, because m and v are checkpointed."""
    run = ["strategy=fedadam", *RUN]
    straight = run_and_read([*run, "num_rounds=4"], tmp_path / "straight")
    run_and_read([*run, "num_rounds=2"], tmp_path / "split")
    resumed = run_and_read([*run, "num_rounds=4", "resume=true"], tmp_path / "split")
    assert [without_wall_clock(r) for r in resumed] == [without_wall_clock(r) for r in straight]
    state = load_checkpoint(tmp_path / "split" / "checkpoint").strategy_state
    assert {k.split("/")[0] for k in state} == {"m", "v"}
    expected, found = final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split")
    assert all(expected[k].tobytes() == found[k].tobytes() for k in expected)
