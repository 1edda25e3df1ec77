"""FedPM: seeded frozen weights, bit-packed masks, the Beta update, accounting and the export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import nn

import strategies
from client_app.app import client_context
from data.federated import central_test, client_data, client_indices, dataset_info
from models.masked import (
    MaskedConv2d,
    MaskedLinear,
    MaskRNG,
    build_masked,
    draw_bool_mask,
    draw_mask,
    load_supermask,
    masked_layers,
    set_estimator,
    weight_hash,
)
from models.training import TensorData, TrainResult, evaluate, train_epochs
from server_app.monitor import LayerMonitor
from server_app.plots import BPP_PLOT, PLOTS
from server_app.settings import ConfigError, build_strategy, client_job, compose_config
from strategies.core.cohort import ClientDirectory
from strategies.core.job import ClientJob
from strategies.core.registry import Algorithm, register_algorithm
from strategies.core.strategy import ARRAYS, ClientUpdate
from strategies.core.validation import ReplyError
from strategies.fedpm.client import FedPMClient, WeightMismatchError
from strategies.fedpm.mask_codec import (
    decode_masks,
    encode_masks,
    pack_mask,
    quantize_prior,
    unpack_mask,
)
from strategies.fedpm.posterior import BetaPosterior
from strategies.fedpm.shared import CODE, EXPORT_FILE, STREAM, build_fedpm_model, logit, sigmoid
from strategies.fedpm.strategy import FedPM
from strategies.numeric.arrays import l2_norm
from tests.fedpm_replies import coded_replies
from tests.runs import FEDPM_TOY_BASE, run_and_read

REPO = Path(__file__).resolve().parents[1]
TOY_RUN = [*FEDPM_TOY_BASE, "num_rounds=2", "strategy.eval_samples=2"]


def _run(tmp_path: Path, name: str, *overrides: str) -> list[dict]:
    return run_and_read([*TOY_RUN, *overrides], tmp_path / name)


def _strategy(*overrides: str) -> FedPM:
    cfg = compose_config([*TOY_RUN, *overrides])
    return build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))


def _job(model: str = "cnn", **params) -> ClientJob:
    return ClientJob(
        algorithm="fedpm",
        model=model,
        dataset="digits",
        partition="iid",
        num_clients=2,
        seed=0,
        params=params,
    )


# ------------------------------------------------------------------------- weights and layers
@pytest.mark.slow
@pytest.mark.parametrize("federated_eval", [True, False])
def test_clients_hold_data_back_only_for_a_federated_evaluation(federated_eval: bool) -> None:
    """The low-data regime's clients trained on 80 % of their images while nothing evaluated the
    rest: without federated evaluation every sample is trained on."""
    cfg = compose_config([*TOY_RUN, f"federated_eval={str(federated_eval).lower()}"])
    spec = client_job(cfg).data_spec()
    train, test = client_data(spec, 0)
    held = sum(len(part) for part in client_indices(spec, 0))
    kept_back = int(held * cfg.local_test_fraction) if federated_eval else 0
    assert (len(train), len(test)) == (held - kept_back, kept_back)
    assert kept_back > 0 or not federated_eval


def test_weights_rebuilt_in_another_process_match_bit_for_bit() -> None:
    script = (
        "import numpy as np, torch; from models.masked import build_masked, masked_layers, "
        "weight_hash; m = build_masked('masked_conv4', (1, 28, 28), 10, 1234); "
        "w = np.concatenate([t.numpy().ravel() for _, l in masked_layers(m) "
        "for t in (l.weight, l.bias)]); "
        "print(weight_hash(m), w.astype('<f4').tobytes().hex()[:4096], float(w.sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    torch.manual_seed(99)  # scores differ, frozen weights must not
    model = build_masked("masked_conv4", (1, 28, 28), 10, 1234)
    layers = [m for m in model.modules() if isinstance(m, MaskedConv2d | MaskedLinear)]
    weights = np.concatenate([t.numpy().ravel() for m in layers for t in (m.weight, m.bias)])
    assert out[0] == weight_hash(model)
    assert out[1] == weights.astype("<f4").tobytes().hex()[:4096]
    assert float(out[2]) == float(weights.sum())
    assert weight_hash(build_masked("masked_conv4", (1, 28, 28), 10, 1235)) != out[0]


def test_frozen_values_are_signed_constants_and_not_in_the_state_dict() -> None:
    model = build_masked("masked_cnn", (1, 8, 8), 10, 0)
    conv = model.conv2
    c = math.e * math.sqrt(1 / (32 * 9))
    np.testing.assert_allclose(np.unique(conv.weight.numpy()), [-c, c], rtol=1e-6)
    np.testing.assert_allclose(np.abs(conv.bias.numpy()), c, rtol=1e-6)
    assert all(k.endswith("_score") for k in model.state_dict())
    assert all(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(
        m.weight.numel() + m.bias.numel() for m in (model.conv1, model.conv2, model.fc1, model.fc2)
    )


def test_dense_and_masked_conv4_share_the_layout() -> None:
    dense = strategies.build_job_model(
        ClientJob("fedavg", "conv4", "digits", "iid", 2, 0), (1, 28, 28), 10
    )
    masked = build_fedpm_model(_job("conv4"), (1, 28, 28), 10)
    dense_layers = [m for m in dense.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    masked_modules = [m for m in masked.modules() if isinstance(m, MaskedConv2d | MaskedLinear)]
    assert [tuple(m.weight.shape) for m in dense_layers] == [
        tuple(m.weight.shape) for m in masked_modules
    ]
    assert tuple(masked_modules[4].weight.shape) == (256, 6272)  # Conv4 on 28×28: FC 6272→256
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in masked.modules())


@pytest.mark.parametrize("estimator", ["scaled", "ste"])
def test_score_gradients_are_nonzero_and_finite(estimator: str) -> None:
    torch.manual_seed(0)
    model = build_masked("masked_cnn", (1, 8, 8), 10, 0)
    set_estimator(model, estimator)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    nn.functional.cross_entropy(model.train()(x), y).backward()
    for name, param in model.named_parameters():
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_scaled_estimator_is_p_times_the_straight_through_gradient() -> None:
    torch.manual_seed(0)
    model = build_masked("masked_cnn", (1, 8, 8), 10, 0).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    grads = {}
    for estimator in ("scaled", "ste"):
        set_estimator(model, estimator)
        model.zero_grad()
        torch.manual_seed(7)  # the same masks in both passes
        nn.functional.cross_entropy(model(x), y).backward()
        grads[estimator] = model.fc2.weight_score.grad.clone()
    p = torch.sigmoid(model.fc2.weight_score.detach())
    torch.testing.assert_close(grads["scaled"], p * grads["ste"])


def test_eval_mode_applies_the_thresholded_mask() -> None:
    model = build_masked("masked_cnn", (1, 8, 8), 10, 0).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), model(x))  # deterministic
    with torch.no_grad():
        for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
            layer.weight_score.copy_(torch.where(layer.weight_score > 0, 50.0, -50.0))
            layer.bias_score.copy_(torch.where(layer.bias_score > 0, 50.0, -50.0))
    torch.testing.assert_close(model.train()(x), model.eval()(x))  # p ≈ 0/1: samples = threshold


# ---------------------------------------------------------------------------------- codec
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (13,), (3, 5, 7), (64, 1, 3, 3)])
def test_packbits_round_trip(shape: tuple[int, ...]) -> None:
    mask = np.random.default_rng(0).random(shape) < 0.3
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8 and packed.shape == ((mask.size + 7) // 8,)
    np.testing.assert_array_equal(unpack_mask(packed, shape, "x"), mask)


def test_wrong_length_or_dtype_is_a_reply_error() -> None:
    packed = pack_mask(np.ones(13, dtype=bool))
    with pytest.raises(ReplyError) as err:
        unpack_mask(packed[:-1], (13,), "fc.weight_score")
    assert err.value.reason == "mask-length"
    with pytest.raises(ReplyError) as err:
        unpack_mask(packed.astype(np.int16), (13,), "fc.weight_score")
    assert err.value.reason == "mask-dtype"


# -------------------------------------------------------------------------------- the Beta
def _closed_form_theta(rounds: list[list[np.ndarray]], reset: int, lam: float, eps: float):
    """θ after the last round from the sums since the last reset (rounds are 1-indexed)."""
    last_reset = (len(rounds) - 1) // reset * reset
    since = [np.clip(m, eps, 1 - eps) for masks in rounds[last_reset:] for m in masks]
    alpha = lam + sum(since)
    beta = lam + sum(1 - m for m in since)
    return (alpha - 1) / (alpha + beta - 2)


@pytest.mark.parametrize("reset_period", [1, 2, 3, 5])
@pytest.mark.parametrize("lambda0", [1.0, 2.5])
def test_beta_update_matches_the_closed_form(reset_period: int, lambda0: float) -> None:
    rng = np.random.default_rng(reset_period)
    posterior = BetaPosterior(lambda0, 0.01, reset_period)
    rounds: list[list[np.ndarray]] = []
    for server_round in range(1, 8):
        masks = [(rng.random((4, 3)) < 0.6).astype(np.uint8) for _ in range(rng.integers(1, 5))]
        rounds.append(masks)
        theta = posterior.update(
            server_round, {"w": sum(m.astype(np.int32) for m in masks)}, len(masks)
        )["w"]
        np.testing.assert_allclose(
            theta, _closed_form_theta(rounds, reset_period, lambda0, 0.01), rtol=1e-12
        )
        assert (theta > 0).all() and (theta < 1).all()


def test_reset_every_round_with_a_flat_prior_is_the_mean_of_clipped_masks() -> None:
    rng = np.random.default_rng(1)
    posterior = BetaPosterior(1.0, 0.01, 1)
    for server_round in (1, 2, 3):
        masks = [(rng.random(50) < 0.5).astype(np.uint8) for _ in range(6)]
        theta = posterior.update(
            server_round, {"w": sum(m.astype(np.int32) for m in masks)}, len(masks)
        )["w"]
        np.testing.assert_allclose(
            theta, np.mean([np.clip(m, 0.01, 0.99) for m in masks], axis=0), rtol=1e-12
        )


# ------------------------------------------------------------------------------- the client
def test_hash_mismatch_fails_loudly() -> None:
    job = _job(weight_hash="0123456789abcdef")
    model = build_fedpm_model(job, (1, 8, 8), 10)
    content = RecordDict({ARRAYS: ArrayRecord(model.state_dict())})
    with pytest.raises(WeightMismatchError, match="0123456789abcdef"):
        FedPMClient().receive(client_context(content, job, 3, None), model)


def test_client_loads_float16_scores_and_replies_packed_bits() -> None:
    model = build_fedpm_model(_job(), (1, 8, 8), 10)
    job = _job(weight_hash=weight_hash(model), estimator="ste", uplink_coding="packed")
    scores = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in scores.items()})})
    client = FedPMClient()
    ctx = client_context(content, job, 0, None)
    client.receive(ctx, model)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    reply = client.reply(ctx, model, TrainResult(0.0, 0))
    for name, packed in reply[ARRAYS].items():
        n = model.state_dict()[name].numel()
        assert packed.dtype == "uint8" and tuple(packed.shape) == ((n + 7) // 8,)


def _trained_scores(client_id: int, global_seed: int) -> dict[str, torch.Tensor]:
    """Scores after one client's local training, with torch's global RNG set to ``global_seed``."""
    job = _job(uplink_coding="packed")
    torch.manual_seed(0)  # the same starting scores every time
    model = build_fedpm_model(job, (1, 8, 8), 10)
    x, y = (
        torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
        torch.arange(48) % 10,
    )
    data = TensorData(x, y)
    client = FedPMClient()
    ctx = client_context(RecordDict(), job, client_id, None)
    client.prepare(ctx, model, data)
    torch.manual_seed(global_seed)
    trained = train_epochs(model, data, client.optimizer(ctx, model), 1, 16, seed=0)
    assert all(layer.rng is not None for _, layer in masked_layers(model))
    client.reply(ctx, model, trained)
    assert all(layer.rng is None for _, layer in masked_layers(model))  # stream forgotten
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_masks_come_from_the_clients_own_stream() -> None:
    """A client's training repeats whatever torch's global RNG holds; clients differ."""
    reference = _trained_scores(client_id=1, global_seed=0)
    for name, value in _trained_scores(client_id=1, global_seed=123).items():
        assert torch.equal(value, reference[name]), name
    other = _trained_scores(client_id=2, global_seed=0)
    assert any(not torch.equal(other[k], reference[k]) for k in reference)


# ---------------------------------------------------------------------------- whole runs
PACKED = ("strategy.uplink_coding=packed", "strategy.downlink_dtype=float32")


def test_run_accounting_uplink_is_one_bit_per_parameter(tmp_path: Path) -> None:
    rows = _run(tmp_path, "fedpm", *PACKED)
    model = build_masked("masked_cnn", (1, 8, 8), 10, 0)
    sizes = [v.numel() for v in model.state_dict().values()]
    n, mask_bytes = sum(sizes), sum((s + 7) // 8 for s in sizes)
    for row in rows:
        per_client = row["uplink_bytes"] / row["clients"]
        assert mask_bytes <= per_client < mask_bytes + 2048  # masks + fixed metadata
        assert row["downlink_bytes"] / row["clients"] < 4 * n + 4096  # float32 scores only
        assert row["fedpm_bpp_wire"] == pytest.approx(8 * per_client / n)
        assert 0.99 < row["fedpm_bpp_entropy"] <= 1 + math.log2(n) / n
        assert "fedpm_acc_threshold" not in row  # the thresholded accuracy is `accuracy`
        assert 0 <= row["fedpm_acc_sampled"] <= 1
    half = _run(
        tmp_path, "fp16", "strategy.uplink_coding=packed", "strategy.downlink_dtype=float16"
    )
    assert half[0]["downlink_bytes"] / half[0]["clients"] < 2 * n + 4096
    assert half[0]["uplink_bytes"] == rows[0]["uplink_bytes"]


def test_exported_model_reproduces_thresholded_accuracy(tmp_path: Path) -> None:
    rows = _run(tmp_path, "run")  # the run writes the export at its end
    strategy = _strategy()
    exported = tmp_path / "run" / EXPORT_FILE
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["exported_model_bytes"] == exported.stat().st_size
    assert exported.stat().st_size < strategy.num_params / 8 + 1024  # seed + 1 bit/param + header
    model = load_supermask(exported)
    spec = strategy.job.data_spec()
    info = dataset_info(spec)
    data = TensorData.from_arrays(central_test(spec), info.mean, info.std, torch.device("cpu"))
    assert evaluate(model, data)[1] == rows[-1]["accuracy"]


def test_resume_continues_the_posterior_exactly(tmp_path: Path) -> None:
    straight = _run(tmp_path, "straight", "strategy.reset_period=3")
    _run(tmp_path, "split", "strategy.reset_period=3", "num_rounds=1")
    resumed = _run(tmp_path, "split", "strategy.reset_period=3", "resume=true")
    keys = ("accuracy", "fedpm_acc_sampled", "fedpm_density", "uplink_bytes")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


class TruncatingClient(FedPMClient):
    """Client 0 drops the last byte of its first mask."""

    def reply(self, ctx, model, trained):
        records = super().reply(ctx, model, trained)
        if ctx.client_id == 0:
            arrays = {k: a.numpy() for k, a in records[ARRAYS].items()}
            first = next(iter(arrays))
            arrays[first] = arrays[first][:-1]
            records[ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return records


register_algorithm(Algorithm("fedpm-truncating", FedPM, TruncatingClient, build_fedpm_model))


def test_wrong_length_mask_is_rejected_and_counted(tmp_path: Path) -> None:
    rows = _run(tmp_path, "bad", "strategy.name=fedpm-truncating")
    assert [r["rejected"] for r in rows] == [{"mask-length": 1}] * 2
    assert [(r["clients"], r["failures"]) for r in rows] == [(3, 1)] * 2


def test_direct_decode_rejects_a_short_mask(make_grid) -> None:
    strategy = _strategy(*PACKED)
    arrays = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in strategy.shapes.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), make_grid(4, 1)))
    name = next(iter(strategy.shapes))
    size = math.prod(strategy.shapes[name])
    masks = {k: pack_mask(np.zeros(s, dtype=bool)) for k, s in strategy.shapes.items()}
    masks[name] = np.zeros((size + 7) // 8 - 1, np.uint8)
    update = ClientUpdate(
        0, 1, None, {ARRAYS: ArrayRecord({k: Array(v) for k, v in masks.items()})}
    )
    with pytest.raises(ReplyError, match=name):
        strategy.decode(update)


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, key",
    [
        ("strategy.reset_period=0", "strategy.reset_period"),
        ("strategy.lambda0=0.5", "strategy.lambda0"),
        ("strategy.eps=0.5", "strategy.eps"),
        ("strategy.estimator=reinforce", "strategy.estimator"),
        ("strategy.eval_samples=-1", "strategy.eval_samples"),
        ("strategy.weight_seed=-3", "strategy.weight_seed"),
        ("strategy.downlink_dtype=int8", "strategy.downlink_dtype"),
        ("strategy.local_lr=0", "strategy.local_lr"),
        ("model=resnet18", "model='resnet18'"),
    ],
)
def test_bad_config_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _strategy(override)


def test_weight_seed_and_hash_travel_in_the_job() -> None:
    derived = _strategy()
    explicit = _strategy("strategy.weight_seed=5")
    assert explicit.job.params["weight_seed"] == 5
    assert derived.job.params["weight_seed"] != 5
    assert derived.job.params["weight_hash"] != explicit.job.params["weight_hash"]
    model = build_fedpm_model(explicit.job, (1, 8, 8), 10)
    assert weight_hash(model) == explicit.job.params["weight_hash"]


def test_mask_draws_are_bernoulli_and_seeded() -> None:
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(20_000, 1)
    draws = draw_mask(p, MaskRNG(3))
    assert draws.dtype == p.dtype and draws.shape == p.shape
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    frequency = draws.mean(dim=0)
    assert frequency[0] == 0 and frequency[-1] == 1
    assert torch.allclose(frequency[1:4], torch.tensor([0.1, 0.5, 0.9]), atol=0.01)  # ~4.5 sigma
    assert torch.equal(draws, draw_mask(p, MaskRNG(3)))
    assert not torch.equal(draws, draw_mask(p, MaskRNG(4)))
    as_bool = draw_bool_mask(p, MaskRNG(3))
    assert as_bool.dtype == torch.bool and torch.equal(as_bool, draws.bool())


def test_mask_rng_continues_its_stream_and_follows_the_dtype() -> None:
    rng, again = MaskRNG(5), MaskRNG(5)
    first, second = rng.uniform(torch.zeros(3, 4)), rng.uniform(torch.zeros(12))
    assert not torch.equal(first.ravel(), second)  # a stream, not a restart per call
    assert torch.equal(torch.cat([first.ravel(), second]), again.uniform(torch.zeros(24)))
    assert ((first >= 0) & (first < 1)).all()
    assert again.uniform(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mask_rng_draws_on_the_accelerator() -> None:
    p = torch.full((1000,), 0.5, device="cuda")
    draws = draw_mask(p, MaskRNG(3, "cuda"))
    assert draws.device == p.device
    assert torch.equal(draws, draw_mask(p, MaskRNG(3, "cuda")))


# ---------------------------------------------------------------------------- layer monitor
def _sigma(scores: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))


def _monitor_round(make_grid, scores: dict[str, np.ndarray], masks: list[dict], examples: list):
    """One aggregation of hand-made masks from the global ``scores``: (strategy, updates, new
    global arrays), each update decoded, its ‖Δ_c‖ taken and folded as ``aggregate_train`` does."""
    strategy = _strategy(*PACKED)
    arrays = ArrayRecord({k: Array(v) for k, v in scores.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), make_grid(4, 1)))
    updates = []
    for client_id, (mask, n) in enumerate(zip(masks, examples, strict=True)):
        packed = ArrayRecord({k: Array(pack_mask(v)) for k, v in mask.items()})
        update = ClientUpdate(client_id, n, None, {ARRAYS: packed})
        update.payload = strategy.decode(update)
        update.delta_norms = strategy.delta_norms(update.payload)
        strategy.fold(update)
        updates.append(update)
    new = strategy.aggregate(1, updates)
    strategy.last_updates = updates
    return strategy, updates, new, arrays


def test_monitor_agg_eff_of_opposite_masks_by_hand(make_grid) -> None:
    """θ = 1/2 everywhere; client 0 (1 example) sends all ones, client 1 (3 examples) all zeros:
    Δ = ±0.49 everywhere and, counted once each as the posterior counts them, they cancel:
    Σ s_c Δ_c = 0, agg_eff = 0; the posterior's θ stays 1/2, so no layer moves."""
    shapes = _strategy().shapes
    scores = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    masks = [{k: np.full(s, v, np.uint8) for k, s in shapes.items()} for v in (1, 0)]
    strategy, updates, new, old = _monitor_round(make_grid, scores, masks, [1, 3])
    for update in updates:
        assert update.delta_norms == {
            k: pytest.approx(0.49 * math.sqrt(math.prod(s))) for k, s in shapes.items()
        }
    mean = strategy.mean_client_delta()
    assert sorted(mean) == sorted(shapes)
    for name in shapes:
        np.testing.assert_array_equal(mean[name], 0.0, err_msg=name)
    assert strategy.monitor_weights() == [1.0, 1.0]
    values = LayerMonitor(ref_round=2, view=strategy).observe(
        1, old, new, mean, [u.delta_norms for u in updates], strategy.monitor_weights()
    )
    layers = {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert values["layer_agg_eff"] == {k: 0.0 for k in layers}
    assert values["layer_rel_update"] == {k: 0.0 for k in layers}


def test_monitor_deltas_are_clipped_masks_minus_the_previous_theta(make_grid) -> None:
    """Δ_c = clip(m_c, ε, 1−ε) − σ(score_{t−1}); their mean counts every client once (as the
    posterior does), and with one reset per round and λ0 = 1 it is the step θ_t − θ_{t−1}."""
    rng = np.random.default_rng(3)
    shapes = _strategy().shapes
    scores = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    masks = [{k: (rng.random(s) < 0.5).astype(np.uint8) for k, s in shapes.items()} for _ in "abc"]
    strategy, updates, new, _ = _monitor_round(make_grid, scores, masks, [5, 1, 2])
    theta = {k: _sigma(v) for k, v in scores.items()}
    deltas = [{k: np.clip(m[k], 0.01, 0.99) - theta[k] for k in shapes} for m in masks]
    for update, delta in zip(updates, deltas, strict=True):
        for name in shapes:
            assert update.delta_norms[name] == pytest.approx(l2_norm(delta[name]), rel=1e-12)
    mean = strategy.mean_client_delta()
    for name in shapes:
        by_hand = np.mean([d[name] for d in deltas], axis=0)
        np.testing.assert_allclose(mean[name], by_hand, rtol=1e-12, atol=1e-15)
        step = _sigma(new[name].numpy()) - theta[name]  # new scores are float32 logit(θ_t)
        np.testing.assert_allclose(mean[name], step, atol=1e-6)


def test_run_reports_the_layer_monitor_on_theta_with_plots(tmp_path: Path) -> None:
    """A whole FedPM run fills every monitor key per conv/linear layer, and plots without a
    warning (it used to report no layer and warn about a blank heatmap every round)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", module=r"(server_app\.plots|matplotlib)")
        rows = _run(tmp_path, "run", "plots=true", "monitor.ref_round=1")
    layers = {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    for row in rows:
        for key in ("layer_rel_update", "layer_cos_ref", "layer_l2_ref", "layer_agg_eff"):
            assert set(row[key]) == layers, key
        assert all(math.isfinite(v) and v > 0 for v in row["layer_rel_update"].values())
        assert all(0 < v <= 1 for v in row["layer_agg_eff"].values())
    assert rows[0]["layer_l2_ref"] == {k: 0.0 for k in layers}
    assert all(v > 0 for v in rows[1]["layer_l2_ref"].values())
    plots = tmp_path / "run" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted([*PLOTS, BPP_PLOT])


# ----------------------------------------------------------------------------- coded uplink
def test_range_and_packed_coding_give_the_same_model_bit_for_bit(tmp_path: Path) -> None:
    """Coding is lossless: with the same seed and the same uint16 downlink, every round's model
    and measure agree; only the bytes sent differ, and the coded ones are fewer once θ moved."""
    keys = ("accuracy", "loss", "fedpm_acc_sampled", "fedpm_density", "fedpm_bpp_ideal")
    coded = _run(tmp_path, "range", "num_rounds=3")
    packed = _run(tmp_path, "packed", "num_rounds=3", "strategy.uplink_coding=packed")
    assert [[r[k] for k in keys] for r in coded] == [[r[k] for k in keys] for r in packed]
    for a, b in zip(coded, packed, strict=True):  # the same θ; the job names its coding
        assert abs(a["downlink_bytes"] - b["downlink_bytes"]) <= a["clients"] * len("packed")
    for name in ("range", "packed"):
        assert (tmp_path / name / "final_model.fedpm").exists()
    assert (tmp_path / "range" / EXPORT_FILE).read_bytes() == (
        tmp_path / "packed" / EXPORT_FILE
    ).read_bytes()
    assert coded[-1]["uplink_bytes"] < packed[-1]["uplink_bytes"]


def test_run_accounting_of_the_coded_uplink(tmp_path: Path, capsys) -> None:
    rows = _run(tmp_path, "fedpm", "num_rounds=3")
    lines = [line for line in capsys.readouterr().out.splitlines() if "] round " in line]
    assert len(lines) == 3
    for line, row in zip(lines, rows, strict=True):  # the round line shows the bpp measures
        assert f"bpp {row['fedpm_bpp_wire']:.3f} (ideal {row['fedpm_bpp_ideal']:.3f}" in line
    n = _strategy().num_params
    for row in rows:
        per_client = row["uplink_bytes"] / row["clients"]
        assert row["fedpm_bpp_wire"] == pytest.approx(8 * per_client / n)
        assert row["fedpm_bpp_stream"] < row["fedpm_bpp_wire"]  # the masks alone
        assert row["downlink_bytes"] / row["clients"] < 2 * n + 4096  # uint16 θ
        assert row["fedpm_bpp_packed"] == pytest.approx(1.0, abs=0.01)
        assert 0 < row["fedpm_bpp_ideal"] <= row["fedpm_bpp_stream"] + 0.01
        assert row["fedpm_decode_s"] > 0 and row["fedpm_encode_s"] > 0
    last = rows[-1]
    assert last["fedpm_bpp_stream"] < last["fedpm_bpp_packed"]
    assert last["fedpm_coded_frac"] > 0.5 and 0 <= last["fedpm_coder_overhead"] < 0.1


def test_client_codes_against_the_received_theta_and_shrinks_once_polarised() -> None:
    model = build_fedpm_model(_job(), (1, 8, 8), 10)
    job = _job(weight_hash=weight_hash(model))
    rng = np.random.default_rng(0)
    sizes = {}
    for label, spread in (("flat", 0.0), ("polarised", 6.0)):
        theta = {
            k: quantize_prior(sigmoid(spread * rng.choice([-1.0, 1.0], size=tuple(v.shape))))
            for k, v in model.state_dict().items()
        }
        content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in theta.items()})})
        client = FedPMClient()
        ctx = client_context(content, job, 0, None)
        client.receive(ctx, model)
        for name, score in model.state_dict().items():  # trains from logit(q / 2^16)
            expected = logit(theta[name].astype(np.float64) / 65536).astype(np.float32)
            np.testing.assert_array_equal(score.numpy(), expected)
        reply = client.reply(ctx, model, TrainResult(0.0, 0))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        stream = reply[ARRAYS][STREAM].numpy()
        decoded = decode_masks(stream, reply[CODE], shapes, theta)
        assert set(decoded) == set(shapes)
        sizes[label] = stream.size
    packed = sum((math.prod(s) + 7) // 8 for s in shapes.values())
    assert sizes["flat"] == packed  # θ = 1/2: every layer falls back to packed bits
    assert sizes["polarised"] < packed / 4


def _range_coded(job: ClientJob, client: int, priors: dict, rng: np.random.Generator):
    """Masks sampled from θ itself, range-coded against it."""
    return encode_masks({k: rng.random(q.shape) < q / 65536 for k, q in priors.items()}, priors)


def _coded_replies(corrupt: dict[int, str], absent: frozenset[int] = frozenset()):
    return coded_replies(_range_coded, corrupt, absent)


@pytest.mark.parametrize(
    ("kind", "workers"),
    [(kind, 0) for kind in ("truncate", "extend", "garble", "flag")]
    # the decoding processes report the same reasons (slow: the pool spawns them)
    + [pytest.param(kind, 2, marks=pytest.mark.slow) for kind in ("truncate", "garble")],
)
def test_a_bad_coded_stream_is_counted_and_never_aggregated(
    make_grid, kind: str, workers: int
) -> None:
    """The global model after a round with client 1's stream damaged equals the one after the
    same round without client 1 at all, bit for bit; the damage is counted under its reason."""
    results = {}
    for label, handler in (
        ("damaged", _coded_replies({1: kind})),
        ("without", _coded_replies({}, frozenset({1}))),
    ):
        strategy = _strategy(f"strategy.decode_workers={workers}")
        assert (strategy.pool is not None) == (workers > 0)
        rng = np.random.default_rng(9)
        arrays = ArrayRecord(
            {
                k: Array(rng.normal(scale=3, size=s).astype(np.float32))
                for k, s in strategy.shapes.items()
            }
        )
        grid = make_grid(4, 1, handler)
        replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        new, _ = strategy.aggregate_train(1, replies)
        if strategy.pool is not None:
            strategy.pool.close()
        results[label] = ({k: a.numpy() for k, a in new.items()}, strategy.stats)
    (damaged, stats), (without, reference) = results["damaged"], results["without"]
    for name in damaged:
        np.testing.assert_array_equal(damaged[name], without[name], err_msg=name)
    assert stats.clients == reference.clients == 3 and stats.failures == 1
    expected = {"truncate": {"mask-length"}, "extend": {"mask-length"}, "flag": {"mask-flag"}}
    assert set(stats.rejected) <= expected.get(kind, {"mask-crc", "mask-stream"})
    assert sum(stats.rejected.values()) == 1


@pytest.mark.slow
def test_decoding_processes_give_the_same_run_as_the_server_process(tmp_path: Path) -> None:
    keys = ("accuracy", "fedpm_acc_sampled", "fedpm_density", "uplink_bytes", "fedpm_bpp_ideal")
    pooled = _run(tmp_path, "pool", "strategy.decode_workers=2")
    inline = _run(tmp_path, "inline", "strategy.decode_workers=0")
    assert [[r[k] for k in keys] for r in pooled] == [[r[k] for k in keys] for r in inline]


def test_auto_decode_workers_wait_for_enough_clients() -> None:
    assert _strategy().pool is None  # 4 clients a round
    many = _strategy("num_clients=32", "clients_per_round=32")
    assert (many.pool is not None) == ((os.cpu_count() or 1) >= 4)
    if many.pool is not None:
        assert many.pool.workers == min((os.cpu_count() or 1) // 2, 4)
    assert _strategy("strategy.uplink_coding=packed", "strategy.decode_workers=2").pool is None
