"""KLMS (strategies.fedpm.klms_codec): the server rebuilds exactly the mask the client chose, the
choice follows q, candidates are the same integers everywhere, and bad segments are refused."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest

from strategies.core.validation import ReplyError
from strategies.fedpm.klms_codec import (
    KlmsSettings,
    block_starts,
    candidate_bits,
    decode_layer,
    encode_layer,
    encode_masks_klms,
    kl_bits,
    layer_key,
)
from strategies.fedpm.mask_codec import KLMS, PRIOR_MAX, PRIOR_MIN, decode_masks, quantize_prior

KEY = layer_key(seed=3, server_round=2, client_id=7, layer=1)


def _case(n: int, seed: int = 0, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 prior and a trained q near it in logit space."""
    rng = np.random.default_rng(seed)
    prior = quantize_prior(rng.uniform(0.02, 0.98, n))
    p = prior / 65536.0
    logit = np.log(p) - np.log1p(-p) + rng.normal(0.0, spread, n)
    return 1.0 / (1.0 + np.exp(-logit)), prior


@pytest.mark.parametrize(
    "n, settings",
    [
        (1, KlmsSettings()),
        (1000, KlmsSettings(bits=4, kl_per_block=2.0, max_block=7)),  # 7 does not divide 1000
        (4099, KlmsSettings(bits=6, kl_per_block=3.0, max_block=4096)),
    ],
)
def test_server_rebuilds_exactly_the_chosen_mask(n: int, settings: KlmsSettings) -> None:
    q, prior = _case(n)
    segment, mask = encode_layer(q, prior, KEY, settings, np.random.default_rng(1))
    np.testing.assert_array_equal(decode_layer(segment, prior, KEY, settings, "w"), mask)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


def test_prior_at_the_clip_bounds_and_extreme_q_round_trip() -> None:
    prior = np.array([PRIOR_MIN, PRIOR_MAX] * 50, np.uint16)
    q = np.array([1.0, 0.0] * 50)  # as far from the prior as q can be
    settings = KlmsSettings(bits=3, kl_per_block=2.0)
    segment, mask = encode_layer(q, prior, KEY, settings, np.random.default_rng(0))
    np.testing.assert_array_equal(decode_layer(segment, prior, KEY, settings, "w"), mask)


def test_zero_kl_sends_fresh_samples_and_no_index() -> None:
    prior = quantize_prior(np.random.default_rng(2).uniform(0.1, 0.9, 5000))
    q = prior / 65536.0  # q == p: nothing to say
    settings = KlmsSettings(max_block=1024)
    segment, mask = encode_layer(q, prior, KEY, settings, np.random.default_rng(0))
    table_bytes = int.from_bytes(segment[:4].tobytes(), "little")
    assert segment.size == 4 + table_bytes  # the block table, zero index bytes
    fresh = np.frombuffer(zlib.decompress(segment[4:].tobytes()), "<u2")
    assert fresh.size == 5 and np.all(fresh & 0x8000)
    np.testing.assert_array_equal(decode_layer(segment, prior, KEY, settings, "w"), mask)
    # a fresh block is candidate 0: a draw from θ itself
    np.testing.assert_array_equal(
        mask, candidate_bits(KEY, prior, np.zeros(1, np.int64), np.arange(5000)).astype(np.uint8)
    )


def test_blocks_carry_about_the_target_kl_and_respect_the_cap() -> None:
    kl = np.full(1000, 0.01)
    starts = block_starts(kl, kl_per_block=1.0, max_block=64)
    lengths = np.diff(np.append(starts, 1000))
    assert lengths.max() <= 64 and lengths.sum() == 1000
    starts = block_starts(np.full(1000, 0.25), kl_per_block=2.0, max_block=4096)
    assert np.all(np.diff(starts) == 8)  # 2 bits at 0.25 bits per entry (exact in binary)


def test_chosen_masks_approach_q_as_bits_grow() -> None:
    """Over many independent draws (other keys), the mean of the chosen mask approaches q: with
    more candidates per bit of KL the importance sampler's bias shrinks."""
    prior = np.full(8, quantize_prior(np.array([0.5]))[0], np.uint16)
    q = np.array([0.9, 0.1, 0.8, 0.2, 0.95, 0.05, 0.7, 0.3])
    errors = {}
    for bits in (1, 8):
        settings = KlmsSettings(bits=bits, kl_per_block=100.0, max_block=8, fresh_kl=0.0)
        rng = np.random.default_rng(0)
        draws = [
            encode_layer(q, prior, layer_key(0, r, 0, 0), settings, rng)[1] for r in range(1500)
        ]
        errors[bits] = float(np.abs(np.mean(draws, axis=0) - q).max())
    assert errors[8] < 0.05  # 1,500 draws: the sampling noise alone is ~0.01
    assert errors[1] > 2 * errors[8]
    assert kl_bits(q, prior).sum() < 8  # one block of ~2.7 bits: 8 index bits is enough


