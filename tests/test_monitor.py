"""Tests for server_app.monitor (per-layer updates) and server_app.results (the run record)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from server_app.monitor import LayerMonitor, aggregation_effectiveness, relative_layer_update
from server_app.results import (
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLog,
    read_metrics,
    summarize,
    write_summary,
)
from strategies.core.layers import is_layer_weight
from strategies.fedpm.strategy import MaskScores
from strategies.numeric.arrays import l2_norm


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(values) for name, values in arrays.items()})


# ------------------------------------------------------------------------------------- monitor
def test_relative_layer_update_by_hand() -> None:
    previous = _record(
        {
            "conv.weight": np.array([[[[3.0, 0.0]], [[0.0, 4.0]]]], dtype=np.float32),  # 4-D
            "conv.bias": np.array([1.0, 1.0], dtype=np.float32),
            "fc.weight": np.ones((2, 2), dtype=np.float32),
            "bn.weight": np.ones(3, dtype=np.float32),  # 1-D: not a layer weight
            "bn.num_batches_tracked": np.array(5, dtype=np.int64),
            "dead.weight": np.zeros((2, 2), dtype=np.float32),
        }
    )
    current = _record(
        {
            "conv.weight": np.array([[[[3.0, 3.0]], [[4.0, 4.0]]]], dtype=np.float32),
            "conv.bias": np.array([9.0, 9.0], dtype=np.float32),
            "fc.weight": np.array([[1.0, 1.0], [1.0, 2.0]], dtype=np.float32),
            "bn.weight": np.full(3, 7.0, dtype=np.float32),
            "bn.num_batches_tracked": np.array(6, dtype=np.int64),
            "dead.weight": np.ones((2, 2), dtype=np.float32),
        }
    )
    updates = relative_layer_update(previous, current)
    assert list(updates) == ["conv.weight", "fc.weight", "dead.weight"]
    assert updates["conv.weight"] == pytest.approx(1.0)  # ‖(0,3,4,0)‖ / ‖(3,0,0,4)‖ = 5/5
    assert updates["fc.weight"] == pytest.approx(0.5)  # ‖(0,0,0,1)‖ / ‖ones(2,2)‖ = 1/2
    assert math.isnan(updates["dead.weight"])  # zero previous norm


def test_relative_layer_update_of_unchanged_model_is_zero() -> None:
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3) + 1}
    assert relative_layer_update(_record(arrays), _record(arrays)) == {"a.weight": 0.0}


def test_is_layer_weight() -> None:
    assert is_layer_weight("features.0.weight", np.zeros((2, 3, 3, 3)))
    assert is_layer_weight("fc.weight", np.zeros((2, 3)))
    assert not is_layer_weight("bn.weight", np.zeros(3))
    assert not is_layer_weight("fc.bias", np.zeros((2, 3)))


# ------------------------------------------------------------------------------------- results
def _row(round_: int, **extra) -> dict:
    row = {
        "round": round_,
        "accuracy": 0.1 * round_,
        "loss": 2.0 / round_,
        "uplink_bytes": 100 * round_,
        "downlink_bytes": 1000,
        "failures": round_ % 2,
    }
    row.update(extra)
    return row


def test_metrics_log_appends_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.append(_row(1, train_loss=float("nan"), nested={"x": float("inf"), "ok": 1.5}))
    log.append(_row(2, series=[1.0, float("-inf")]))
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert first["train_loss"] is None
    assert first["nested"] == {"x": None, "ok": 1.5}
    assert json.loads(lines[1])["series"] == [1.0, None]
    assert log.rows == read_metrics(tmp_path)


def test_metrics_log_keeps_rows_through_checkpoint_round(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for round_ in range(1, 6):
        log.append(_row(round_))
    resumed = MetricsLog(tmp_path, keep_through_round=3)
    assert [r["round"] for r in resumed.rows] == [1, 2, 3]
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    resumed.append(_row(4))
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert MetricsLog(tmp_path).rows == []  # a fresh run starts an empty log
    assert (tmp_path / METRICS_FILE).read_text() == ""


def test_read_metrics_without_file(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) == []


def test_summarize_numbers() -> None:
    rows = [_row(1), _row(2, accuracy=None), _row(3, accuracy=0.25), _row(4, accuracy=0.2)]
    summary = summarize(rows, strategy="fedavg", seed=3)
    assert summary == {
        "final_accuracy": 0.2,
        "best_accuracy": 0.25,
        "final_loss": 0.5,
        "uplink_bytes_total": 1000,
        "downlink_bytes_total": 4000,
        "rounds": 4,
        "failures_total": 2,
        "strategy": "fedavg",
        "seed": 3,
    }


def test_summarize_empty_run() -> None:
    summary = summarize([])
    assert summary["rounds"] == 0 and summary["final_accuracy"] is None
    assert summary["best_accuracy"] is None and summary["final_loss"] is None
    assert summary["uplink_bytes_total"] == summary["failures_total"] == 0


def test_write_summary_is_strict_json(tmp_path: Path) -> None:
    write_summary(tmp_path, {"final_loss": float("nan"), "rounds": 2})
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == {"final_loss": None, "rounds": 2}


# ----------------------------------------------------------------------------- LayerMonitor
def _layers(**layers: list[list[float]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.array(v, dtype=np.float32)) for k, v in layers.items()})


def test_layer_monitor_two_round_toy_run_by_hand() -> None:
    """Round 1 moves W0 -> W1, round 2 moves W1 -> W2; reference round is 1."""
    w0 = _layers(**{"a.weight": [[1.0, 0.0], [0.0, 0.0]], "a.bias": [[9.0]]})
    w1 = _layers(**{"a.weight": [[1.0, 1.0], [0.0, 0.0]], "a.bias": [[9.0]]})
    w2 = _layers(**{"a.weight": [[0.0, 2.0], [0.0, 0.0]], "a.bias": [[9.0]]})
    monitor = LayerMonitor(ref_round=1)
    deltas = [np.array([[0.0, 2.0], [0.0, 0.0]]), np.array([[0.0, -1.0], [0.0, 0.0]])]
    mean = {"a.weight": (deltas[0] + deltas[1]) / 2}
    norms = [{"a.weight": l2_norm(d)} for d in deltas]
    first = monitor.observe(1, w0, w1, mean, norms, [1, 1])
    assert first["layer_rel_update"] == {"a.weight": pytest.approx(1.0)}  # |(0,1)| / |(1,0)|
    assert first["layer_cos_ref"] == {"a.weight": pytest.approx(1.0)}
    assert first["layer_l2_ref"] == {"a.weight": 0.0}
    # ‖(2 - 1)/2‖ / ((2 + 1)/2) = 0.5 / 1.5
    assert first["layer_agg_eff"] == {"a.weight": pytest.approx(1 / 3)}
    second = monitor.observe(2, w1, w2)
    assert second["layer_rel_update"] == {"a.weight": pytest.approx(np.sqrt(2) / np.sqrt(2))}
    # cos((1,1), (0,2)) = 2 / (√2 · 2); ‖(0,2) − (1,1)‖ = √2
    assert second["layer_cos_ref"] == {"a.weight": pytest.approx(1 / np.sqrt(2))}
    assert second["layer_l2_ref"] == {"a.weight": pytest.approx(np.sqrt(2))}
    assert "layer_agg_eff" not in second


def test_layer_monitor_reports_reference_values_from_the_reference_round_on() -> None:
    w = _layers(**{"a.weight": [[1.0, 2.0]]})
    monitor = LayerMonitor(ref_round=2)
    assert "layer_cos_ref" not in monitor.observe(1, w, w)
    assert "layer_cos_ref" in monitor.observe(2, w, w)
    restored = LayerMonitor(ref_round=2)
    restored.load_state_dict(monitor.state_dict())
    assert restored.observe(3, w, w)["layer_cos_ref"] == {"a.weight": pytest.approx(1.0)}


def test_agg_eff_weights_clients_by_their_aggregation_weight() -> None:
    # mean = (3·(1, 0) + 1·(−1, 0)) / 4 = (0.5, 0); both norms are 1
    mean = {"w.weight": np.array([[0.5, 0.0]])}
    norms = [{"w.weight": 1.0}, {"w.weight": 1.0}]
    assert aggregation_effectiveness(mean, norms, [3, 1]) == {"w.weight": pytest.approx(0.5)}


def test_agg_eff_is_one_when_clients_agree_and_reports_layer_weights_only() -> None:
    rng = np.random.default_rng(0)
    direction = {"w.weight": rng.normal(size=(3, 4)), "w.bias": rng.normal(size=4)}
    scales = [1.0, 2.0, 0.5]
    weights = [1, 2, 3]
    shares = np.array(weights) / sum(weights)
    mean = {
        n: sum(s * k * v for s, k in zip(shares, scales, strict=True)) for n, v in direction.items()
    }
    norms = [{n: k * l2_norm(v) for n, v in direction.items()} for k in scales]
    assert aggregation_effectiveness(mean, norms, weights) == {"w.weight": pytest.approx(1.0)}


# ------------------------------------------------------------------- FedPM: mask probabilities
def _scores(theta: list[list[float]]) -> np.ndarray:
    """FedPM's wire form of mask probabilities θ: float32 logit(θ)."""
    values = np.array(theta, dtype=np.float64)
    return (np.log(values) - np.log1p(-values)).astype(np.float32)


