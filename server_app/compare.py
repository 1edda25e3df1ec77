"""``fedsparse-compare DIR``: turn a multirun directory into a table and one plot.

Runs are grouped by the config values that differ between them, the seed excepted, so
``fedsparse --multirun strategy=fedavg,lips seed=0,1,2`` yields one row per strategy with
mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from server_app.phases import ALL_PHASES, PHASES
from server_app.results import NUMBER_NEUTRAL_KEYS, SUMMARY_FILE, flatten_config, read_metrics

IGNORED_KEYS = {"seed", "resume", *NUMBER_NEUTRAL_KEYS}


def _ignored(key: str) -> bool:
    """``key`` (flattened, e.g. ``engine.client_state_dir``) is or lies under an ignored key."""
    return key.split(".", 1)[0] in IGNORED_KEYS


@dataclass
class Group:
    """Runs that differ only by seed."""

    label: str
    summaries: list[dict[str, Any]] = field(default_factory=list)
    curves: list[list[float | None]] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)


def run_phases(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """A run's mean seconds per round: ``round_s`` and each phase of ``phase_s`` (None for a
    run written before rows carried phases)."""
    timed = [r for r in rows if isinstance(r.get(PHASES), dict)]
    if not timed:
        return None
    means = {"round_s": statistics.fmean(r["round_s"] for r in timed)}
    means.update({p: statistics.fmean(r[PHASES].get(p, 0.0) for r in timed) for p in ALL_PHASES})
    return means


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding summary.json) below ``root``."""
    return sorted(path.parent for path in root.rglob(SUMMARY_FILE))


def _varies_within_strategy(key: str, strategy: str, configs) -> bool:
    """Strategy parameters label a group only when they vary among runs of that strategy."""
    if not key.startswith("strategy.") or key == "strategy.name":
        return True
    same = [c.get(key) for c in configs if c["strategy.name"] == strategy]
    return len({json.dumps(v) for v in same}) > 1


def group_runs(runs: list[Path]) -> list[Group]:
    """Group runs by the config keys whose values differ across them (seed excluded)."""
    configs = {
        run: flatten_config(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
        for run in runs
    }
    keys = sorted({k for c in configs.values() for k in c if not _ignored(k)})
    varying = [  # a key only some runs have (added by a later version) does not split groups
        k for k in keys if len({json.dumps(c[k]) for c in configs.values() if k in c}) > 1
    ]
    groups: dict[str, Group] = {}
    for run, config in configs.items():
        label = (
            " ".join(
                f"{k}={config[k]}"
                for k in varying
                if k in config
                and _varies_within_strategy(k, config["strategy.name"], configs.values())
            )
            or "all runs"
        )
        group = groups.setdefault(label, Group(label))
        group.summaries.append(json.loads((run / SUMMARY_FILE).read_text()))
        rows = read_metrics(run)
        group.curves.append([row["accuracy"] for row in rows])
        phases = run_phases(rows)
        if phases is not None:
            group.phases.append(phases)
    return list(groups.values())


def _mean_std(values: list[float]) -> str:
    """Mean ± sample std; one run has no spread to show (not a spread of 0)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(groups: list[Group]) -> str:
    """A Markdown table: final/best accuracy mean ± std, uplink and downlink totals."""
    lines = [
        "| runs | config | seeds | final accuracy | best accuracy | uplink MB | downlink MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        s = group.summaries
        lines.append(
            f"| {len(s)} | {group.label} | {','.join(str(x['seed']) for x in s)} "
            f"| {_mean_std([x['final_accuracy'] for x in s])} "
            f"| {_mean_std([x['best_accuracy'] for x in s])} "
            f"| {statistics.fmean(x['uplink_bytes_total'] for x in s) / 1e6:.2f} "
            f"| {statistics.fmean(x['downlink_bytes_total'] for x in s) / 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


def phase_table(groups: list[Group]) -> str:
    """A Markdown table of where the rounds went: mean seconds per round of ``round_s`` and each
    phase (mean over a run's rounds, then over the group's runs); "" when no run has phases."""
    if not any(group.phases for group in groups):
        return ""
    columns = ["round_s", *ALL_PHASES]
    lines = [
        f"| config | {' | '.join(columns)} |",
        "|---|" + "---|" * len(columns),
    ]
    for group in groups:
        cells = [
            f"{statistics.fmean(p[c] for p in group.phases):.3f}" if group.phases else "-"
            for c in columns
        ]
        lines.append(f"| {group.label} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot(groups: list[Group], path: Path) -> None:
    """Mean accuracy vs round per group, with a min–max band over seeds, at the rounds every
    seed evaluated (``eval_every`` leaves the others null)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group in groups:
        length = min(len(c) for c in group.curves)
        curves = np.array([c[:length] for c in group.curves], dtype=float)  # null -> NaN
        evaluated = np.isfinite(curves).all(axis=0)
        rounds, curves = np.arange(1, length + 1)[evaluated], curves[:, evaluated]
        ax.plot(rounds, curves.mean(axis=0), label=group.label)
        ax.fill_between(rounds, curves.min(axis=0), curves.max(axis=0), alpha=0.2)
    ax.set(
        xlabel="round",
        ylabel="central test accuracy",
        title="mean over seeds; band: lowest to highest seed",
    )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(root: Path) -> str:
    """Write ``compare.md`` and ``compare.png`` into ``root``; return the tables (results, and
    the phases when the runs' rows have them)."""
    runs = find_runs(root)
    if not runs:
        raise SystemExit(f"fedsparse-compare: no finished runs (no {SUMMARY_FILE}) under {root}")
    groups = group_runs(runs)
    phases = phase_table(groups)
    text = table(groups) + (
        f"\nSeconds per round, by phase (phase_s):\n\n{phases}" if phases else ""
    )
    (root / "compare.md").write_text(text)
    plot(groups, root / "compare.png")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="fedsparse-compare",
        description="Tabulate and plot the runs under one folder (a --multirun folder, or any "
        "folder of run folders): runs that differ only by seed are averaged. Writes "
        "compare.md and compare.png into that folder.",
    )
    parser.add_argument(
        "directory", type=Path, help="the folder holding the runs, e.g. multirun/<date>/<time>"
    )
    args = parser.parse_args()
    print(compare(args.directory), end="")
    print(f"wrote {args.directory / 'compare.md'} and {args.directory / 'compare.png'}")


if __name__ == "__main__":
    main()
