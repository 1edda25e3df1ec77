"""KLMS in torch (strategies.fedpm.klms_torch, strategies.fedpm.pairwise) against the numpy
reference (strategies.fedpm.klms_codec): the same float32 sums, scores, chosen indices, bytes
and masks, bit for bit, on every device torch sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.fedpm import klms_codec, klms_torch, posterior
from strategies.fedpm.klms_codec import (
    KlmsSettings,
    decode_choice,
    decode_layer,
    encode_layer,
    encode_masks_klms,
    key_mix,
    layer_key,
)
from strategies.fedpm.mask_codec import PRIOR_MAX, PRIOR_MIN, decode_masks, quantize_prior
from strategies.fedpm.pairwise import PairwisePlan
from tests.runs import FEDPM_TOY_BASE, run_and_read

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
KEY = layer_key(seed=3, server_round=2, client_id=7, layer=1)


@pytest.fixture
def always_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash in torch whatever the size (the runtime keeps small work in numpy)."""
    monkeypatch.setattr(klms_codec, "TORCH_FROM_HASHES", {"cpu": 0, "cuda": 0})


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, np.float32).view(np.uint32)


def _wild_floats(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 over many magnitudes, with zeros of both signs and subnormals."""
    values = rng.standard_normal(shape) * np.exp(rng.uniform(-30, 30, shape))
    values = values.astype(np.float32)
    pick = rng.random(shape)
    values[pick < 0.2] = 0.0
    values[(pick >= 0.2) & (pick < 0.3)] = -0.0
    values[(pick >= 0.3) & (pick < 0.35)] *= np.float32(1e-38)  # subnormal
    return values


SEGMENTS = [
    [1],
    [1, 1, 2, 7, 8, 9, 15, 16, 17],
    [127, 128, 129, 130, 135, 136, 137, 255, 256, 257],
    [1000, 4096, 4095, 2049, 1],
    [32768, 3, 20000],
]


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("lengths", SEGMENTS, ids=lambda s: f"{len(s)}segs")
def test_pairwise_sums_are_numpys_reduceat_bit_for_bit(device, lengths) -> None:
    rng = np.random.default_rng(len(lengths))
    lengths = np.array(lengths)
    values = _wild_floats(rng, (3, int(lengths.sum())))
    plan = PairwisePlan.of(lengths, device)
    assert np.array_equal(np.sort(plan.order), np.arange(values.shape[1]))
    ours = plan.reduce(torch.from_numpy(values[:, plan.order]).to(device)).cpu().numpy()
    expected = np.add.reduceat(values, np.cumsum(lengths) - lengths, axis=1)
    np.testing.assert_array_equal(_bits(ours), _bits(expected))  # signed zeros included


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_pairwise_sums_on_random_segmentations(device) -> None:
    rng = np.random.default_rng(11)
    for trial in range(40):
        top = (8, 300, 4097)[trial % 3]
        lengths = rng.integers(1, top, rng.integers(1, 80))
        values = _wild_floats(rng, (2, int(lengths.sum())))
        plan = PairwisePlan.of(lengths, device)
        ours = plan.reduce(torch.from_numpy(values[:, plan.order]).to(device)).cpu().numpy()
        expected = np.add.reduceat(values, np.cumsum(lengths) - lengths, axis=1)
        np.testing.assert_array_equal(_bits(ours), _bits(expected))


def test_the_order_matters_so_the_check_has_teeth() -> None:
    """A plain left-to-right float32 sum of the same data rounds differently from numpy's:
    matching numpy needs its order, not just float32."""
    rng = np.random.default_rng(5)
    values = (rng.standard_normal(4096) * 1e4).astype(np.float32)
    sequential = np.float32(0)
    for v in values:
        sequential = np.float32(sequential + v)
    assert sequential != np.add.reduceat(values, [0])[0]


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_int32_arithmetic_wraps_like_uint32(device) -> None:
    """What the torch hash relies on: int32 add and multiply keep the low 32 bits."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32)
    ta = torch.from_numpy(a.view(np.int32)).to(device)
    tb = torch.from_numpy(b.view(np.int32)).to(device)
    np.testing.assert_array_equal((ta * tb).cpu().numpy().view(np.uint32), a * b)
    np.testing.assert_array_equal((ta + tb).cpu().numpy().view(np.uint32), a + b)


def _case(n: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 prior (polarised, as FedPM's θ becomes) and a trained q near it."""
    rng = np.random.default_rng(seed)
    prior = quantize_prior(1.0 / (1.0 + np.exp(-rng.normal(0.0, 3.0, n))))
    p = prior / 65536.0
    logit = np.log(p) - np.log1p(-p) + rng.normal(0.0, spread, n)
    return 1.0 / (1.0 + np.exp(-logit)), prior


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("bits", [1, 4, 6, 9])
def test_scores_are_numpys_bit_for_bit(device, bits: int) -> None:
    rng = np.random.default_rng(bits)
    for n in (1, 13, 999, 20_000):
        prior = rng.integers(PRIOR_MIN, PRIOR_MAX + 1, n).astype(np.uint16)
        cut = np.sort(rng.choice(np.arange(1, n), min(n - 1, 30), replace=False)) if n > 1 else []
        lengths = np.diff(np.concatenate([[0], cut, [n]])).astype(np.int64)
        entries = np.arange(n)
        d = _wild_floats(rng, (n,))
        expected = klms_codec._log_weights(KEY, prior, entries, d, lengths, bits)
        ours = klms_torch.log_weights(int(key_mix(KEY)), prior, entries, d, lengths, bits, device)
        np.testing.assert_array_equal(_bits(ours), _bits(expected))


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_near_ties_are_broken_as_numpy_breaks_them(device) -> None:
    """Blocks whose candidates' sums differ by a rounding or not at all: the same float32
    scores, so the same argmax after the same Gumbel draws."""
    n = 4096 * 3 + 100
    prior = np.full(n, 1 << 15, np.uint16)
    big, small = np.float32(2.0**24), np.float32(1.0)
    d = np.where(np.arange(n) % 3 == 0, big, small).astype(np.float32)  # sums lose the 1s
    d[-100:] = np.float32(0.5)  # exact ties: many candidates with the same count
    lengths = np.array([4096, 4096, 4096, 100])
    expected = klms_codec._log_weights(KEY, prior, np.arange(n), d, lengths, 6)
    ours = klms_torch.log_weights(int(key_mix(KEY)), prior, np.arange(n), d, lengths, 6, device)
    np.testing.assert_array_equal(_bits(ours), _bits(expected))
    assert len(np.unique(expected[:, -1])) < 64  # there were ties
    gumbel = np.random.default_rng(0).gumbel(size=expected.shape)
    np.testing.assert_array_equal(
        np.argmax(ours.astype(np.float64) + gumbel, axis=0),
        np.argmax(expected.astype(np.float64) + gumbel, axis=0),
    )


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_chosen_candidates_are_numpys(device, always_torch) -> None:
    rng = np.random.default_rng(2)
    for n, bits in ((1, 1), (777, 4), (100_003, 16)):
        prior = rng.integers(PRIOR_MIN, PRIOR_MAX + 1, n).astype(np.uint16)
        lengths = np.diff(np.append(np.arange(0, n, 97), n))
        starts = np.cumsum(lengths) - lengths
        choice = rng.integers(0, 1 << bits, lengths.size)
        np.testing.assert_array_equal(
            decode_choice(KEY, prior, starts, lengths, choice, device),
            decode_choice(KEY, prior, starts, lengths, choice),
        )


ENCODE_CASES = [
    ("tiny", 1, KlmsSettings()),
    ("one-entry-blocks", 50, KlmsSettings(bits=3, kl_per_block=0.01, max_block=1)),
    ("partial-last-block", 1000, KlmsSettings(bits=4, kl_per_block=2.0, max_block=7)),
    ("defaults", 50_000, KlmsSettings()),
    ("huge-blocks", 70_000, KlmsSettings(bits=2, kl_per_block=1e6, max_block=32768)),
    ("many-bits", 1500, KlmsSettings(bits=11, kl_per_block=10.0, max_block=300)),
]


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("name, n, settings", ENCODE_CASES, ids=[c[0] for c in ENCODE_CASES])
def test_encoded_bytes_and_masks_are_numpys(device, name, n, settings, always_torch) -> None:
    for seed in range(3):
        q, prior = _case(n, seed, spread=0.5 if seed else 0.1)
        key = layer_key(seed, 4, 9, seed)
        segment, mask = encode_layer(q, prior, key, settings, np.random.default_rng(seed))
        ours, our_mask = encode_layer(q, prior, key, settings, np.random.default_rng(seed), device)
        np.testing.assert_array_equal(ours, segment)
        np.testing.assert_array_equal(our_mask, mask)
        decoded = decode_layer(segment, prior, key, settings, "w", device)
        np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_random_settings_and_seeds_encode_as_numpy(device, always_torch) -> None:
    rng = np.random.default_rng(21)
    for seed in range(40):
        n = int(rng.integers(1, 6000))
        settings = KlmsSettings(
            bits=int(rng.integers(1, 9)),
            kl_per_block=float(rng.uniform(0.2, 8.0)),
            max_block=int(rng.choice([1, 5, 64, 129, 1000, 4096])),
            fresh_kl=float(rng.choice([0.0, 0.05, 0.5])),
        )
        q, prior = _case(n, seed, spread=float(rng.uniform(0.01, 1.5)))
        key = layer_key(seed, seed + 1, seed + 2, 0)
        segment, mask = encode_layer(q, prior, key, settings, np.random.default_rng(seed))
        ours, our_mask = encode_layer(q, prior, key, settings, np.random.default_rng(seed), device)
        np.testing.assert_array_equal(ours, segment, err_msg=f"seed {seed} {settings}")
        np.testing.assert_array_equal(our_mask, mask)
        np.testing.assert_array_equal(
            decode_layer(segment, prior, key, settings, "w", device), mask
        )


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_extreme_q_and_theta_encode_as_numpy(device, always_torch) -> None:
    """q at 0 and 1 against θ at the clip bounds and in between: d at its largest."""
    n = 6000
    prior = np.tile(np.array([PRIOR_MIN, PRIOR_MAX, 1 << 15], np.uint16), n // 3)
    rng = np.random.default_rng(8)
    q = rng.choice([0.0, 1.0, 0.5, 1e-300, 1 - 1e-16], n)
    settings = KlmsSettings(bits=5, kl_per_block=4.0, max_block=512)
    segment, mask = encode_layer(q, prior, KEY, settings, np.random.default_rng(1))
    ours, our_mask = encode_layer(q, prior, KEY, settings, np.random.default_rng(1), device)
    np.testing.assert_array_equal(ours, segment)
    np.testing.assert_array_equal(our_mask, mask)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_a_reply_of_many_layers_is_the_same_stream(device, always_torch) -> None:
    shapes = {"conv.w": (16, 3, 3, 3), "conv.b": (16,), "fc.w": (10, 400), "fc.b": (10,)}
    sizes = [int(np.prod(s)) for s in shapes.values()]
    q, prior = _case(sum(sizes), seed=6)
    cuts = np.cumsum(sizes)[:-1]
    priors = {k: p.reshape(shapes[k]) for k, p in zip(shapes, np.split(prior, cuts), strict=True)}
    qs = {k: v.reshape(shapes[k]) for k, v in zip(shapes, np.split(q, cuts), strict=True)}
    keys = {k: layer_key(1, 2, 3, i) for i, k in enumerate(shapes)}
    settings = KlmsSettings()
    coded, masks = encode_masks_klms(qs, priors, keys, settings, np.random.default_rng(0))
    ours, our_masks = encode_masks_klms(
        qs, priors, keys, settings, np.random.default_rng(0), device
    )
    np.testing.assert_array_equal(ours.stream, coded.stream)
    assert (ours.flags, ours.sizes, ours.crc32) == (coded.flags, coded.sizes, coded.crc32)

    def klms(name: str, segment: np.ndarray) -> np.ndarray:
        return decode_layer(segment, priors[name], keys[name], settings, name, device)

    decoded = decode_masks(coded.stream, coded.header(), shapes, priors, klms)
    for name in shapes:
        np.testing.assert_array_equal(our_masks[name], masks[name])
        np.testing.assert_array_equal(decoded[name], masks[name])


def test_small_work_stays_in_numpy_and_large_work_goes_to_torch() -> None:
    cpu = torch.device("cpu")
    limit = klms_codec.TORCH_FROM_HASHES["cpu"]
    assert klms_codec.hashing_device(None, 1 << 40) is None
    assert klms_codec.hashing_device(cpu, limit - 1) is None
    assert klms_codec.hashing_device(cpu, limit) == cpu


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_torch_agrees_with_numpy_on_the_probe(device) -> None:
    klms_codec.torch_agrees.cache_clear()
    assert klms_codec.torch_agrees(device)


def test_a_device_where_torch_differs_keeps_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores off by one unit in the last place on some platform: numpy hashes there, with a
    warning, so the bytes sent stay numpy's."""
    exact = klms_torch.log_weights

    def off_by_an_ulp(*args) -> np.ndarray:
        scores = exact(*args)
        return np.nextafter(scores, np.float32(np.inf))

    monkeypatch.setattr(klms_torch, "log_weights", off_by_an_ulp)
    klms_codec.torch_agrees.cache_clear()
    cpu = torch.device("cpu")
    try:
        with pytest.warns(RuntimeWarning, match="differs from numpy"):
            assert klms_codec.hashing_device(cpu, 1 << 40) is None
    finally:
        klms_codec.torch_agrees.cache_clear()


def test_a_run_coded_in_torch_is_the_numpy_run(tmp_path, always_torch) -> None:
    """Clients encoding and reducing nodes decoding every layer in torch give the numpy run's
    numbers (so the same chosen masks, bytes and model), round for round."""
    keys = (
        "accuracy",
        "loss",
        "uplink_bytes",
        "fedpm_bpp_wire",
        "fedpm_bpp_ideal",
        "fedpm_density",
    )
    overrides = [
        *FEDPM_TOY_BASE,
        "strategy.eval_samples=0",
        "num_rounds=2",
        "strategy.uplink_coding=klms",
        "engine.clients_per_node=2",
    ]
    assert klms_codec.torch_agrees(torch.device("cpu"))  # the probe's own calls come first
    calls = {"log_weights": 0, "chosen_mask": 0}

    def counted(name: str):
        real = getattr(klms_torch, name)

        def call(*args):
            calls[name] += 1
            return real(*args)

        return call

    decoded_on = set()

    def decode_where(*args):
        decoded_on.add(args[5])  # the device a reducing node or the server decodes on
        return decode_layer(*args)

    with pytest.MonkeyPatch.context() as patch:
        for name in calls:
            patch.setattr(klms_torch, name, counted(name))
        patch.setattr(posterior, "decode_layer", decode_where)
        in_torch = run_and_read(overrides, tmp_path / "torch")
    assert calls["log_weights"] > 0 and calls["chosen_mask"] > 0
    assert decoded_on == {torch.device("cpu")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(klms_codec, "TORCH_FROM_HASHES", {"cpu": 1 << 62, "cuda": 1 << 62})
        in_numpy = run_and_read(overrides, tmp_path / "numpy")
    assert [[r[k] for k in keys] for r in in_torch] == [[r[k] for k in keys] for r in in_numpy]
