"""The run's plots, rebuilt from ``metrics.jsonl`` rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

PLOTS = ("accuracy_vs_round.png", "accuracy_vs_uplink.png", "layer_updates.png")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(rows: list[dict[str, Any]], out_dir: Path, title: str) -> None:
    """Accuracy vs round, accuracy vs cumulative uplink (log x) and the per-layer update heatmap."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = [r["round"] for r in rows]
    accuracy = [r["accuracy"] for r in rows]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, accuracy, marker="o", ms=3)
    ax.set(xlabel="round", ylabel="central test accuracy", title=title)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / PLOTS[0])

    fig, ax = plt.subplots(figsize=(6, 4))
    uplink_mb = np.cumsum([r["uplink_bytes"] for r in rows]) / 1e6
    ax.plot(uplink_mb, accuracy, marker="o", ms=3)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="cumulative uplink (MB, measured)", ylabel="central test accuracy", title=title)
    ax.grid(alpha=0.3, which="both")
    _save(fig, out_dir / PLOTS[1])

    layers = list(rows[0].get("layer_rel_update", {})) if rows else []
    grid = np.array(
        [
            [r.get("layer_rel_update", {}).get(name, np.nan) or np.nan for r in rows]
            for name in layers
        ],
        dtype=float,
    ).reshape(len(layers), len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.3), max(3, len(layers) * 0.35)))
    image = ax.imshow(
        grid,
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(
            min(rounds, default=0) - 0.5,
            max(rounds, default=0) + 0.5,
            len(layers) - 0.5,
            -0.5,
        ),
    )
    ax.set_yticks(range(len(layers)), labels=layers, fontsize=7)
    ax.set(xlabel="round", title="relative update ‖W_t − W_{t−1}‖ / ‖W_{t−1}‖ per layer")
    fig.colorbar(image, ax=ax)
    _save(fig, out_dir / PLOTS[2])
