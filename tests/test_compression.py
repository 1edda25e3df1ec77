"""Top-k and scaled-sign codecs: what survives, round trips, least-squares scale, bad wires."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strategies.pseudo_gradient.compression import (
    Codec,
    CodecError,
    SignCodec,
    TopKCodec,
    make_codec,
    sign_decode,
    sign_encode,
    topk_count,
    topk_decode,
    topk_encode,
)


def _x(shape=(7, 9), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 1.0])
def test_topk_keeps_exactly_the_largest_entries(ratio: float) -> None:
    x = _x()
    values, indices = topk_encode(x, ratio)
    k = topk_count(x.size, ratio)
    assert values.shape == indices.shape == (k,) and indices.dtype == np.int32
    assert k == max(1, math.floor(ratio * x.size))
    dense = topk_decode(values, indices, x.shape, x.dtype)
    kept = dense != 0
    assert int(kept.sum()) == k
    assert np.array_equal(dense[kept], x[kept])  # survivors are exact
    if k < x.size:
        assert np.abs(x[kept]).min() >= np.abs(x[~kept]).max()


def test_topk_decode_plus_residual_is_the_input() -> None:
    codec, x = TopKCodec(0.2), _x((5, 4, 3))
    sent = codec.roundtrip("w", x)
    residual = x - sent
    assert np.array_equal(sent + residual, x)
    assert np.count_nonzero(residual * sent) == 0  # disjoint supports


def test_sign_round_trip_of_signs_and_least_squares_scale() -> None:
    x = _x((33,))
    x[3] = 0.0
    bits, scale = sign_encode(x)
    assert bits.dtype == np.uint8 and bits.shape == (math.ceil(33 / 8),)
    decoded = sign_decode(bits, float(scale), x.shape, np.dtype(np.float32))
    expected_signs = np.where(x >= 0, 1.0, -1.0)
    assert np.array_equal(np.sign(decoded), expected_signs)  # 0 maps to +1
    assert scale == pytest.approx(np.abs(x).mean())
    signs = expected_signs.astype(np.float64)
    best = float(x @ signs / (signs @ signs))  # argmin_s ||x - s*sign(x)||
    assert scale == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("codec", [Codec(), TopKCodec(0.3), SignCodec()])
def test_codec_roundtrip_is_decode_of_encode(codec: Codec) -> None:
    x = _x((6, 5))
    wire = codec.encode("layer", x)
    assert set(wire) == set(codec.keys("layer"))
    assert np.array_equal(
        codec.decode("layer", wire, x.shape, x.dtype), codec.roundtrip("layer", x)
    )


def test_sign_wire_is_a_32nd_of_dense() -> None:
    x = _x((64, 64))
    wire = SignCodec().encode("w", x)
    assert sum(a.nbytes for a in wire.values()) == x.nbytes // 32 + 4


@pytest.mark.parametrize(
    ("values", "indices", "match"),
    [
        (np.ones(2, np.float32), np.array([0, 99], np.int32), "lie in"),
        (np.ones(2, np.float32), np.array([-1, 3], np.int32), "lie in"),
        (np.ones(2, np.float32), np.array([1, 1], np.int32), "repeat"),
        (np.ones(2, np.float32), np.array([0, 1], np.int64), "int32"),
        (np.ones(3, np.float32), np.array([0, 1], np.int32), "equal"),
    ],
)
def test_bad_topk_wires_are_refused(values, indices, match) -> None:
    with pytest.raises(CodecError, match=match):
        topk_decode(values, indices, (4, 4), np.dtype(np.float32))


def test_bad_sign_and_topk_counts_are_refused() -> None:
    with pytest.raises(CodecError, match="bits"):
        sign_decode(np.zeros(3, np.uint8), 1.0, (4, 8), np.dtype(np.float32))
    wire = TopKCodec(0.5).encode("w", _x((4,)))
    with pytest.raises(CodecError, match="expected 1 top-k"):
        TopKCodec(0.25).decode("w", wire, (4,), np.dtype(np.float32))
    with pytest.raises(CodecError, match="scale"):
        SignCodec().decode(
            "w",
            {"w:bits": np.zeros(1, np.uint8), "w:scale": np.array([np.nan], np.float32)},
            (4,),
            np.dtype(np.float32),
        )


def test_unknown_compressor_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="none, topk, sign"):
        make_codec("atomo")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        make_codec("topk", 0.0)
