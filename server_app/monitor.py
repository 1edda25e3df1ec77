"""Layer-wise view of how the global model moves: how a user *sees* layer-wise inertia.

Per conv/linear weight and per round:
- ``layer_rel_update``: ‖W_t − W_{t−1}‖ / ‖W_{t−1}‖;
- ``layer_cos_ref`` and ``layer_l2_ref``: cosine similarity and L2 distance of W_t to the
  weights right after round ``ref_round`` (reported from that round on);
- ``layer_agg_eff``: aggregation effectiveness ‖Σ_c w_c Δ_c‖ / Σ_c w_c ‖Δ_c‖ over the round's
  client updates Δ_c = θ_c − W_{t−1} (w_c = the aggregation weights). 1 means clients agree;
  near 0, their updates cancel out. The strategy supplies Σ_c w_c Δ_c (its aggregate holds it)
  and each client's ‖Δ_c‖, taken when its reply arrived (``FedSparseStrategy.delta_norms``), so
  the monitor never needs the clients' updates again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord

from strategies.arrays import dot, l2_norm


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
        name: _ratio(l2_norm(new - old[name]), l2_norm(old[name]))
        for name, new in _layers(current).items()
    }


def aggregation_effectiveness(
    mean: Mapping[str, np.ndarray],
    norms: Sequence[Mapping[str, float]],
    weights: Sequence[float],
) -> dict[str, float]:
    """‖Σ w_c Δ_c‖ / Σ w_c ‖Δ_c‖ for every layer weight in ``mean`` (= Σ w_c Δ_c, the weights
    normalised to sum to 1), given each client's ‖Δ_c‖ per array name in ``norms``."""
    share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    spread: dict[str, float] = {}
    for s, client in zip(share, norms, strict=True):
        for name, value in client.items():
            if name in mean and is_layer_weight(name, mean[name]):
                spread[name] = spread.get(name, 0.0) + s * value
    return {name: _ratio(l2_norm(mean[name]), total) for name, total in spread.items()}


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
        mean_delta: Mapping[str, np.ndarray] | None = None,
        norms: Sequence[Mapping[str, float]] = (),
        weights: Sequence[float] = (),
    ) -> dict[str, dict[str, float]]:
        """The monitor keys for this round's metrics line; ``layer_agg_eff`` needs the round's
        ``mean_delta`` and the clients' ``norms`` and ``weights`` (see
        :func:`aggregation_effectiveness`)."""
        values = {"layer_rel_update": relative_layer_update(previous, current)}
        layers = _layers(current)
        if server_round == self.ref_round:
            self.reference = layers
        if self.reference and server_round >= self.ref_round:
            values["layer_cos_ref"] = {
                name: _ratio(
                    dot(ref, layers[name]),
                    l2_norm(ref) * l2_norm(layers[name]),
                )
                for name, ref in self.reference.items()
            }
            values["layer_l2_ref"] = {
                name: l2_norm(layers[name] - ref) for name, ref in self.reference.items()
            }
        if mean_delta is not None and weights and any(norms):
            values["layer_agg_eff"] = aggregation_effectiveness(mean_delta, norms, weights)
        return values

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.reference)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.reference = {name: np.asarray(v, dtype=np.float64) for name, v in state.items()}
