"""The scale benchmark's per-strategy compute floors (benchmarks/scale/floor.py), in process."""

from __future__ import annotations

import pytest
import torch

from benchmarks.scale import strategy_floors
from benchmarks.scale.device_work import DeviceWork
from benchmarks.scale.floor import STRATEGIES, Setup, floor_of, strategy_params, summary_line
from benchmarks.scale.gpu_busy import BusySampler
from benchmarks.scale.work import Work


@pytest.mark.parametrize(
    ("strategy", "settings"),
    [*((s, {}) for s in STRATEGIES), ("fedpm", {"uplink_coding": "klms"})],
    ids=[*STRATEGIES, "fedpm-klms"],
)
def test_floor_rounds_give_a_finite_model_of_the_same_shapes(
    strategy: str, settings: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds of three clients in two shares: round 2 is LIPS's first sparse round and
    LBGM's first look-back check; error feedback and LBGs carry over from round 1; FedPM's
    KLMS floor decodes the candidates it chose."""
    monkeypatch.setattr(strategy_floors, "RESIDUALS", {})
    monkeypatch.setattr(strategy_floors, "LBGS", {})
    params = {**strategy_params(strategy), **settings}
    setup = Setup(DeviceWork(20, dataset="digits"), strategy, 2, params)
    floor = floor_of(setup)
    before = {name: value.clone() for name, value in floor.model.state_dict().items()}
    for server_round in (1, 2):
        payload = floor.payload()
        for share in ([0, 2], [1]):
            floor.fold(floor.share(setup, share, payload, server_round))
        floor.step(server_round)
    after = floor.model.state_dict()
    assert {n: (v.shape, v.dtype) for n, v in after.items()} == {
        n: (v.shape, v.dtype) for n, v in before.items()
    }
    assert all(torch.isfinite(value).all() for value in after.values())
    assert any(not torch.equal(after[name], before[name]) for name in before)


def test_resident_round_is_the_shared_round_on_the_device() -> None:
    """On the CPU the resident floor's one share of every client gives the model the worker
    shares give (FedAvg: float64 sums added, then one division)."""
    models = []
    for shares in ([[0, 1, 2]], [[0, 2], [1]]):
        setup = Setup(DeviceWork(20, dataset="digits"), "fedavg", 1, strategy_params("fedavg"))
        floor = floor_of(setup)
        payload = floor.payload()
        for share in shares:
            floor.fold(floor.share(setup, share, payload, 1))
        floor.step(1)
        models.append(floor.model.state_dict())
    for name, value in models[0].items():
        torch.testing.assert_close(value, models[1][name], rtol=1e-6, atol=1e-7)


def test_device_work_trains_as_work_on_the_cpu() -> None:
    """DeviceWork on the CPU: the same shard, the same local round, the same accuracy."""
    plain, device = Work(20, dataset="digits"), DeviceWork(20, dataset="digits")
    assert torch.equal(plain.train_set(3).x, device.train_set(3).x)
    trained = []
    for work in (plain, device):
        model = work.new_model()
        assert work.train_client(model, 3, 1) == len(plain.train_set(3))
        trained.append((model.state_dict(), work.central_accuracy(model)))
    assert trained[0][1] == trained[1][1]
    assert all(torch.equal(v, trained[1][0][k]) for k, v in trained[0][0].items())


def test_summary_line_times_the_rounds_after_the_first_and_their_busy_share() -> None:
    sampler = BusySampler(read=lambda: None)
    sampler.samples = [(0.5, 100.0), (1.5, 40.0), (2.5, 60.0), (7.5, 100.0)]
    line = summary_line("cuda-free", [0.0, 1.0, 3.0, 3.0 + 4.0], sampler)
    assert "median 3.00 s/round over 2 rounds after the first" in line
    assert "GPU busy 50%" in line  # the readings at 1.5 and 2.5 s; not round 1's, not after
    assert summary_line("cpu", [0.0, 1.0], None).startswith("[floor cpu] median nan s/round")
