"""Which of a global model's arrays are its layers, and which values of them to watch.

The layer monitor (``server_app.monitor``) reports per conv/linear weight how the global model
moves. What a "layer" is depends on the strategy: for most it is the weight tensor itself, for
FedPM it is the mask probability θ = σ(score) held under ``<layer>.weight_score``. A strategy
answers through this view (``FedSparseStrategy`` is one), so the monitor knows no strategy.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord


def is_layer_weight(name: str, values: np.ndarray) -> bool:
    """Conv and linear weight tensors (the layers the monitor reports)."""
    return name.endswith("weight") and values.ndim >= 2


class LayerView:
    """The default view: every conv/linear weight, under its own name, in float64."""

    def monitor_key(self, name: str, values: np.ndarray) -> str | None:
        """The layer name array ``name`` is reported under; None when it is not a layer."""
        return name if is_layer_weight(name, values) else None

    def monitor_values(self, name: str, values: np.ndarray) -> np.ndarray:
        """The values watched for array ``name`` (a layer by :meth:`monitor_key`), in float64."""
        return values.astype(np.float64)

    def monitored_layers(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """The watched values of every layer in ``arrays``, keyed by layer name."""
        layers = {}
        for name, array in arrays.items():
            values = array.numpy()
            key = self.monitor_key(name, values)
            if key is not None:
                layers[key] = self.monitor_values(name, values)
        return layers


WEIGHTS = LayerView()
