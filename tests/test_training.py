"""The local training loop: seeded, deterministic, and honest about what it evaluates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from data.datasets import ArrayDataset
from models.training import (
    TensorData,
    evaluate,
    load_weights,
    resolve_device,
    round_seed,
    seed_torch,
    train_epochs,
)
from strategies.core.job import FULL_BATCH, ClientJob


def _data(n: int = 40) -> TensorData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8)
    y = (x.reshape(n, -1).mean(axis=1) > 127).astype(np.int64)
    return TensorData.from_arrays(ArrayDataset(x, y), (0.5,), (0.25,), torch.device("cpu"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def test_normalisation_uses_mean_and_std() -> None:
    x = np.full((1, 1, 2, 2), 255, dtype=np.uint8)
    data = TensorData.from_arrays(
        ArrayDataset(x, np.zeros(1, np.int64)), (0.5,), (0.25,), torch.device("cpu")
    )
    assert torch.allclose(data.x, torch.full((1, 1, 2, 2), 2.0))


def test_same_seed_same_weights_different_seed_different() -> None:
    results = []
    for seed in (1, 1, 2):
        model = _model()
        train_epochs(model, _data(), torch.optim.SGD(model.parameters(), lr=0.1), 2, 8, seed)
        results.append(model[1].weight.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_round_seed_is_distinct_per_round_and_client() -> None:
    seeds = {round_seed(0, r, c) for r in range(20) for c in range(50)}
    assert len(seeds) == 1000
    assert round_seed(0, 1, 2) == round_seed(0, 1, 2)
    assert round_seed(0, 1, 2) != round_seed(1, 1, 2)


def test_evaluate_counts_correct_predictions() -> None:
    data = _data()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    loss, accuracy = evaluate(model, data, batch_size=7)
    assert accuracy == pytest.approx(float((data.y == 0).float().mean()))
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(data.x), data.y))
    assert loss == pytest.approx(expected)


def test_batchnorm_model_survives_a_single_sample_last_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    data = _data(n=9)
    result = train_epochs(model, data, torch.optim.SGD(model.parameters(), lr=0.1), 1, 8, 0)
    assert np.isfinite(result.loss) and result.steps == 1  # the 1-sample batch is skipped


def _counted_training(
    model: nn.Module, data: TensorData, epochs: int, batch_size: int, seed: int, steps: int | None
) -> tuple[list[int], torch.Tensor]:
    """The batch size of every optimizer step ``train_epochs`` takes, and the trained weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs: list[int] = []
    model.register_forward_pre_hook(lambda module, args: inputs.append(len(args[0])))
    stepped: list[int] = []
    optimizer.register_step_post_hook(lambda *args: stepped.append(inputs[-1]))
    result = train_epochs(model, data, optimizer, epochs, batch_size, seed, steps=steps)
    assert result.steps == len(stepped)
    return stepped, model[1].weight.detach().clone()


@pytest.mark.parametrize("steps", [1, 3, 12])
def test_local_steps_takes_exactly_that_many_optimizer_steps(steps: int) -> None:
    """40 samples in batches of 8 make 5 batches an epoch: 12 steps run into a third epoch."""
    stepped, _ = _counted_training(_model(), _data(), 1, 8, 0, steps)
    assert stepped == [8] * steps


def test_local_steps_of_whole_epochs_equal_epoch_training() -> None:
    """Steps draw the same seeded shuffles as epochs: 2 epochs of 40/16 (16, 16, 8) = 6 steps."""
    by_epochs, epoch_weights = _counted_training(_model(), _data(), 2, 16, 3, None)
    by_steps, step_weights = _counted_training(_model(), _data(), 1, 16, 3, 6)
    assert by_epochs == by_steps == [16, 16, 8] * 2
    assert torch.equal(epoch_weights, step_weights)


def test_local_steps_same_seed_same_weights() -> None:
    results = [_counted_training(_model(), _data(), 1, 8, seed, 7)[1] for seed in (4, 4, 5)]
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_full_batch_is_one_step_per_epoch_over_the_whole_split() -> None:
    data = _data(n=37)
    job = ClientJob("fedavg", "cnn", "digits", "iid", 2, 0, batch_size=FULL_BATCH)
    stepped, _ = _counted_training(_model(), data, 3, job.batch_for(len(data)), 0, None)
    assert stepped == [37, 37, 37]
    assert ClientJob("fedavg", "cnn", "digits", "iid", 2, 0, batch_size=5).batch_for(37) == 5


def test_local_steps_stop_when_no_batch_can_train() -> None:
    """BatchNorm cannot train on one-sample batches: no step, and no endless search for one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    stepped, _ = _counted_training(model, _data(n=3), 1, 1, 0, 5)
    assert stepped == []


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")


def test_seed_torch_matches_manual_seed_on_cpu() -> None:
    torch.manual_seed(5)
    expected = torch.rand(4)
    seed_torch(5, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)


def test_load_weights_equals_load_state_dict() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    other(torch.randn(3, 1, 4, 4))  # move the BatchNorm statistics
    source = {k: v.double() for k, v in other.state_dict().items()}  # converted on copy
    load_weights(model, source)
    for name, value in model.state_dict().items():
        assert value.dtype == other.state_dict()[name].dtype
        assert torch.equal(value, other.state_dict()[name]), name


def test_load_weights_names_what_does_not_match() -> None:
    model = _model()
    weights = dict(model.state_dict())
    with pytest.raises(RuntimeError, match=r"missing \['1.bias'\], unexpected \['extra'\]"):
        load_weights(model, {"1.weight": weights["1.weight"], "extra": torch.zeros(1)})
    with pytest.raises(
        RuntimeError, match=r"1.weight has shape \(16, 2\), the model's is \(2, 16\)"
    ):
        load_weights(model, {**weights, "1.weight": torch.zeros(16, 2)})
