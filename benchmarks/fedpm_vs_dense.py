"""FedPM vs dense FedAvg on the same architecture: accuracy against uplink bits and model size.

    python benchmarks/fedpm_vs_dense.py                            # 3 seeds, 30 rounds
    python benchmarks/fedpm_vs_dense.py --seeds 0 --rounds 2       # smoke run

mnist5k, IID and Dirichlet α=0.5, 10 clients all sampled every round (two cohorts of 5, one
per CPU), 3 local epochs of batch 128 (the FedPM paper's local work) for both strategies;
FedAvg keeps its SGD settings, FedPM uses Adam lr 0.1 on the scores.
One `fedsparse --multirun` sweep. Writes
``benchmarks/results/fedpm_vs_dense.md``: final thresholded accuracy (FedPM also sampled-mask),
cumulative uplink, uplink bits per parameter, and the exported final model size (FedPM: seed +
1-bit mask in ``final_model.fedpm``; FedAvg: float32 weights).
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

from omegaconf import OmegaConf  # noqa: E402

from benchmarks.sweep import multirun  # noqa: E402
from server_app.checkpoint import load_checkpoint  # noqa: E402
from server_app.compare import find_runs  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

SETTING = [
    "dataset=mnist5k",
    "num_clients=10",
    "clients_per_round=10",
    "engine.clients_per_node=5",
    "local_epochs=3",
    "batch_size=128",
    "federated_eval=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--model", default="cnn", help="cnn | conv4 (dense vs its masked twin)")
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/fedpm_vs_dense")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from the runs in --runs"
    )
    args = parser.parse_args()
    if not args.report_only:
        run_sweep(args)
    report(args)


def run_sweep(args: argparse.Namespace) -> None:
    """Both strategies × both partitions × all seeds in one multirun sweep."""
    if args.runs.exists():
        shutil.rmtree(args.runs)
    multirun(
        args.runs,
        [
            "strategy=fedavg,fedpm",
            "partition=iid,dirichlet",
            f"seed={args.seeds}",
            f"num_rounds={args.rounds}",
            f"model={args.model}",
            *SETTING,
        ],
        "${strategy.name}_${partition.name}_seed${seed}",
    )


def run_row(run: Path) -> dict:
    """One run's final accuracy, uplink, bits per parameter and final model size."""
    cfg = OmegaConf.load(run / "config.yaml")
    rows = read_metrics(run)
    checkpoint = load_checkpoint(run / "checkpoint")
    uplink = sum(r["uplink_bytes"] for r in rows)
    replies = sum(r["clients"] for r in rows)
    result = {
        "strategy": cfg.strategy.name,
        "partition": cfg.partition.name,
        "accuracy": rows[-1]["accuracy"],
        "uplink_mb": uplink / 1e6,
    }
    if cfg.strategy.name == "fedpm":
        result.update(
            sampled=rows[-1].get("fedpm_acc_sampled"),
            bpp=statistics.fmean(r["fedpm_bpp_wire"] for r in rows),
            bpp_entropy=statistics.fmean(r["fedpm_bpp_entropy"] for r in rows),
            model_kb=json.loads((run / "summary.json").read_text())["exported_model_bytes"] / 1e3,
        )
    else:
        params = sum(a.numpy().size for a in checkpoint.arrays.values())
        result.update(
            sampled=None,
            bpp=8 * uplink / (replies * params),
            bpp_entropy=None,
            model_kb=checkpoint.arrays.count_bytes() / 1e3,
        )
    return result


def _stat(values: list[float | None], digits: int) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    spread = statistics.stdev(present) if len(present) > 1 else 0.0
    return f"{statistics.fmean(present):.{digits}f} ± {spread:.{digits}f}"


def targets(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """The issue's targets per partition: uplink ≥ 32× smaller, entropy bpp < 1, accuracy
    within 3 points of dense FedAvg (means over seeds)."""
    lines = ["## Against the targets", ""]
    for partition in sorted({p for _, p in groups}):
        dense, fedpm = groups.get(("fedavg", partition)), groups.get(("fedpm", partition))
        if not dense or not fedpm:
            continue
        ratio = statistics.fmean(r["uplink_mb"] for r in dense) / statistics.fmean(
            r["uplink_mb"] for r in fedpm
        )
        entropy = statistics.fmean(r["bpp_entropy"] for r in fedpm)
        gap = 100 * (
            statistics.fmean(r["accuracy"] for r in dense)
            - statistics.fmean(r["accuracy"] for r in fedpm)
        )
        lines.append(
            f"- {partition}: uplink {ratio:.2f}× smaller ({'met' if ratio >= 32 else 'missed'}"
            f" ≥ 32×); entropy bound {entropy:.5f} bpp ({'met' if entropy < 1 else 'missed'}"
            f" < 1); accuracy {gap:.2f} points below FedAvg "
            f"({'met' if gap <= 3 else 'missed'} ≤ 3)."
        )
    return lines


def report(args: argparse.Namespace) -> None:
    """Mean ± std over seeds per (strategy, partition) → ``fedpm_vs_dense.md``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in find_runs(args.runs):
        row = run_row(run)
        groups.setdefault((row["strategy"], row["partition"]), []).append(row)
    lines = [
        "# FedPM vs dense FedAvg",
        "",
        f"Setting: `{' '.join(SETTING)} model={args.model} num_rounds={args.rounds}`, seeds "
        f"{args.seeds}; FedPM defaults (reset_period=1, λ0=1, ε=0.01, Adam 0.1, scaled "
        "estimator). Written by `benchmarks/fedpm_vs_dense.py`.",
        "",
        "| strategy | partition | seeds | final acc (thresholded) | final acc (sampled) "
        "| cum. uplink MB | uplink bpp (wire) | bpp (entropy bound) | final model kB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (strategy, partition), rows in sorted(groups.items()):
        lines.append(
            f"| {strategy} | {partition} | {len(rows)} "
            f"| {_stat([r['accuracy'] for r in rows], 4)} "
            f"| {_stat([r['sampled'] for r in rows], 4)} "
            f"| {_stat([r['uplink_mb'] for r in rows], 3)} "
            f"| {_stat([r['bpp'] for r in rows], 3)} "
            f"| {_stat([r['bpp_entropy'] for r in rows], 3)} "
            f"| {_stat([r['model_kb'] for r in rows], 1)} |"
        )
    lines += [
        "",
        "Wire bpp counts every byte of a reply (masks plus the metrics record) per model "
        "parameter; the entropy bound is H₂(f) + log₂(N)/N with f the true ones fraction.",
        "",
        *targets(groups),
        "",
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fedpm_vs_dense.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({f"{s}/{p}": len(r) for (s, p), r in groups.items()}))


if __name__ == "__main__":
    main()
