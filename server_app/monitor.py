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

Which arrays are layers, and which values of them are watched, the strategy says
(``strategies.core.layers.LayerView``, a base of every strategy). FedPM's global model is not a
weight tensor but a mask probability θ = σ(score) per frozen random weight, and its global
arrays hold the scores, one ``<layer>.weight_score`` per conv/linear weight (``models.masked``).
Its view reports such a layer under its weight's name, ``<layer>.weight``, with every value
above on θ (W_t = θ_t = σ(score_t), in float64):
``layer_rel_update`` is ‖θ_t − θ_{t−1}‖ / ‖θ_{t−1}‖ and the reference is θ after ``ref_round``.
For ``layer_agg_eff`` FedPM supplies Δ_c = clip(m_c, ε, 1−ε) − θ_{t−1}, the ε-clipped mask the
client sampled (exactly what the Beta posterior adds) minus the probabilities it trained from,
every client weighted 1 as the posterior counts them. A sampled mask carries Bernoulli noise,
so even clients that trained to the same θ_c show ``layer_agg_eff`` below 1 (about 1/√K for K
clients when θ_c = θ_{t−1} = 1/2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord

from strategies.core.layers import WEIGHTS, LayerView
from strategies.numeric.arrays import dot, l2_norm


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def relative_layer_update(
    previous: ArrayRecord, current: ArrayRecord, view: LayerView = WEIGHTS
) -> dict[str, float]:
    """‖W_t − W_{t−1}‖ / ‖W_{t−1}‖ for every layer of ``view`` (θ for FedPM's scores)."""
    return _relative_update(view.monitored_layers(previous), view.monitored_layers(current))


def _relative_update(
    old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]
) -> dict[str, float]:
    return {
        name: _ratio(l2_norm(values - old[name]), l2_norm(old[name]))
        for name, values in new.items()
    }


def aggregation_effectiveness(
    mean: Mapping[str, np.ndarray],
    norms: Sequence[Mapping[str, float]],
    weights: Sequence[float],
    view: LayerView = WEIGHTS,
) -> dict[str, float]:
    """‖Σ w_c Δ_c‖ / Σ w_c ‖Δ_c‖ for every layer of ``view`` in ``mean`` (= Σ w_c Δ_c, the weights
    normalised to sum to 1), given each client's ‖Δ_c‖ per array name in ``norms``. The arrays
    keep the strategy's names (FedPM's ``<layer>.weight_score``, its Δ_c already on θ); the
    result is keyed by the view's layer names."""
    share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    spread: dict[str, float] = {}
    for s, client in zip(share, norms, strict=True):
        for name, value in client.items():
            if name in mean and view.monitor_key(name, mean[name]) is not None:
                spread[name] = spread.get(name, 0.0) + s * value
    return {
        view.monitor_key(name, mean[name]): _ratio(l2_norm(mean[name]), total)
        for name, total in spread.items()
    }


class LayerMonitor:
    """Computes the per-layer monitor values round by round; keeps the reference snapshot.
    ``view`` says which arrays are layers and what to watch of them: the run's strategy."""

    def __init__(self, ref_round: int, view: LayerView = WEIGHTS) -> None:
        self.ref_round = ref_round
        self.view = view
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
        layers = self.view.monitored_layers(current)  # once: FedPM's are σ of every score
        values = {
            "layer_rel_update": _relative_update(self.view.monitored_layers(previous), layers)
        }
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
            values["layer_agg_eff"] = aggregation_effectiveness(
                mean_delta, norms, weights, self.view
            )
        return values

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.reference)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.reference = {name: np.asarray(v, dtype=np.float64) for name, v in state.items()}
