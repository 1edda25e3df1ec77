"""Tests for the model registry and the built-in architectures."""

import pytest
import torch
from torch import nn

import models

DATASET_SHAPES = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "emnist": ((1, 28, 28), 47),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "tiny_imagenet": ((3, 64, 64), 200),
}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


BUILTINS = [
    "cnn",
    "conv10",
    "conv4",
    "conv6",
    "masked_cnn",
    "masked_conv10",
    "masked_conv4",
    "masked_conv6",
    "pfl_cnn",
    "resnet10",
    "resnet18",
    "resnet6",
    "resnet8",
    "vgg11_bn",
]
SMALL_RESNETS = {"resnet6": 19_706, "resnet8": 77_754, "resnet10": 308_538}  # params, 1x28x28
POOLS = {"conv4": 2, "conv6": 3, "conv10": 5}  # ConvX pools once per conv pair


def test_builtins_registered() -> None:
    assert models.available_models() == BUILTINS


@pytest.mark.parametrize("dataset", sorted(DATASET_SHAPES))
@pytest.mark.parametrize("name", models.available_models())
def test_forward_shape(name: str, dataset: str) -> None:
    input_shape, num_classes = DATASET_SHAPES[dataset]
    pools = POOLS.get(name.removeprefix("masked_"), 0)
    if input_shape[1] < 2**pools:
        with pytest.raises(ValueError, match=f"needs H and W of at least {2**pools}"):
            models.build_model(name, input_shape, num_classes)
        return
    model = models.build_model(name, input_shape, num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, num_classes)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(
        ValueError, match=f"unknown model 'nope'; choose one of: {', '.join(BUILTINS)}"
    ):
        models.build_model("nope", (1, 28, 28), 10)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="'cnn' is already registered"):
        models.register_model("cnn")(lambda shape, classes: nn.Identity())
    assert models.available_models() == BUILTINS


def test_invalid_num_classes_raises() -> None:
    with pytest.raises(ValueError, match="num_classes must be at least 2, got 1"):
        models.build_model("cnn", (1, 28, 28), 1)


@pytest.mark.parametrize("name", models.available_models())
def test_build_is_deterministic_under_seed(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return models.build_model(name, (3, 32, 32), 10).state_dict()

    first, second, other = build(0), build(0), build(1)
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_cnn_layer_names() -> None:
    keys = models.build_model("cnn", (1, 28, 28), 10).state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"conv1", "conv2", "fc1", "fc2"}


def test_resnet18_cifar_stem_and_size() -> None:
    model = models.build_model("resnet18", (3, 32, 32), 10)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert _num_params(model) == pytest.approx(11.17e6, rel=0.005)


@pytest.mark.parametrize(("name", "shape"), [("cnn", (1, 28, 28)), ("conv4", (3, 32, 32))])
def test_inference_runs_channels_last_and_training_is_the_plain_composition(
    name: str, shape: tuple[int, int, int]
) -> None:
    """Training computes exactly the layer-by-layer composition in PyTorch's default memory
    order (bit for bit); evaluation runs channels-last, the same function up to rounding."""
    torch.manual_seed(0)
    model = models.build_model(name, shape, 10)
    x = torch.randn(5, *shape)
    pooled: list[torch.Tensor] = []
    model.apply(
        lambda m: (
            m.register_forward_hook(lambda *args: pooled.append(args[2]))
            if isinstance(m, nn.MaxPool2d)
            else None
        )
    )

    def plain(x: torch.Tensor) -> torch.Tensor:
        if name == "cnn":
            x = model.pool(model.relu(model.conv1(x)))
            x = model.pool(model.relu(model.conv2(x)))
            return model.fc2(model.relu(model.fc1(torch.flatten(x, 1))))
        for layer in model.features:
            x = layer(x)
        return model.classifier(torch.flatten(x, 1))

    assert torch.equal(model(x), plain(x))
    assert all(p.is_contiguous() for p in pooled)
    pooled.clear()
    with torch.no_grad():
        fast = model(x)
        assert pooled and all(
            p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in pooled
        )
        torch.testing.assert_close(fast, plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL_RESNETS))
def test_small_resnet_depth_width_and_parameter_count(name: str) -> None:
    """Depth counts the stem, two 3x3 convs per block and the head (1x1 shortcuts aside); the
    widths are 16, 32, 64 (then 128), with BatchNorm after every conv."""
    model = models.build_model(name, (1, 28, 28), 10)
    depth = int(name.removeprefix("resnet"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    main_path = [c for c in convs if c.kernel_size == (3, 3)]
    assert len(main_path) + 1 == depth and isinstance(model.fc, nn.Linear)
    assert [c.out_channels for c in main_path[::2]] == [16, 16, 32, 64, 128][: (depth - 2) // 2 + 1]
    assert model.conv1.stride == (1, 1) and not any(
        isinstance(m, nn.MaxPool2d) for m in model.modules()
    )
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == len(convs)
    assert _num_params(model) == SMALL_RESNETS[name]
    assert _num_params(models.build_model(name, (3, 32, 32), 10)) == SMALL_RESNETS[name] + 2 * 144


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", sorted(SMALL_RESNETS))
def test_small_resnet_trains_one_step(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = models.build_model(name, shape, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, *shape), torch.randint(0, 10, (8,))
    logits = model(x)
    assert logits.shape == (8, 10)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    after = model.state_dict()
    for key, value in before.items():
        if key.endswith("num_batches_tracked"):
            assert int(after[key]) == int(value) + 1, key
        else:
            assert not torch.equal(after[key], value), key  # weights, BN affine and statistics
