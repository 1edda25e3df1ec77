"""Per-layer view of how the global model moves from round to round."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord


def is_layer_weight(name: str, values: np.ndarray) -> bool:
    """Conv and linear weight tensors (what the per-layer heatmap shows)."""
    return name.endswith("weight") and values.ndim >= 2


def relative_layer_update(previous: ArrayRecord, current: ArrayRecord) -> dict[str, float]:
    """‖W_t − W_{t−1}‖ / ‖W_{t−1}‖ for every conv/linear weight."""
    updates: dict[str, float] = {}
    for name, array in current.items():
        new = array.numpy()
        if not is_layer_weight(name, new):
            continue
        old = previous[name].numpy().astype(np.float64)
        norm = float(np.linalg.norm(old))
        updates[name] = float(np.linalg.norm(new - old)) / norm if norm > 0 else float("nan")
    return updates
