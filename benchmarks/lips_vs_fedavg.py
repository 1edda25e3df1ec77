"""FedAvg vs LIPS side by side in the low-data regime: mnist5k, Dirichlet α=0.1, 100 clients.

    python benchmarks/lips_vs_fedavg.py                      # 3 seeds, 20 rounds (~25 min, 2 cores)
    python benchmarks/lips_vs_fedavg.py --seeds 0 --rounds 6 # smoke run

Both strategies run in one `fedsparse --multirun` sweep with identical data, model, seeds and
local work (the LIPS spec's setting scaled to mnist5k: 5 local epochs, all clients every round).
Writes ``benchmarks/results/lips_vs_fedavg.md`` (final and best accuracy mean ± std, and a
middle-layer inertia summary) and one per-layer heatmap per strategy (seed of the first run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sweep import multirun  # noqa: E402
from server_app.compare import compare, find_runs  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

SETTING = [
    "dataset=mnist5k",
    "partition=dirichlet",
    "partition.alpha=0.1",
    "num_clients=100",
    "clients_per_round=100",
    "engine.clients_per_node=10",
    "local_epochs=5",
    "batch_size=32",
    "lr=0.05",
    "momentum=0.9",
    "federated_eval=false",
]


def inertia_rows(runs: list[Path]) -> list[str]:
    """Per strategy and layer: mean relative update early (rounds 2-5) vs late (last 5 rounds)."""
    by_strategy: dict[str, list[list[dict]]] = {}
    for run in runs:
        strategy = json.loads((run / "summary.json").read_text())["strategy"]
        by_strategy.setdefault(strategy, []).append(read_metrics(run))
    lines = [
        "| strategy | layer | rel. update rounds 2-5 | rel. update last 5 rounds | late/early "
        "| cos to round 2 at end |",
        "|---|---|---|---|---|---|",
    ]
    for strategy, seeds in sorted(by_strategy.items()):
        for layer in seeds[0][0]["layer_rel_update"]:
            early = statistics.fmean(
                r["layer_rel_update"][layer] for rows in seeds for r in rows[1:5]
            )
            late = statistics.fmean(
                r["layer_rel_update"][layer] for rows in seeds for r in rows[-5:]
            )
            cos = statistics.fmean(rows[-1]["layer_cos_ref"][layer] for rows in seeds)
            lines.append(
                f"| {strategy} | {layer} | {early:.4f} | {late:.4f} | "
                f"{late / early:.3f} | {cos:.4f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/lips_vs_fedavg")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the runs already in --runs",
    )
    args = parser.parse_args()
    if not args.report_only:
        run_sweep(args)
    report(args)


def run_sweep(args: argparse.Namespace) -> None:
    """Run both strategies over all seeds in one multirun sweep."""
    if args.runs.exists():
        shutil.rmtree(args.runs)
    multirun(
        args.runs,
        ["strategy=fedavg,lips", f"seed={args.seeds}", f"num_rounds={args.rounds}", *SETTING],
        "${strategy.name}_seed${seed}",
    )


def report(args: argparse.Namespace) -> None:
    """Write the table, the inertia summary and the plots into --results."""
    table = compare(args.runs)
    runs = find_runs(args.runs)
    args.results.mkdir(parents=True, exist_ok=True)
    first_seed = args.seeds.split(",")[0]
    for strategy in ("fedavg", "lips"):
        shutil.copy(
            args.runs / f"{strategy}_seed{first_seed}" / "plots" / "layer_updates.png",
            args.results / f"lips_vs_fedavg_heatmap_{strategy}.png",
        )
    shutil.copy(args.runs / "compare.png", args.results / "lips_vs_fedavg_accuracy.png")
    report = [
        "# FedAvg vs LIPS (low-data regime)",
        "",
        f"Setting: `{' '.join(SETTING)} num_rounds={args.rounds}`, seeds {args.seeds}; "
        "LIPS defaults (F=5, d0=0.5, T=num_rounds, sensitivity score). "
        "Written by `benchmarks/lips_vs_fedavg.py`.",
        "",
        "## Central test accuracy (mean ± std over seeds)",
        "",
        table,
        "## Layer-wise inertia",
        "",
        *inertia_rows(runs),
        "",
        "Heatmaps (seed " + first_seed + "): `lips_vs_fedavg_heatmap_fedavg.png`, "
        "`lips_vs_fedavg_heatmap_lips.png`; accuracy curves: `lips_vs_fedavg_accuracy.png`.",
        "",
    ]
    (args.results / "lips_vs_fedavg.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