@pytest.mark.slow
def test_candidates_are_the_same_in_another_process() -> None:
    prior = quantize_prior(np.linspace(0.01, 0.99, 997))
    here = candidate_bits(KEY, prior, np.arange(16)[:, None], np.arange(997)[None, :])
    code = (
        "import numpy as np, sys;"
        "from strategies.fedpm.klms_codec import candidate_bits, layer_key;"
        "from strategies.fedpm.mask_codec import quantize_prior;"
        "p = quantize_prior(np.linspace(0.01, 0.99, 997));"
        "b = candidate_bits(layer_key(3, 2, 7, 1), p, np.arange(16)[:, None], "
        "np.arange(997)[None, :]);"
        "sys.stdout.write(np.packbits(b).tobytes().hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert other == np.packbits(here).tobytes().hex()
    assert 0.3 < here.mean() < 0.7  # and they do follow the prior (mean θ = 0.5)


def _coded_pair():
    q, prior = _case(600, seed=4)
    settings = KlmsSettings(bits=5, kl_per_block=2.0, max_block=100)
    keys = {"a": KEY, "b": layer_key(3, 2, 7, 2)}
    priors = {"a": prior[:500].reshape(20, 25), "b": prior[500:]}
    probabilities = {"a": q[:500].reshape(20, 25), "b": q[500:]}
    coded, masks = encode_masks_klms(
        probabilities, priors, keys, settings, np.random.default_rng(0)
    )
    shapes = {k: v.shape for k, v in priors.items()}

    def decoder(name, segment):
        return decode_layer(segment, priors[name], keys[name], settings, name)

    return coded, masks, shapes, priors, decoder, settings


def test_a_coded_reply_decodes_through_the_mask_codec() -> None:
    coded, masks, shapes, priors, decoder, _ = _coded_pair()
    assert coded.flags == bytes([KLMS, KLMS])
    decoded = decode_masks(coded.stream, coded.header(), shapes, priors, decoder)
    for name in masks:
        np.testing.assert_array_equal(decoded[name], masks[name])
    with pytest.raises(ReplyError, match="mask-flag"):  # a KLMS layer needs its decoder
        decode_masks(coded.stream, coded.header(), shapes, priors)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("fewer-blocks", "klms-blocks"),
        ("long-block", "klms-blocks"),
        ("index-bytes", "klms-index"),
        ("padding", "klms-index"),
        ("table", "klms-blocks"),
        ("truncated", "klms-blocks"),
    ],
)
def test_a_damaged_segment_is_a_reply_error(damage: str, reason: str) -> None:
    q, prior = _case(300, seed=5)
    settings = KlmsSettings(bits=5, kl_per_block=1.0, max_block=64)
    segment, _ = encode_layer(q, prior, KEY, settings, np.random.default_rng(0))
    table_bytes = int.from_bytes(segment[:4].tobytes(), "little")
    table = np.frombuffer(zlib.decompress(segment[4 : 4 + table_bytes].tobytes()), "<u2").copy()
    indices = segment[4 + table_bytes :]

    def rebuilt(new_table: np.ndarray, new_indices: np.ndarray) -> np.ndarray:
        packed = zlib.compress(new_table.astype("<u2").tobytes())
        header = np.frombuffer(len(packed).to_bytes(4, "little"), np.uint8)
        return np.concatenate([header, np.frombuffer(packed, np.uint8), new_indices])

    if damage == "fewer-blocks":
        bad = rebuilt(table[:-1], indices)
    elif damage == "long-block":
        table[0] = (table[0] & 0x8000) | 64  # a block of 65 > max_block
        bad = rebuilt(table, indices)
    elif damage == "index-bytes":
        bad = np.concatenate([segment, np.zeros(1, np.uint8)])
    elif damage == "padding":
        active = int(np.count_nonzero(~(table & 0x8000).astype(bool)))
        assert (active * 5) % 8, "the case needs padding bits"
        bad = segment.copy()
        bad[-1] |= 1
    elif damage == "table":
        bad = segment.copy()
        bad[4:8] ^= 0xFF
    else:
        bad = segment[:3]
    with pytest.raises(ReplyError) as raised:
        decode_layer(bad, prior, KEY, settings, "w")
    assert raised.value.reason == reason


def test_settings_refuse_bad_values_with_the_key() -> None:
    for kwargs, key in [
        ({"bits": 0}, "klms_bits"),
        ({"bits": 17}, "klms_bits"),
        ({"kl_per_block": 0.0}, "klms_kl_per_block"),
        ({"max_block": 40000}, "klms_max_block"),
        ({"fresh_kl": -1.0}, "klms_fresh_kl"),
    ]:
        with pytest.raises(ValueError, match=key):
            KlmsSettings(**kwargs)
    with pytest.raises(ValueError, match="klms_bits"):
        KlmsSettings(bits=16).check_layer(1 << 17, "fc.weight")