def _fedpm_record(weight: list[list[float]], bias: list[float]) -> ArrayRecord:
    return ArrayRecord(
        {
            "fc.weight_score": Array(_scores(weight)),
            "fc.bias_score": Array(_scores([bias])[0]),  # 1-D: a bias mask, not reported
        }
    )


def test_fedpm_scores_are_reported_per_layer_on_theta_by_hand() -> None:
    """FedPM's global arrays are logit(θ) named `<layer>.weight_score`: the monitor reports
    `<layer>.weight` with every value computed on θ = σ(score), not on the scores."""
    theta0 = [[0.5, 0.5], [0.5, 0.5]]
    theta1 = [[0.8, 0.5], [0.5, 0.5]]
    theta2 = [[0.8, 0.9], [0.5, 0.5]]
    monitor = LayerMonitor(ref_round=1, view=MaskScores())
    first = monitor.observe(
        1, _fedpm_record(theta0, [0.5]), _fedpm_record(theta1, [0.9]), None, [], []
    )
    assert set(first) == {"layer_rel_update", "layer_cos_ref", "layer_l2_ref"}
    # ‖θ1 − θ0‖ = 0.3, ‖θ0‖ = √(4 · 0.25) = 1 (on the scores it would be ln 4 / 0 = nan)
    assert first["layer_rel_update"] == {"fc.weight": pytest.approx(0.3, rel=1e-6)}
    assert first["layer_l2_ref"] == {"fc.weight": 0.0}
    second = monitor.observe(2, _fedpm_record(theta1, [0.9]), _fedpm_record(theta2, [0.1]))
    norm1 = math.sqrt(0.8**2 + 3 * 0.25)
    norm2 = math.sqrt(0.8**2 + 0.9**2 + 2 * 0.25)
    assert second["layer_rel_update"] == {"fc.weight": pytest.approx(0.4 / norm1, rel=1e-6)}
    cos = (0.64 + 0.45 + 0.5) / (norm1 * norm2)
    assert second["layer_cos_ref"] == {"fc.weight": pytest.approx(cos, rel=1e-6)}
    assert second["layer_l2_ref"] == {"fc.weight": pytest.approx(0.4, rel=1e-6)}
    assert monitor.state_dict().keys() == {"fc.weight"}
    np.testing.assert_allclose(monitor.state_dict()["fc.weight"], theta1, rtol=1e-6)


