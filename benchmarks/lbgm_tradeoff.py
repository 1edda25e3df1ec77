"""Accuracy vs uplink: FedAvg, LBGM at three thresholds, top-k, and top-k + LBGM.

    python benchmarks/lbgm_tradeoff.py                                  # 3 seeds, 30 rounds
    python benchmarks/lbgm_tradeoff.py --seeds 0 --rounds 2 --clients 4 # smoke run

Setting: mnist5k, pathological non-IID (3 classes per client), half the clients per round,
identical data, model, seeds and local work for every variant. Hydra's basic sweeper takes the
Cartesian product of its lists and FedAvg has no ``strategy.delta``, so the variants run as
three ``fedsparse --multirun`` invocations into one sweep root. Writes
``benchmarks/results/lbgm_tradeoff.md`` (final accuracy mean ± std, cumulative uplink, uplink
ratio to FedAvg, mean LBGM reuse) and ``lbgm_tradeoff.png`` (accuracy vs cumulative uplink).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sweep import multirun  # noqa: E402
from server_app.compare import find_runs  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

SETTING = [
    "dataset=mnist5k",
    "partition=pathological",
    "partition.classes_per_client=3",
    "local_epochs=1",
    "batch_size=32",
    "lr=0.05",
    "momentum=0.9",
    "federated_eval=false",
    "plots=false",
]
SWEEPS = {  # sweep subdir -> overrides of one multirun invocation
    "baselines": ["strategy=fedavg,topk"],
    "lbgm": ["strategy=lbgm", "strategy.delta=0.05,0.2,0.5"],
    "topk_lbgm": ["strategy=lbgm", "strategy.compressor=topk", "strategy.delta=0.2"],
}


def variant(run: Path) -> str:
    """A run's label: the strategy, with LBGM's threshold and compressor."""
    cfg = OmegaConf.load(run / "config.yaml").strategy
    if cfg.name != "lbgm":
        return str(cfg.name)
    stacked = "topk+" if cfg.compressor == "topk" else ""
    return f"{stacked}lbgm δ={cfg.delta}"


def collect(root: Path) -> dict[str, list[list[dict]]]:
    """Per variant, the metrics rows of each seed's run."""
    runs: dict[str, list[list[dict]]] = {}
    for run in find_runs(root):
        runs.setdefault(variant(run), []).append(read_metrics(run))
    return runs


def report_table(runs: dict[str, list[list[dict]]]) -> list[str]:
    def cumulative(rows: list[dict]) -> float:
        return float(sum(r["uplink_bytes"] for r in rows))

    base = statistics.fmean(cumulative(rows) for rows in runs["fedavg"])
    lines = [
        "| variant | seeds | final accuracy | cumulative uplink MB | uplink / FedAvg "
        "| reuse frac |",
        "|---|---|---|---|---|---|",
    ]
    for name, seeds in sorted(
        runs.items(), key=lambda kv: -statistics.fmean(map(cumulative, kv[1]))
    ):
        finals = [rows[-1]["accuracy"] for rows in seeds]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        uplink = statistics.fmean(cumulative(rows) for rows in seeds)
        reuse = [r["lbgm_reuse_frac"] for rows in seeds for r in rows if "lbgm_reuse_frac" in r]
        lines.append(
            f"| {name} | {len(seeds)} | {statistics.fmean(finals):.4f} ± {std:.4f} "
            f"| {uplink / 1e6:.2f} | {uplink / base:.3f} "
            f"| {f'{statistics.fmean(reuse):.3f}' if reuse else '-'} |"
        )
    return lines


def plot(runs: dict[str, list[list[dict]]], path: Path) -> None:
    """Mean accuracy vs mean cumulative uplink per variant (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, seeds in sorted(runs.items()):
        length = min(len(rows) for rows in seeds)
        uplink = np.mean(
            [np.cumsum([r["uplink_bytes"] for r in rows[:length]]) for rows in seeds], 0
        )
        accuracy = np.mean([[r["accuracy"] for r in rows[:length]] for rows in seeds], 0)
        ax.plot(uplink / 1e6, accuracy, marker=".", label=name)
    ax.set(xscale="log", xlabel="cumulative uplink (MB)", ylabel="central test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/lbgm_tradeoff")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.runs.exists():
        shutil.rmtree(args.runs)
    scale = [
        f"num_clients={args.clients}",
        f"clients_per_round={max(args.clients // 2, 1)}",
        f"engine.clients_per_node={max(args.clients // 4, 1)}",
    ]
    for sweep, overrides in SWEEPS.items():
        multirun(
            args.runs / sweep,
            [*overrides, f"seed={args.seeds}", f"num_rounds={args.rounds}", *SETTING, *scale],
            "${hydra.job.num}_seed${seed}",
        )
    runs = collect(args.runs)
    args.results.mkdir(parents=True, exist_ok=True)
    plot(runs, args.results / "lbgm_tradeoff.png")
    report = [
        "# LBGM: accuracy vs uplink",
        "",
        f"Setting: `{' '.join([*SETTING, *scale])} num_rounds={args.rounds}`, seeds {args.seeds}; "
        "LBGM per layer, server_lr=1, no server momentum; top-k ratio 0.1 with error feedback. "
        "Uplink is measured from the records sent. Written by `benchmarks/lbgm_tradeoff.py`.",
        "",
        *report_table(runs),
        "",
        "Accuracy vs cumulative uplink: `lbgm_tradeoff.png`.",
        "",
    ]
    (args.results / "lbgm_tradeoff.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
