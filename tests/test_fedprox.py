"""FedProx: μ = 0 is FedAvg bit for bit; μ > 0 keeps a client nearer the model it received."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch

import models
from models.training import TensorData
from server_app.settings import ConfigError
from server_app.testing import (
    client_context,
    configured,
    final_arrays,
    run_and_read,
    without_wall_clock,
)
from strategies.fedprox import FedProxClient

RUN = [
    "dataset=digits",
    "num_clients=6",
    "clients_per_round=4",
    "num_rounds=3",
    "partition.min_size=20",
    "engine.clients_per_node=2",
    "plots=false",
]
JOB_BYTES = ("downlink_bytes", "downlink_bpp", "total_bpp")


def test_mu_zero_equals_fedavg_bit_for_bit(tmp_path: Path) -> None:
    """Same rows (but the downlink, whose job carries mu) and the same final model's bytes."""
    fedavg = run_and_read(["strategy=fedavg", *RUN], tmp_path / "fedavg")
    fedprox = run_and_read(["strategy=fedprox", "strategy.mu=0", *RUN], tmp_path / "fedprox")
    strip = [
        {k: v for k, v in without_wall_clock(row).items() if k not in JOB_BYTES}
        for row in (*fedavg, *fedprox)
    ]
    assert strip[:3] == strip[3:]
    assert all(
        b["downlink_bytes"] > a["downlink_bytes"] for a, b in zip(fedavg, fedprox, strict=True)
    )
    expected, found = final_arrays(tmp_path / "fedavg"), final_arrays(tmp_path / "fedprox")
    assert all(expected[k].tobytes() == found[k].tobytes() for k in expected)


def _distance_after_training(mu: float) -> float:
    """‖w − w_start‖ of one client's weights after 3 epochs of local training with ``mu``."""
    ctx = client_context(["strategy=fedprox", f"strategy.mu={mu}", "dataset=digits", "lr=0.1"])
    torch.manual_seed(0)
    model = models.build_model("cnn", (1, 8, 8), 10)
    start = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(1)
    data = TensorData(torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 10)
    client = FedProxClient()
    client.prepare(ctx, model, data)
    client.train(ctx, model, data)
    pairs = zip(model.parameters(), start, strict=True)
    moved = sum(float((p.detach() - s).pow(2).sum()) for p, s in pairs)
    return moved**0.5


def test_the_proximal_term_shrinks_the_distance_to_the_global_model() -> None:
    distances = [_distance_after_training(mu) for mu in (0.0, 0.1, 1.0, 10.0)]
    assert all(far > near for far, near in pairwise(distances))
    assert distances[-1] < 0.6 * distances[0]


def test_a_negative_mu_is_refused_with_the_key_and_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"strategy.mu=-0.1: must be a number >= 0"):
        configured(["strategy=fedprox", "strategy.mu=-0.1"])
