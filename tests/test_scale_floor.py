"""The scale benchmark's per-strategy compute floors (benchmarks/scale/floor.py), in process."""

from __future__ import annotations

import pytest
import torch

from benchmarks.scale import strategy_floors
from benchmarks.scale.floor import STRATEGIES, Setup, floor_of, strategy_params
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
    setup = Setup(Work(20, dataset="digits"), strategy, 2, params)
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
