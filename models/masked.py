"""Supermask layers and networks for FedPM: frozen random weights, trainable mask scores.

Every masked layer holds a frozen weight and bias, each entry ±c with c = e·√(1/fan_in)
(the signed-constant init of the FedPM code), and trainable scores of the same shapes
(init N(0, 1)). The mask probability is σ(score); biases are masked too.

The frozen values are *non-persistent* buffers: they never enter ``state_dict`` (so they can
never be shipped or checkpointed by accident) and are rebuilt from an integer weight seed,
layer by layer in module order, with a dedicated numpy generator (:func:`seed_weights`).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.cnn import SmallCNN
from models.conv import CONV_WIDTHS, ConvStack
from models.registry import register_model

ESTIMATORS = ("scaled", "ste")
DEFAULT_WEIGHT_SEED = 0  # weight seed of models built by name through models.build_model


class MaskRNG:
    """The seeded uniforms behind mask draws, made where the masks live.

    On CPU a numpy PCG64 generator fills float32 uniforms ~2x faster than ``torch.rand`` (whose
    CPU generator is a Mersenne Twister drawn entry by entry), and FedPM draws a fresh mask for
    every parameter on every forward pass; on an accelerator ``torch.rand`` runs there, with
    its own generator. Same seed and device, same stream; the stream differs between devices.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self._numpy: np.random.Generator | None = None
        self._torch: torch.Generator | None = None
        if device.type == "cpu":
            self._numpy = np.random.Generator(np.random.PCG64(seed))
        else:
            self._torch = torch.Generator(device=device).manual_seed(seed)

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        """U[0, 1) draws shaped like ``like``, in its dtype and on its device."""
        if self._numpy is not None:
            values = torch.from_numpy(self._numpy.random(tuple(like.shape), dtype=np.float32))
            return values.to(device=like.device, dtype=like.dtype)
        return torch.rand(like.shape, generator=self._torch, dtype=like.dtype, device=like.device)


def draw_mask(p: torch.Tensor, rng: MaskRNG | None = None) -> torch.Tensor:
    """m ~ Bern(p) entry-wise, as 1[u < p] with u ~ U[0, 1) (same dtype and device as ``p``).

    The same distribution as ``torch.bernoulli(p)``, whose CPU kernel costs ~2x more than the
    comparison. The comparison is written into ``u`` itself (one pass, no boolean copy).
    Without ``rng`` the uniforms come from torch's global generator (as dropout's do).
    """
    return _uniform(p, rng).lt_(p)


def draw_bool_mask(p: torch.Tensor, rng: MaskRNG | None = None) -> torch.Tensor:
    """The mask :func:`draw_mask` draws from the same generator state, as a bool tensor."""
    return _uniform(p, rng) < p


def _uniform(p: torch.Tensor, rng: MaskRNG | None) -> torch.Tensor:
    if rng is not None:
        return rng.uniform(p)
    return torch.rand(p.shape, dtype=p.dtype, device=p.device)


class BernoulliSample(torch.autograd.Function):
    """m ~ Bern(p) going forward; backward passes p·grad (``scaled``) or grad (``ste``).

    ``scaled`` is the FedPM code's estimator, so dL/dscore = p²(1−p)·dL/dm; ``ste`` is the
    plain straight-through estimator, a documented deviation.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, scaled: bool, rng: MaskRNG | None):
        ctx.scaled = scaled
        if scaled:
            ctx.save_for_backward(p)
        return draw_mask(p, rng)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.scaled:
            (p,) = ctx.saved_tensors
            grad = grad * p
        return grad, None, None


class MaskedLayer(nn.Module):
    """Shared mask logic: sample a fresh mask per forward in training, threshold in eval.

    In eval mode the mask is 1[σ(score) > 0.5] unless :func:`sampled_masks` asks for draws.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, weight_shape: tuple[int, ...], out_features: int, fan_in: int) -> None:
        super().__init__()
        self.fan_in = fan_in
        self.register_buffer("weight", torch.zeros(weight_shape), persistent=False)
        self.register_buffer("bias", torch.zeros(out_features), persistent=False)
        self.weight_score = nn.Parameter(torch.randn(weight_shape))
        self.bias_score = nn.Parameter(torch.randn(out_features))
        self.estimator = "scaled"
        self.sample_in_eval = False
        self.rng: MaskRNG | None = None

    @property
    def constant(self) -> float:
        """c = e·√(1/fan_in), the magnitude of every frozen weight and bias."""
        return math.e * math.sqrt(1.0 / self.fan_in)

    def mask(self, score: torch.Tensor) -> torch.Tensor:
        """The mask applied in this forward pass."""
        if not self.training and not self.sample_in_eval:
            return (score > 0).to(score.dtype)  # σ(score) > 0.5
        scaled = self.estimator == "scaled"
        return BernoulliSample.apply(torch.sigmoid(score), scaled, self.rng)

    def masked_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight * self.mask(self.weight_score), self.bias * self.mask(self.bias_score)


