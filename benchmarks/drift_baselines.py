"""FedAvg, FedProx and SCAFFOLD side by side on clients that each hold two classes.

    python benchmarks/drift_baselines.py                  # every run (finished ones skipped)
    python benchmarks/drift_baselines.py --report-only

mnist5k, cnn, pathological split (2 classes per client), 20 clients, 10 a round, 2 local epochs
at batch 32, plain SGD (lr 0.05, momentum 0: SCAFFOLD's analysis assumes it, and every strategy
gets the same), 40 rounds, seeds 0-2; in process (no Ray), one torch thread. FedProx at
μ = 0.01 and 0.1. Writes ``benchmarks/results/drift_baselines.md`` and ``drift_baselines.png``
(mean accuracy against the round and against the bytes both links carried).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.sweep import run_missing_in_process  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

BASE = [
    "dataset=mnist5k",
    "model=cnn",
    "partition=pathological",
    "partition.classes_per_client=2",
    "num_clients=20",
    "clients_per_round=10",
    "local_epochs=2",
    "batch_size=32",
    "lr=0.05",
    "momentum=0",
    "federated_eval=false",
    "plots=false",
]
STRATEGIES = {
    "fedavg": ["strategy=fedavg"],
    "fedprox-0.01": ["strategy=fedprox", "strategy.mu=0.01"],
    "fedprox-0.1": ["strategy=fedprox", "strategy.mu=0.1"],
    "scaffold": ["strategy=scaffold"],
}
TARGET = 0.9


def planned(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    return [
        (args.runs / f"{name}_seed{seed}", [*overrides, *BASE, f"seed={seed}"])
        for seed in args.seeds.split(",")
        for name, overrides in STRATEGIES.items()
    ]


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "–"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(args: argparse.Namespace) -> str:
    lines = [
        "# FedAvg, FedProx and SCAFFOLD on clients with two classes each",
        "",
        f"Setting: `{' '.join(BASE)}`, {args.rounds} rounds, seeds {args.seeds}; in process on "
        "the 2-core box. Accuracy on the central test split; mean ± sd over the seeds; bytes "
        "are measured on the wire (both links, all clients, all rounds). Written by "
        "`benchmarks/drift_baselines.py`.",
        "",
        f"| strategy | seeds | final acc | best | last 5 rounds | first round ≥ {TARGET} | "
        "MB up + down per round |",
        "|---|---|---|---|---|---|---|",
    ]
    curves: dict[str, list[list[dict]]] = {}
    for name in STRATEGIES:
        runs = [read_metrics(args.runs / f"{name}_seed{s}") for s in args.seeds.split(",")]
        runs = [rows for rows in runs if rows]
        if not runs:
            continue
        curves[name] = runs
        reached = [
            next((r["round"] for r in rows if r["accuracy"] >= TARGET), None) for rows in runs
        ]
        megabytes = statistics.fmean(
            (r["uplink_bytes"] + r["downlink_bytes"]) / 1e6 for rows in runs for r in rows
        )
        lines.append(
            f"| {name} | {len(runs)} | {_mean_sd([rows[-1]['accuracy'] for rows in runs])} | "
            f"{_mean_sd([max(r['accuracy'] for r in rows) for rows in runs])} | "
            f"{_mean_sd([statistics.fmean(r['accuracy'] for r in rows[-5:]) for rows in runs])} | "
            f"{', '.join('–' if r is None else str(r) for r in reached)} | {megabytes:.2f} |"
        )
    plot(curves, args.results / "drift_baselines.png")
    lines += ["", "![accuracy vs round and vs bytes](drift_baselines.png)", ""]
    return "\n".join(lines)


def plot(curves: dict[str, list[list[dict]]], path: Path) -> None:
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, runs in curves.items():
        rounds = min(len(rows) for rows in runs)
        accuracy = [statistics.fmean(rows[i]["accuracy"] for rows in runs) for i in range(rounds)]
        sent, total = [], 0.0
        for i in range(rounds):
            total += statistics.fmean(
                (rows[i]["uplink_bytes"] + rows[i]["downlink_bytes"]) / 1e6 for rows in runs
            )
            sent.append(total)
        by_round.plot(range(1, rounds + 1), accuracy, label=name)
        by_bytes.plot(sent, accuracy, label=name)
    by_round.set(xlabel="round", ylabel="central accuracy (mean over seeds)")
    by_bytes.set(xlabel="MB up + down, cumulative", ylabel="central accuracy (mean over seeds)")
    for ax in (by_round, by_bytes):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mnist5k, 2 classes per client, 20 clients, 10 a round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("/root/fedsparse-runs/drift_baselines"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_missing_in_process(planned(args), args.rounds)
    text = report(args)
    (args.results / "drift_baselines.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
