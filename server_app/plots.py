"""The run's plots, rebuilt from ``metrics.jsonl`` rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

PLOTS = (
    "accuracy_vs_round.png",
    "accuracy_vs_uplink.png",
    "layer_updates.png",
    "accuracy_vs_total_bytes.png",
)
BPP_PLOT = "bpp_vs_round.png"  # only for runs whose rows report bits per parameter
BPP_MARK = "_bpp_"  # a strategy's bits-per-parameter keys, e.g. fedpm_bpp_wire
BYTE_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0))
LOG_SPAN = 10.0  # a log uplink axis only when the cumulative uplink spans at least a decade


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _integer_rounds(ax: plt.Axes) -> None:
    """Round numbers on the x-axis: integer ticks only, even for a single round."""
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))


def _number(value: Any) -> float:
    """A metrics value as a float; JSON null (a NaN when written) or a missing value is NaN."""
    return float("nan") if value is None else float(value)


def byte_unit(total: float) -> tuple[str, float]:
    """The largest unit in which ``total`` bytes is at least 1 (bytes below 1 kB)."""
    for unit, scale in BYTE_UNITS:
        if total >= scale:
            return unit, scale
    return BYTE_UNITS[-1]


def evaluated_rows(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the rows with a central accuracy (``eval_every`` leaves the others null)."""
    return [i for i, r in enumerate(rows) if r.get("accuracy") is not None]


def accuracy_vs_round(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """Central accuracy of the evaluated rounds, joined by a line."""
    evaluated = [rows[i] for i in evaluated_rows(rows)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in evaluated], [r["accuracy"] for r in evaluated], marker="o", ms=3)
    ax.set(xlabel="round", ylabel="central test accuracy", title=title)
    _integer_rounds(ax)
    ax.grid(alpha=0.3)
    return fig


def accuracy_vs_uplink(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """Accuracy vs cumulative uplink, in the unit that suits the run's total (kB, MB, GB); log x
    only when the uplink spans at least a decade, with plain-number 1-2-5 ticks."""
    return accuracy_vs_bytes(rows, title, ("uplink_bytes",), "uplink")


def accuracy_vs_total_bytes(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """Accuracy vs cumulative uplink + downlink: what a client's link carries both ways."""
    return accuracy_vs_bytes(rows, title, ("uplink_bytes", "downlink_bytes"), "up + down")


def accuracy_vs_bytes(
    rows: list[dict[str, Any]], title: str, keys: tuple[str, ...], label: str
) -> plt.Figure:
    """Accuracy of the evaluated rounds vs the cumulative sum of every round's ``keys`` byte
    counts up to them."""
    uplink = np.cumsum([sum(r.get(k, 0) for k in keys) for r in rows], dtype=float)
    unit, scale = byte_unit(float(uplink[-1]) if len(uplink) else 0.0)
    evaluated = evaluated_rows(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(uplink[evaluated] / scale, [rows[i]["accuracy"] for i in evaluated], marker="o", ms=3)
    if len(uplink) and uplink[0] > 0 and uplink[-1] / uplink[0] >= LOG_SPAN:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set(
        xlabel=f"cumulative {label} ({unit}, measured)",
        ylabel="central test accuracy",
        title=title,
    )
    ax.grid(alpha=0.3, which="both")
    return fig


def layer_names(rows: list[dict[str, Any]]) -> list[str]:
    """Every layer any row's ``layer_rel_update`` reports, in the order first seen."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.get("layer_rel_update") or {}))
    return list(names)


def layer_updates(rows: list[dict[str, Any]]) -> plt.Figure:
    """The layers × rounds heatmap of ``layer_rel_update`` (a missing or null value is blank);
    a figure that says so when no row reports a layer."""
    layers = layer_names(rows)
    title = "relative update ‖W(t) − W(t−1)‖ / ‖W(t−1)‖ per layer"
    if not layers:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, "no layer reported in layer_rel_update", ha="center", va="center")
        return fig
    rounds = [r["round"] for r in rows]
    grid = np.array(
        [[_number((r.get("layer_rel_update") or {}).get(name)) for r in rows] for name in layers],
        dtype=float,
    )
    finite = grid[np.isfinite(grid)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:  # one value everywhere: a colour scale around it, not an empty one
        pad = 0.5 * abs(low) or 0.5
        low, high = low - pad, high + pad
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.3), max(3, len(layers) * 0.35)))
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(min(rounds) - 0.5, max(rounds) + 0.5, len(layers) - 0.5, -0.5),
        vmin=low,
        vmax=high,
    )
    ax.set_yticks(range(len(layers)), labels=layers, fontsize=7)
    ax.set(xlabel="round", title=title)
    _integer_rounds(ax)
    fig.colorbar(image, ax=ax)
    return fig


def bpp_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The numeric bits-per-parameter keys the rows report, in the order first seen."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(
            dict.fromkeys(k for k, v in row.items() if BPP_MARK in k and isinstance(v, int | float))
        )
    return list(keys)


def bpp_vs_round(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """Every bits-per-parameter series of the run against the round (a strategy's measured
    and bound values side by side, e.g. FedPM's wire, stream, packed, H₂ and ideal bpp)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = [r["round"] for r in rows]
    for key in bpp_keys(rows):
        label = key.split(BPP_MARK, 1)[1]
        ax.plot(rounds, [_number(r.get(key)) for r in rows], marker="o", ms=3, label=label)
    ax.set(xlabel="round", ylabel="uplink bits per parameter", title=title)
    ax.set_ylim(bottom=0)
    _integer_rounds(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_run(rows: list[dict[str, Any]], out_dir: Path, title: str) -> None:
    """Accuracy vs round, vs cumulative uplink and vs cumulative up + down bytes, and the
    per-layer update heatmap; bits per parameter per round when the strategy reports them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save(accuracy_vs_round(rows, title), out_dir / PLOTS[0])
    _save(accuracy_vs_uplink(rows, title), out_dir / PLOTS[1])
    _save(layer_updates(rows), out_dir / PLOTS[2])
    _save(accuracy_vs_total_bytes(rows, title), out_dir / PLOTS[3])
    if bpp_keys(rows):
        _save(bpp_vs_round(rows, title), out_dir / BPP_PLOT)
