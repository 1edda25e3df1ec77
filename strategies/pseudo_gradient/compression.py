"""Per-layer gradient codecs: top-k sparsification and scaled sign, plus the identity.

A codec turns one layer's (pseudo-)gradient into a few named wire arrays and back. The
client uses ``roundtrip`` (decode ∘ encode) to learn exactly the dense vector the server will
rebuild, which is what error feedback subtracts and what LBGM stacks on.

Scaled sign: the wire carries sign(x) (0 → +1) as packed bits plus one float32 scale
s = mean|x|. That s is the least-squares scale: it minimises ‖x − s·sign(x)‖², because
⟨x, sign x⟩ / ‖sign x‖² = Σ|x| / d. So the decoded vector is the best vector of its form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

COMPRESSORS = ("none", "topk", "sign")
SEP = ":"


class CodecError(ValueError):
    """Wire arrays that do not decode to the expected layer."""


def topk_count(numel: int, ratio: float) -> int:
    """Entries kept by top-k: ⌊ratio·numel⌋, at least one."""
    return max(1, math.floor(ratio * numel))


def topk_encode(x: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The ⌊ratio·numel⌋ largest-|x| entries as (values, int32 flat indices sorted ascending)."""
    flat = x.reshape(-1)
    k = topk_count(flat.size, ratio)
    indices = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
    return flat[indices].copy(), indices.astype(np.int32)


def topk_decode(
    values: np.ndarray, indices: np.ndarray, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """Dense array of ``shape`` holding ``values`` at the flat ``indices`` and zeros elsewhere."""
    numel = math.prod(shape)
    if values.ndim != 1 or indices.shape != values.shape:
        raise CodecError(
            f"top-k values {values.shape} and indices {indices.shape} must be 1-D, equal"
        )
    if indices.dtype != np.int32:
        raise CodecError(f"top-k indices must be int32, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= numel):
        raise CodecError(f"top-k indices must lie in [0, {numel})")
    if np.unique(indices).size != indices.size:
        raise CodecError("top-k indices repeat")
    dense = np.zeros(numel, dtype=dtype)
    dense[indices] = values
    return dense.reshape(shape)


def sign_encode(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Packed sign bits (1 = non-negative, so 0 maps to +1) and the scale mean|x|."""
    flat = x.reshape(-1)
    return np.packbits(flat >= 0), np.float32(np.abs(flat).mean(dtype=np.float64))


def sign_decode(
    bits: np.ndarray, scale: float, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """scale·(±1) with the signs unpacked from ``bits``."""
    numel = math.prod(shape)
    if bits.dtype != np.uint8 or bits.shape != ((numel + 7) // 8,):
        raise CodecError(
            f"sign bits must be uint8 of shape ({(numel + 7) // 8},), got {bits.dtype} {bits.shape}"
        )
    signs = np.unpackbits(bits, count=numel).astype(dtype) * 2 - 1
    return (signs * dtype.type(scale)).reshape(shape)


class Codec:
    """Identity codec: the layer travels as it is, under its own name."""

    name = "none"

    def encode(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        """Wire arrays for layer ``name``."""
        return {name: x}

    def keys(self, name: str) -> tuple[str, ...]:
        """Names of the wire arrays of layer ``name``."""
        return (name,)

    def decode(
        self, name: str, wire: Mapping[str, np.ndarray], shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        """The dense layer from its wire arrays; CodecError when they do not fit."""
        x = wire[name]
        if x.shape != shape or x.dtype != dtype:
            raise CodecError(f"{name}: got {x.dtype} {x.shape}, expected {dtype} {shape}")
        return x

    def roundtrip(self, name: str, x: np.ndarray) -> np.ndarray:
        """What the server will rebuild from ``encode(name, x)``."""
        return self.decode(name, self.encode(name, x), x.shape, x.dtype)


class TopKCodec(Codec):
    """Per-layer top-k: float values plus int32 flat indices."""

    name = "topk"

    def __init__(self, ratio: float) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"top-k ratio {ratio!r} must be in (0, 1]")
        self.ratio = ratio

    def keys(self, name: str) -> tuple[str, ...]:
        return (f"{name}{SEP}values", f"{name}{SEP}indices")

    def encode(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        values, indices = topk_encode(x, self.ratio)
        return dict(zip(self.keys(name), (values, indices), strict=True))

    def decode(
        self, name: str, wire: Mapping[str, np.ndarray], shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        values, indices = (wire[key] for key in self.keys(name))
        if values.dtype != dtype:
            raise CodecError(f"{name}: top-k values are {values.dtype}, expected {dtype}")
        k = topk_count(math.prod(shape), self.ratio)
        if values.shape != (k,):
            raise CodecError(f"{name}: expected {k} top-k values, got {values.shape}")
        return topk_decode(values, indices, shape, dtype)


class SignCodec(Codec):
    """Scaled sign: packed sign bits plus one float32 scale (mean |x|) per layer."""

    name = "sign"

    def keys(self, name: str) -> tuple[str, ...]:
        return (f"{name}{SEP}bits", f"{name}{SEP}scale")

    def encode(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        bits, scale = sign_encode(x)
        return dict(zip(self.keys(name), (bits, np.array([scale])), strict=True))

    def decode(
        self, name: str, wire: Mapping[str, np.ndarray], shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        bits, scale = (wire[key] for key in self.keys(name))
        if scale.shape != (1,) or scale.dtype != np.float32 or not np.isfinite(scale).all():
            raise CodecError(f"{name}: sign scale must be one finite float32")
        return sign_decode(bits, float(scale[0]), shape, np.dtype(dtype))


def make_codec(compressor: str, topk_ratio: float = 0.1) -> Codec:
    """The codec named ``compressor`` (one of COMPRESSORS)."""
    if compressor == "none":
        return Codec()
    if compressor == "topk":
        return TopKCodec(topk_ratio)
    if compressor == "sign":
        return SignCodec()
    raise ValueError(f"unknown compressor {compressor!r}; choose one of: {', '.join(COMPRESSORS)}")
