"""LIPS: schedule, layer choice, exact per-layer density, score modes, and d0=1 == FedAvg."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict
from torch import nn

import models
from client_app.app import client_context
from models.training import TensorData
from server_app.results import read_metrics
from server_app.settings import ConfigError, build_strategy, compose_config
from strategies.core.cohort import ClientDirectory
from strategies.core.job import ClientJob
from strategies.lips import (
    LipsClient,
    layer_scores,
    lips_density,
    prunable_layers,
    prune_top,
    sparse_round,
)
from tests.runs import run_and_read

TOY_RUN = [
    "dataset=digits",
    "num_clients=4",
    "clients_per_round=4",
    "num_rounds=3",
    "plots=false",
    "federated_eval=false",
]


def test_schedule_fires_on_rounds_two_plus_multiples_of_the_period() -> None:
    assert [r for r in range(1, 23) if sparse_round(r, 5)] == [2, 7, 12, 17, 22]
    assert [r for r in range(1, 6) if sparse_round(r, 1)] == [2, 3, 4, 5]


def test_density_rises_linearly_to_one() -> None:
    assert lips_density(2, 5, 0.5, 100) == 0.5
    assert lips_density(7, 5, 0.5, 100) == pytest.approx(0.525)
    assert lips_density(3, 5, 0.5, 100) == 1.0  # dense round
    assert lips_density(302, 5, 0.5, 100) == 1.0  # capped
    assert lips_density(52, 5, 0.2, 50) == 1.0


def test_middle_layers_by_position() -> None:
    cnn = models.build_model("cnn", (1, 28, 28), 10)
    assert prunable_layers(cnn, include_shortcuts=True) == ["conv2.weight", "fc1.weight"]
    resnet = models.build_model("resnet18", (3, 32, 32), 10)
    with_shortcuts = prunable_layers(resnet, include_shortcuts=True)
    without = prunable_layers(resnet, include_shortcuts=False)
    assert "conv1.weight" not in with_shortcuts and "fc.weight" not in with_shortcuts
    assert "layer1.0.conv1.weight" in with_shortcuts  # a 3×3 stem is excluded by position
    shortcuts = [n for n in with_shortcuts if "downsample" in n]
    assert len(shortcuts) == 3 and not set(shortcuts) & set(without)
    assert len(with_shortcuts) == 19 and len(without) == 16


def test_small_resnet_middle_layers_are_the_block_and_shortcut_convs() -> None:
    """resnet8's middle layers are the code's eight ResNet8 tensors: both convs of the three
    blocks and the two 1x1 shortcuts; stem, head and BatchNorm stay dense."""
    model = models.build_model("resnet8", (1, 28, 28), 10)
    blocks = [f"layer{s}.0.conv{c}.weight" for s in (1, 2, 3) for c in (1, 2)]
    shortcuts = ["layer2.0.downsample.0.weight", "layer3.0.downsample.0.weight"]
    assert sorted(prunable_layers(model, include_shortcuts=True)) == sorted(blocks + shortcuts)
    assert prunable_layers(model, include_shortcuts=False) == blocks


def test_sparse_round_prunes_a_small_resnet_and_keeps_batchnorm(tmp_path: Path) -> None:
    """A pruned resnet8 start trains under both BN policies; under ``local`` the clients' own
    BatchNorm changes round 2."""
    for policy in ("global", "local"):
        lips = ["strategy=lips", "strategy.period=1", "strategy.d0=0.5", "num_rounds=2"]
        rows = run_and_read(
            [*TOY_RUN, *lips, "model=resnet8", f"bn_policy={policy}"], tmp_path / policy
        )
        assert rows[1]["lips_sparse"] and len(rows[1]["lips_pruned"]) == 8
        assert all(v == pytest.approx(0.5, abs=0.01) for v in rows[1]["lips_pruned"].values())
        assert all(math.isfinite(r["loss"]) and r["accuracy"] > 0.1 for r in rows)
    global_bn, local_bn = (_accuracies(tmp_path / policy) for policy in ("global", "local"))
    assert global_bn[0] == local_bn[0] and global_bn[1] != local_bn[1]  # own BN from round 2


def _job(density: float, score: str = "sensitivity", **params) -> ClientJob:
    return ClientJob(
        algorithm="lips",
        model="cnn",
        dataset="digits",
        partition="iid",
        num_clients=2,
        seed=0,
        batch_size=16,
        server_round=2,
        params={"density": density, "score": score, "include_shortcuts": True, **params},
    )


def _train_data(n: int = 64) -> TensorData:
    generator = torch.Generator().manual_seed(0)
    return TensorData(
        torch.randn(n, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )


@pytest.mark.parametrize("score", ["sensitivity", "magnitude", "random"])
@pytest.mark.parametrize("density", [0.3, 0.5, 0.77])
def test_pruned_layers_hold_exactly_floor_d_numel_nonzeros(score: str, density: float) -> None:
    torch.manual_seed(0)
    model = models.build_model("cnn", (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    client = LipsClient()
    client.prepare(
        client_context(RecordDict(), _job(density, score), 0, None), model, _train_data()
    )
    after = model.state_dict()
    for name in ("conv2.weight", "fc1.weight"):
        assert int((after[name] != 0).sum()) == math.floor(density * after[name].numel())
        kept = after[name] != 0
        assert torch.equal(after[name][kept], before[name][kept])  # survivors are untouched
        assert client.pruned[name] == pytest.approx(
            1 - math.floor(density * kept.numel()) / kept.numel()
        )
    for name in ("conv1.weight", "conv1.bias", "conv2.bias", "fc2.weight", "fc2.bias"):
        assert torch.equal(after[name], before[name]), name


def test_dense_round_leaves_the_model_alone() -> None:
    model = models.build_model("cnn", (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    LipsClient().prepare(client_context(RecordDict(), _job(1.0), 0, None), model, _train_data())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _tiny() -> nn.Module:
    model = nn.Sequential(
        nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[1].weight.copy_(torch.tensor([[4.0, -1.0], [0.5, -3.0]]))
        model[2].weight.copy_(torch.eye(2))
    return model


def test_magnitude_keeps_the_largest_weights() -> None:
    model = _tiny()
    scores = layer_scores(model, ["1.weight"], "magnitude", None, torch.Generator())
    prune_top(model, scores, 0.5)
    assert model[1].weight.tolist() == [[4.0, 0.0], [0.0, -3.0]]


def test_sensitivity_keeps_the_largest_gradient_times_weight() -> None:
    model = _tiny()
    batch = TensorData(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    model.zero_grad()
    nn.functional.cross_entropy(model(batch.x), batch.y).backward()
    expected = (model[1].weight.grad * model[1].weight).abs().detach()
    model.zero_grad()
    scores = layer_scores(model, ["1.weight"], "sensitivity", batch, torch.Generator())
    assert torch.allclose(scores["1.weight"], expected)
    assert float(expected[:, 1].abs().sum()) == 0.0  # input column 1 is 0: no gradient there
    prune_top(model, scores, 0.5)
    assert model[1].weight.tolist() == [[4.0, 0.0], [0.5, 0.0]]
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind


def test_random_scores_are_seeded() -> None:
    model = _tiny()
    first = layer_scores(model, ["1.weight"], "random", None, torch.Generator().manual_seed(3))
    again = layer_scores(model, ["1.weight"], "random", None, torch.Generator().manual_seed(3))
    other = layer_scores(model, ["1.weight"], "random", None, torch.Generator().manual_seed(4))
    assert torch.equal(first["1.weight"], again["1.weight"])
    assert not torch.equal(first["1.weight"], other["1.weight"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.period=0", "strategy.period"),
        ("strategy.d0=0", "strategy.d0"),
        ("strategy.d0=1.5", "strategy.d0"),
        ("strategy.score=lowk", "strategy.score"),
        ("strategy.horizon=0", "strategy.horizon"),
    ],
)
def test_bad_lips_parameters_name_the_key(override: str, key: str) -> None:
    cfg = compose_config(["strategy=lips", override])
    with pytest.raises(ConfigError, match=key):
        build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))


def test_horizon_defaults_to_num_rounds() -> None:
    cfg = compose_config(["strategy=lips", "num_rounds=40"])
    assert build_strategy(cfg, ClientDirectory(cfg.num_clients, 1)).horizon == 40


def _accuracies(run_dir: Path) -> list[float]:
    return [row["accuracy"] for row in read_metrics(run_dir)]


def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_and_read([*TOY_RUN, *overrides], tmp_path / name)
    return tmp_path / name


def test_lips_at_density_one_equals_fedavg_bit_for_bit(tmp_path: Path) -> None:
    fedavg = _run(tmp_path, "fedavg", "strategy=fedavg")
    lips = _run(tmp_path, "lips", "strategy=lips", "strategy.d0=1.0", "strategy.period=1")
    assert _accuracies(lips) == _accuracies(fedavg)


def test_sparse_rounds_change_the_run_and_are_reported(tmp_path: Path) -> None:
    fedavg = _run(tmp_path, "fedavg", "strategy=fedavg")
    lips = _run(tmp_path, "lips", "strategy=lips", "strategy.d0=0.3", "strategy.period=1")
    rows = read_metrics(lips)
    assert [r["lips_sparse"] for r in rows] == [False, True, True]
    assert rows[1]["lips_density"] == pytest.approx(0.3)
    assert rows[1]["lips_pruned"] == {
        "conv2.weight": pytest.approx(0.7, abs=1e-3),
        "fc1.weight": pytest.approx(0.7, abs=1e-3),
    }
    assert _accuracies(lips)[0] == _accuracies(fedavg)[0]  # round 1 is dense
    assert _accuracies(lips)[1:] != _accuracies(fedavg)[1:]