class MaskedLinear(MaskedLayer):
    """A linear layer whose frozen weights are gated by a Bernoulli mask."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__((out_features, in_features), out_features, fan_in=in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.masked_params())


class MaskedConv2d(MaskedLayer):
    """A 3×3 'same' convolution whose frozen weights are gated by a Bernoulli mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        super().__init__(shape, out_channels, fan_in=in_channels * kernel_size**2)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, *self.masked_params(), padding=self.padding)


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedLayer]]:
    """The model's masked layers in module order (the order weights are drawn in)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedLayer)]


def seed_weights(model: nn.Module, weight_seed: int) -> None:
    """Fill every frozen weight and bias with ±c signs drawn from ``weight_seed``."""
    rng = np.random.default_rng(weight_seed)
    with torch.no_grad():
        for _, layer in masked_layers(model):
            for tensor in (layer.weight, layer.bias):
                signs = rng.integers(0, 2, size=tuple(tensor.shape), dtype=np.int8) * 2 - 1
                values = torch.from_numpy(signs.astype(np.float32) * np.float32(layer.constant))
                tensor.copy_(values)


def weight_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every frozen weight and bias, names and shapes included."""
    digest = hashlib.sha256()
    for name, layer in masked_layers(model):
        for label, tensor in (("weight", layer.weight), ("bias", layer.bias)):
            values = tensor.detach().cpu().contiguous().numpy().astype("<f4")
            digest.update(f"{name}.{label}{tuple(values.shape)}".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def set_estimator(model: nn.Module, estimator: str) -> None:
    """Use the ``scaled`` or ``ste`` gradient estimator in every masked layer."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: choose one of: {', '.join(ESTIMATORS)}")
    for _, layer in masked_layers(model):
        layer.estimator = estimator


def set_mask_rng(model: nn.Module, rng: MaskRNG | None) -> None:
    """Draw every mask of ``model`` from ``rng`` (None: torch's global generator)."""
    for _, layer in masked_layers(model):
        layer.rng = rng


@contextmanager
def sampled_masks(model: nn.Module, rng: MaskRNG) -> Iterator[None]:
    """Inside the block, eval-mode forwards draw masks from ``rng`` (no thresholding)."""
    layers = [layer for _, layer in masked_layers(model)]
    for layer in layers:
        layer.sample_in_eval, layer.rng = True, rng
    try:
        yield
    finally:
        for layer in layers:
            layer.sample_in_eval, layer.rng = False, None


MASKED_BUILDERS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "masked_cnn": lambda shape, classes: SmallCNN(shape, classes, MaskedConv2d, MaskedLinear),
    **{
        f"masked_{name}": (
            lambda shape, classes, widths=widths: ConvStack(
                widths, shape, classes, MaskedConv2d, MaskedLinear
            )
        )
        for name, widths in CONV_WIDTHS.items()
    },
}


def build_masked(
    name: str, input_shape: tuple[int, int, int], num_classes: int, weight_seed: int
) -> nn.Module:
    """Masked network ``name``: frozen weights from ``weight_seed``, scores from torch's RNG."""
    try:
        builder = MASKED_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown masked model {name!r}; choose one of: {', '.join(sorted(MASKED_BUILDERS))}"
        ) from None
    model = builder(tuple(input_shape), num_classes)
    seed_weights(model, weight_seed)
    return model


def _register(name: str) -> None:
    @register_model(name)
    def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return build_masked(name, input_shape, num_classes, DEFAULT_WEIGHT_SEED)


for _name in MASKED_BUILDERS:
    _register(_name)


EXPORT_MAGIC = b"FEDPM\x01"


def save_supermask(
    path: str | Path,
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weight_seed: int,
    model: nn.Module,
) -> int:
    """Write ``model`` as its weight seed plus one bit per mask entry (σ(score) > 0.5).

    Layout: magic, a little-endian uint32 header length, a JSON header (architecture, seed,
    weight hash, score names and shapes), then all thresholded masks packed with np.packbits.
    Returns the file size in bytes.
    """
    scores = model.state_dict()
    header = {
        "model": name,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "weight_seed": weight_seed,
        "weight_hash": weight_hash(model),
        "scores": [[key, list(value.shape)] for key, value in scores.items()],
    }
    bits = np.concatenate([(v.detach().cpu().numpy() > 0).ravel() for v in scores.values()])
    blob = json.dumps(header, separators=(",", ":")).encode()
    payload = EXPORT_MAGIC + struct.pack("<I", len(blob)) + blob + np.packbits(bits).tobytes()
    Path(path).write_bytes(payload)
    return len(payload)


def load_supermask(path: str | Path) -> nn.Module:
    """Rebuild the network :func:`save_supermask` wrote; in eval mode it applies the saved mask."""
    payload = Path(path).read_bytes()
    if not payload.startswith(EXPORT_MAGIC):
        raise ValueError(
            f"{path} is not a FedPM export: magic {payload[:6]!r}, expected {EXPORT_MAGIC!r}"
        )
    start = len(EXPORT_MAGIC) + 4
    (length,) = struct.unpack("<I", payload[len(EXPORT_MAGIC) : start])
    header = json.loads(payload[start : start + length])
    model = build_masked(
        header["model"], tuple(header["input_shape"]), header["num_classes"], header["weight_seed"]
    )
    if weight_hash(model) != header["weight_hash"]:
        raise RuntimeError(
            f"{path}: weights rebuilt from seed {header['weight_seed']} hash to "
            f"{weight_hash(model)}, the export says {header['weight_hash']}"
        )
    sizes = [math.prod(shape) for _, shape in header["scores"]]
    bits = np.unpackbits(np.frombuffer(payload[start + length :], np.uint8), count=sum(sizes))
    offsets = np.cumsum([0, *sizes])
    state = {
        key: torch.from_numpy(np.where(bits[lo:hi], 1.0, -1.0).astype(np.float32).reshape(shape))
        for (key, shape), lo, hi in zip(header["scores"], offsets[:-1], offsets[1:], strict=True)
    }
    model.load_state_dict(state, strict=True)
    return model.eval()
