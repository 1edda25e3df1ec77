"""FedPM's mask codec: lossless round trips, the fixed-point prior, and every bad stream refused."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from strategies.core.validation import ReplyError
from strategies.fedpm.mask_codec import (
    CRC_KEY,
    FLAGS_KEY,
    PACKED,
    PRIOR_MAX,
    PRIOR_MIN,
    PRIOR_SCALE,
    RANGE,
    SIZES_KEY,
    CodeLengths,
    decode_masks,
    encode_masks,
    prior_probabilities,
    quantize_prior,
    range_encode,
)

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"conv.weight_score": (6, 1, 3, 3), "conv.bias_score": (6,), "fc.weight_score": (10, 301)}


def _polarised(shapes=SHAPES, seed: int = 0) -> tuple[dict, dict]:
    """Priors with most entries near 0 or 1, and masks drawn from them."""
    rng = np.random.default_rng(seed)
    priors, masks = {}, {}
    for name, shape in shapes.items():
        theta = np.where(rng.random(shape) < 0.5, 0.02, 0.97)
        theta[rng.random(shape) < 0.2] = 0.5
        priors[name] = quantize_prior(theta)
        masks[name] = rng.random(shape) < prior_probabilities(priors[name]).reshape(shape)
    return priors, masks


def _round_trip(masks: dict, priors: dict) -> dict:
    coded = encode_masks(masks, priors)
    shapes = {k: m.shape for k, m in masks.items()}
    return decode_masks(coded.stream, coded.header(), shapes, priors)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("size", [1, 7, 13, 1000, 4099])
@pytest.mark.parametrize("fill", ["random", "zeros", "ones"])
@pytest.mark.parametrize("prior", ["random", "low-bound", "high-bound", "half"])
def test_round_trip_is_exact(size: int, fill: str, prior: str) -> None:
    rng = np.random.default_rng(size)
    mask = {
        "random": rng.random(size) < 0.3,
        "zeros": np.zeros(size, bool),
        "ones": np.ones(size, bool),
    }[fill]
    q = {
        "random": rng.integers(PRIOR_MIN, PRIOR_MAX + 1, size).astype(np.uint16),
        "low-bound": np.full(size, PRIOR_MIN, np.uint16),  # every one costs ~16 bits
        "high-bound": np.full(size, PRIOR_MAX, np.uint16),
        "half": np.full(size, PRIOR_SCALE // 2, np.uint16),
    }[prior]
    decoded = _round_trip({"a": mask, "b": ~mask}, {"a": q, "b": q})
    np.testing.assert_array_equal(decoded["a"], mask)
    np.testing.assert_array_equal(decoded["b"], ~mask)
    assert all(m.dtype == np.uint8 for m in decoded.values())


def test_coded_layers_are_smaller_and_half_probabilities_fall_back_to_packed() -> None:
    priors, masks = _polarised()
    coded = encode_masks(masks, priors)
    assert coded.flags == bytes([RANGE, PACKED, RANGE])  # 6 entries: 1 packed byte < 1 word
    for size, shape, flag in zip(coded.sizes, SHAPES.values(), coded.flags, strict=True):
        packed = (math.prod(shape) + 7) // 8
        assert size < packed if flag == RANGE else size == packed
    half = {k: np.full(s, PRIOR_SCALE // 2, np.uint16) for k, s in SHAPES.items()}
    fallback = encode_masks(masks, half)
    assert fallback.flags == bytes([PACKED] * len(SHAPES))
    assert fallback.sizes == [(math.prod(s) + 7) // 8 for s in SHAPES.values()]


def test_range_code_is_within_two_percent_of_the_ideal_length() -> None:
    priors, masks = _polarised({"w": (200_000,)})
    ideal = CodeLengths.of(priors["w"]).bits(masks["w"])
    by_hand = -np.log2(
        np.where(masks["w"], prior_probabilities(priors["w"]), 1 - prior_probabilities(priors["w"]))
    ).sum()
    assert ideal == pytest.approx(by_hand, rel=1e-12)
    coded_bits = 32 * range_encode(masks["w"], priors["w"]).size
    assert ideal <= coded_bits + 64 and coded_bits <= 1.02 * ideal


# -------------------------------------------------------------------------------- the prior
def test_prior_is_clipped_and_exactly_representable() -> None:
    q = quantize_prior(np.array([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0]))
    assert q.dtype == np.uint16
    assert q.tolist() == [PRIOR_MIN, PRIOR_MIN, PRIOR_SCALE // 2, PRIOR_MAX, PRIOR_MAX]
    every = np.arange(PRIOR_MIN, PRIOR_MAX + 1, dtype=np.uint16)
    p = prior_probabilities(every)
    assert np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(p * PRIOR_SCALE, every.astype(np.float64))  # no rounding


def _prior_digest() -> str:
    from strategies.fedpm.shared import sigmoid

    scores = np.random.default_rng(5).normal(scale=3.0, size=100_000).astype(np.float32)
    return hashlib.sha256(quantize_prior(sigmoid(scores)).tobytes()).hexdigest()


@pytest.mark.slow
def test_prior_computed_in_another_process_is_identical() -> None:
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_mask_codec import _prior_digest; "
        "print(_prior_digest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == _prior_digest()


# ------------------------------------------------------------------------------ bad streams
def _coded() -> tuple[np.ndarray, dict, dict]:
    priors, masks = _polarised()
    coded = encode_masks(masks, priors)
    header = {FLAGS_KEY: coded.flags, SIZES_KEY: list(coded.sizes), CRC_KEY: coded.crc32}
    return coded.stream, header, priors


def _reason(stream: np.ndarray, header: dict, priors: dict) -> str:
    with pytest.raises(ReplyError) as err:
        decode_masks(stream, ConfigRecord(header), SHAPES, priors)
    return err.value.reason


def test_truncated_streams_are_refused() -> None:
    stream, header, priors = _coded()
    assert _reason(stream[:-1], header, priors) == "mask-length"  # header disagrees
    last = header[SIZES_KEY][-1]
    for cut in (4, last // 2 // 4 * 4):  # the header agrees: the stream itself is short
        sizes = [*header[SIZES_KEY][:-1], last - cut]
        reason = _reason(stream[:-cut], {**header, SIZES_KEY: sizes}, priors)
        assert reason in ("mask-stream", "mask-crc")


def test_extended_streams_are_refused() -> None:
    stream, header, priors = _coded()
    longer = np.concatenate([stream, np.zeros(4, np.uint8)])
    assert _reason(longer, header, priors) == "mask-length"


@pytest.mark.parametrize("position", [0.1, 0.5, 0.9])
def test_garbled_streams_are_refused(position: float) -> None:
    stream, header, priors = _coded()
    garbled = stream.copy()
    garbled[int(position * stream.size)] ^= 0x10
    assert _reason(garbled, header, priors) in ("mask-stream", "mask-crc")


def test_wrong_dtype_streams_are_refused() -> None:
    stream, header, priors = _coded()
    assert _reason(stream.astype(np.int16), header, priors) == "mask-dtype"
    assert _reason(stream.astype(np.uint32), header, priors) == "mask-dtype"


def test_a_stream_for_the_wrong_number_of_entries_is_refused() -> None:
    priors, masks = _polarised()
    name = "fc.weight_score"
    longer = {**masks, name: np.append(masks[name].ravel(), [True, False, True])}
    longer_priors = {**priors, name: np.append(priors[name].ravel(), [PRIOR_MAX] * 3)}
    coded = encode_masks(longer, longer_priors)
    with pytest.raises(ReplyError) as err:
        decode_masks(coded.stream, coded.header(), SHAPES, priors)
    assert err.value.reason in ("mask-crc", "mask-stream", "mask-length")


def test_a_stream_coded_against_another_prior_is_refused() -> None:
    stream, header, priors = _coded()
    other = {k: quantize_prior(np.full(q.shape, 0.3)) for k, q in priors.items()}
    assert _reason(stream, header, other) in ("mask-stream", "mask-crc")


@pytest.mark.parametrize(
    "change, reason",
    [
        ({FLAGS_KEY: bytes([RANGE, 7, RANGE])}, "mask-flag"),
        ({FLAGS_KEY: bytes([RANGE, RANGE, RANGE])}, "mask-length"),  # packed segment as coded
        ({FLAGS_KEY: bytes([RANGE, RANGE])}, "mask-flag"),
        ({FLAGS_KEY: "111"}, "mask-flag"),
        ({FLAGS_KEY: bytes([PACKED, PACKED, RANGE])}, "mask-length"),  # coded segment as packed
        ({SIZES_KEY: [1, 2]}, "mask-length"),
        ({SIZES_KEY: "12"}, "mask-length"),
        ({CRC_KEY: -1}, "mask-crc"),
        ({CRC_KEY: "0"}, "mask-crc"),
    ],
)
def test_bad_headers_are_refused(change: dict, reason: str) -> None:
    stream, header, priors = _coded()
    assert _reason(stream, {**header, **change}, priors) == reason


def test_a_wrong_checksum_is_refused() -> None:
    stream, header, priors = _coded()
    assert _reason(stream, {**header, CRC_KEY: header[CRC_KEY] ^ 1}, priors) == "mask-crc"