def test_fedpm_agg_eff_is_keyed_by_the_weight_name() -> None:
    """FedPM supplies Σ s_c Δ_c and ‖Δ_c‖ under its score names, Δ_c already on θ."""
    mean = {"fc.weight_score": np.full((2, 2), -0.245), "fc.bias_score": np.full(2, -0.245)}
    norms = [{name: 0.49 * math.sqrt(v.size) for name, v in mean.items()} for _ in range(2)]
    # Δ_1 = +0.49, Δ_2 = −0.49 everywhere, weights 1 and 3: ‖−0.245·1‖ / (0.49·‖1‖) = 0.5
    effectiveness = aggregation_effectiveness(mean, norms, [1, 3], MaskScores())
    assert effectiveness == {"fc.weight": pytest.approx(0.5)}
    values = LayerMonitor(ref_round=5, view=MaskScores()).observe(
        1, _fedpm_record([[0.5]], [0.5]), _fedpm_record([[0.5]], [0.5]), mean, norms, [1, 3]
    )
    assert values["layer_agg_eff"] == {"fc.weight": pytest.approx(0.5)}


def test_fedpm_extreme_scores_give_probabilities_without_warnings() -> None:
    record = ArrayRecord(
        {"fc.weight_score": Array(np.array([[-1e30, -800.0], [800.0, 3e38]], np.float32))}
    )
    zeros = ArrayRecord({"fc.weight_score": Array(np.zeros((2, 2), np.float32))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = LayerMonitor(ref_round=1, view=MaskScores()).observe(1, zeros, record)
    # θ: 0.5 everywhere -> (0, 0, 1, 1): ‖(−.5, −.5, .5, .5)‖ / ‖(.5, .5, .5, .5)‖ = 1
    assert values["layer_rel_update"] == {"fc.weight": pytest.approx(1.0)}
    assert values["layer_l2_ref"] == {"fc.weight": 0.0}
