"""Layer-wise view of how the global model moves: how a user *sees* layer-wise inertia.

Per conv/linear weight and per round:
- ``layer_rel_update``: ‖W_t − W_{t−1}‖ / ‖W_{t−1}‖;
- ``layer_cos_ref`` and ``layer_l2_ref``: cosine similarity and L2 distance of W_t to the
  weights right after round ``ref_round`` (reported from that round on);
- ``layer_agg_eff``: aggregation effectiveness ‖Σ_c w_c Δ_c‖ / Σ_c w_c ‖Δ_c‖ over the round's
  client updates Δ_c = θ_c − W_{t−1} (w_c = the aggregation weights). 1 means clients agree;
  near 0, their updates cancel out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord


def is_layer_weight(name: str, values: np.ndarray) -> bool:
    """Conv and linear weight tensors (the layers the monitor reports)."""
    return name.endswith("weight") and values.ndim >= 2


def _layers(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    layers = {}
    for name, array in arrays.items():
        values = array.numpy()
        if is_layer_weight(name, values):
            layers[name] = values.astype(np.float64)
    return layers


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def relative_layer_update(previous: ArrayRecord, current: ArrayRecord) -> dict[str, float]:
    """‖W_t − W_{t−1}‖ / ‖W_{t−1}‖ for every conv/linear weight."""
    old = _layers(previous)
    return {
        name: _ratio(float(np.linalg.norm(new - old[name])), float(np.linalg.norm(old[name])))
        for name, new in _layers(current).items()
    }


def aggregation_effectiveness(
    deltas: Iterable[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    mean: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """‖Σ w_c Δ_c‖ / Σ w_c ‖Δ_c‖ per layer weight (weights normalised to sum to 1).

    ``deltas`` is consumed one client at a time, so a generator keeps memory at one update.
    ``mean`` is Σ w_c Δ_c per layer when the strategy has it already (its aggregate is that
    mean plus the old weights): then only the clients' norms are computed here.
    """
    share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    means: dict[str, np.ndarray] = {} if mean is None else dict(mean)
    spread: dict[str, float] = {}
    for s, delta in zip(share, deltas, strict=True):
        for name, values in delta.items():
            if not is_layer_weight(name, values):
                continue
            flat = values.ravel()
            if mean is None:
                if name not in means:
                    means[name] = np.zeros(flat.shape, dtype=flat.dtype)
                means[name] += flat.dtype.type(s) * flat  # a monitor: the update's own precision
            spread[name] = spread.get(name, 0.0) + s * math.sqrt(float(np.dot(flat, flat)))
    return {
        name: _ratio(float(np.linalg.norm(means[name].ravel())), total)
        for name, total in spread.items()
    }


class LayerMonitor:
    """Computes the per-layer monitor values round by round; keeps the reference snapshot."""

    def __init__(self, ref_round: int) -> None:
        self.ref_round = ref_round
        self.reference: dict[str, np.ndarray] = {}

    def observe(
        self,
        server_round: int,
        previous: ArrayRecord,
        current: ArrayRecord,
        deltas: Iterable[Mapping[str, np.ndarray]] | None = None,
        weights: Sequence[float] | None = None,
        mean_delta: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, dict[str, float]]:
        """The monitor keys for this round's metrics line (``mean_delta``: see
        :func:`aggregation_effectiveness`)."""
        values = {"layer_rel_update": relative_layer_update(previous, current)}
        layers = _layers(current)
        if server_round == self.ref_round:
            self.reference = layers
        if self.reference and server_round >= self.ref_round:
            values["layer_cos_ref"] = {
                name: _ratio(
                    float(np.vdot(ref, layers[name])),
                    float(np.linalg.norm(ref) * np.linalg.norm(layers[name])),
                )
                for name, ref in self.reference.items()
            }
            values["layer_l2_ref"] = {
                name: float(np.linalg.norm(layers[name] - ref))
                for name, ref in self.reference.items()
            }
        if deltas is not None and weights:
            values["layer_agg_eff"] = aggregation_effectiveness(deltas, weights, mean_delta)
        return values

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.reference)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.reference = {name: np.asarray(v, dtype=np.float64) for name, v in state.items()}
