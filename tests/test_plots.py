"""Tests for server_app.plots: axes read back from the figures ``plot_run`` saves."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from server_app.plots import BPP_PLOT, PLOTS, plot_run

LAYERS = ("conv1.weight", "fc1.weight")


@pytest.fixture
def figures(monkeypatch) -> dict[str, Figure]:
    """Every figure ``plot_run`` saves, by file name (the files are still written)."""
    saved: dict[str, Figure] = {}
    savefig = Figure.savefig

    def recording(self: Figure, fname, *args, **kwargs):
        saved[Path(fname).name] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return saved


def _rows(rounds: int, uplink: int = 31_400, layers=LAYERS) -> list[dict]:
    return [
        {
            "round": r,
            "accuracy": 0.5 + 0.01 * r,
            "uplink_bytes": uplink,
            "layer_rel_update": {name: 0.1 * r + i for i, name in enumerate(layers)},
        }
        for r in range(1, rounds + 1)
    ]


def _plot(rows: list[dict], out: Path, figures: dict[str, Figure]) -> dict[str, Figure]:
    """``plot_run`` with every warning an error; all three files must be written."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_run(rows, out, "fedpm on digits")
    assert sorted(p.name for p in out.iterdir()) == sorted(PLOTS)
    return figures


def _x_ticks(ax: Axes) -> list[tuple[float, str]]:
    """The labelled major x ticks inside the view."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    return [
        (float(loc), label.get_text())
        for loc, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
        if low <= loc <= high and label.get_text()
    ]


@pytest.mark.parametrize("rounds", [1, 3, 7, 45])
def test_round_axes_have_integer_ticks(tmp_path: Path, figures, rounds: int) -> None:
    _plot(_rows(rounds), tmp_path, figures)
    for name in ("accuracy_vs_round.png", "layer_updates.png"):
        ticks = _x_ticks(figures[name].axes[0])
        assert ticks, name
        for loc, label in ticks:
            assert loc == int(loc) and int(label) == loc, (name, ticks)


def test_uplink_under_a_decade_is_linear_with_several_labelled_ticks(tmp_path, figures) -> None:
    """3 rounds of 31.4 kB: a log axis showed one labelled tick (10⁰) there."""
    _plot(_rows(3, uplink=31_400), tmp_path, figures)
    ax = figures["accuracy_vs_uplink.png"].axes[0]
    assert ax.get_xscale() == "linear"
    assert "kB" in ax.get_xlabel()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [31.4, 62.8, 94.2])
    ticks = _x_ticks(ax)
    assert len(ticks) >= 3, ticks
    assert all(float(label) == pytest.approx(loc) for loc, label in ticks)  # no offset/sci
    assert ax.xaxis.get_offset_text().get_text() == ""


def test_uplink_over_decades_is_log_with_plain_number_ticks(tmp_path, figures) -> None:
    _plot(_rows(40, uplink=33_750_000), tmp_path, figures)  # 33.75 MB to 1.35 GB
    ax = figures["accuracy_vs_uplink.png"].axes[0]
    assert ax.get_xscale() == "log"
    assert "GB" in ax.get_xlabel()
    ticks = _x_ticks(ax)
    assert len(ticks) >= 3, ticks
    assert all(float(label) == pytest.approx(loc) for loc, label in ticks)  # not 10^k


def test_no_layer_is_a_no_layer_figure_without_warnings(tmp_path, figures) -> None:
    _plot(_rows(3, layers=()), tmp_path, figures)
    fig = figures["layer_updates.png"]
    assert not any(ax.images for ax in fig.axes)  # no empty heatmap
    assert any("no layer" in text.get_text() for ax in fig.axes for text in ax.texts)


def test_heatmap_keeps_zero_blanks_missing_and_takes_layers_from_every_row(
    tmp_path, figures
) -> None:
    rows = _rows(3, layers=())  # round 1 reports no layer (e.g. a run resumed from before)
    rows[1]["layer_rel_update"] = {"conv1.weight": 0.0, "fc1.weight": None}  # null = NaN
    rows[2]["layer_rel_update"] = {"conv1.weight": 0.0, "fc1.weight": 0.0}  # a frozen layer
    _plot(rows, tmp_path, figures)
    ax = figures["layer_updates.png"].axes[0]
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 3)
    assert np.ma.getmaskarray(grid).tolist() == [[True, False, False], [True, True, False]]
    assert grid[0, 1] == grid[0, 2] == grid[1, 2] == 0.0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["conv1.weight", "fc1.weight"]
    low, high = ax.images[0].get_clim()
    assert low < high and math.isfinite(low) and math.isfinite(high)


def test_bits_per_parameter_are_plotted_per_round_when_reported(tmp_path: Path, figures) -> None:
    rows = _rows(3)
    for row in rows:
        row.update(fedpm_bpp_wire=1.0 / row["round"], fedpm_bpp_ideal=0.9 / row["round"])
        row["fedpm_coder_overhead"] = None  # not a bpp series
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_run(rows, tmp_path, "fedpm on digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*PLOTS, BPP_PLOT])
    (ax,) = figures[BPP_PLOT].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["ideal", "wire"]
    np.testing.assert_allclose(lines["wire"].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_array_equal(lines["ideal"].get_xdata(), [1, 2, 3])


def test_rounds_not_evaluated_are_left_out_and_the_rest_joined(tmp_path: Path, figures) -> None:
    """With eval_every=3 the accuracy curves join rounds 3, 6 and 7 (the last), each at its
    round and at the bytes sent up to it; the rows in between are null."""
    rows = _rows(7)
    for row in rows:
        if row["round"] not in (3, 6, 7):
            row["accuracy"] = None
    _plot(rows, tmp_path, figures)
    (line,) = figures["accuracy_vs_round.png"].axes[0].get_lines()
    assert list(line.get_xdata()) == [3, 6, 7]
    assert np.allclose(line.get_ydata(), [0.53, 0.56, 0.57])
    (line,) = figures["accuracy_vs_uplink.png"].axes[0].get_lines()
    assert np.allclose(line.get_xdata(), [3 * 31.4, 6 * 31.4, 7 * 31.4])  # kB
