"""FedProx: μ = 0 is FedAvg bit for bit; μ > 0 keeps a client nearer the model it received."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

import models
from client_app.app import client_context
from models.training import TensorData
from server_app.checkpoint import load_checkpoint
from server_app.results import without_wall_clock
from server_app.settings import ConfigError, client_job, compose_config, validate
from strategies.fedprox import FedProxClient
from strategies.numeric.arrays import to_numpy_dict
from tests.runs import run_and_read

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


def _final_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    return to_numpy_dict(load_checkpoint(run_dir / "checkpoint").arrays)


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
    expected, found = _final_arrays(tmp_path / "fedavg"), _final_arrays(tmp_path / "fedprox")
    assert all(expected[k].tobytes() == found[k].tobytes() for k in expected)


def _distance_after_training(mu: float) -> float:
    """‖w − w_start‖ of one client's weights after 3 epochs of local training with ``mu``."""
    cfg = compose_config(["strategy=fedprox", f"strategy.mu={mu}", "dataset=digits", "lr=0.1"])
    job = client_job(cfg).for_round(1, [0])
    torch.manual_seed(0)
    model = models.build_model("cnn", (1, 8, 8), 10)
    start = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(1)
    data = TensorData(torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 10)
    ctx = client_context(RecordDict(), job, 0, None)
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
        validate(compose_config(["strategy=fedprox", "strategy.mu=-0.1"]))
