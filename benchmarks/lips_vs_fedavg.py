"""FedAvg vs LIPS side by side in a low-data regime, with the layer-wise inertia summary.

    python benchmarks/lips_vs_fedavg.py                          # animal_mnist, 3 seeds, 12 rounds
    python benchmarks/lips_vs_fedavg.py --regime mnist5k --rounds 20
    python benchmarks/lips_vs_fedavg.py --seeds 0 --rounds 2     # smoke run

Regimes (identical data, model, seeds and local work for both strategies):

- ``animal_mnist`` (the LIPS code's regime): 100 clients with ~78 training images each (all
  7,773 animal_mnist training images, no local test hold-out; accuracy on the 1,943-image
  central test split), Dirichlet α = 0.1, all clients every round, 5 local epochs of one
  full-batch step (the code's 100 samples at batch 100), SGD lr 0.1 momentum 0.9, the BatchNorm
  ``resnet8``; LIPS with F = 5, d0 = 0.5 and the code's horizon T = 300, so the first sparse
  rounds prune at the density they do there. Writes ``lips_vs_fedavg_animal.md`` and
  ``lips_vs_fedavg_animal_*.png``.
- ``paper`` (the LIPS paper's metric and regime): 20 clients (the code uses 40 or 100; at
  ~0.65 s per client-round on one core, 20 is what fits 150 rounds of 6 runs in two sessions
  here), all every round, each drawing 100 training images with its own Dir(0.1) class mix
  (``partition=dirichlet_draw``: the code's overlapping per-client draws) and tested on 400
  images of the test split with the same mix (``partition.local_test=matched``); 5 local epochs
  at batch 100, SGD lr 0.1 momentum 0.9, ``resnet8``, LIPS F = 5, d0 = 0.5, T = 300. The metric
  is ``local_accuracy_mean`` (the global model on each client's matched set, averaged over
  clients), beside central accuracy. Each seed runs under ``bn_policy=local`` (the code's
  effective behaviour: BN is never sent back after round 0); ``--bn local,global`` adds
  ``global`` runs. Writes ``lips_vs_fedavg_paper.md`` and ``lips_vs_fedavg_paper_*.png``.
- ``mnist5k``: the earlier setting (2-conv CNN, batch 32, lr 0.05, T = num_rounds). Writes
  ``lips_vs_fedavg.md`` and ``lips_vs_fedavg_*.png``.

Each run is its own in-process run folder under ``--runs/<regime>`` (no Ray); a rerun skips
finished runs, resumes interrupted ones, and extends finished ones when ``--rounds`` grows.
Reports final and best accuracy mean ± std and the middle-layer inertia summary, with one
per-layer heatmap per strategy (first seed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sweep import run_missing_in_process  # noqa: E402
from server_app.compare import compare, find_runs  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

STRATEGIES = ("fedavg", "lips")
REGIMES = {  # regime -> (overrides shared by both strategies, LIPS's own, results file stem)
    "animal_mnist": (
        [
            "dataset=animal_mnist",
            "model=resnet8",
            "partition=dirichlet",
            "partition.alpha=0.1",
            "num_clients=100",
            "clients_per_round=100",
            "local_test_fraction=0",
            "local_epochs=5",
            "batch_size=full",
            "lr=0.1",
            "momentum=0.9",
            "federated_eval=false",
        ],
        ["strategy.horizon=300"],
        "lips_vs_fedavg_animal",
    ),
    "paper": (
        [
            "dataset=animal_mnist",
            "model=resnet8",
            "partition=dirichlet_draw",
            "partition.alpha=0.1",
            "partition.samples_per_client=100",
            "partition.local_test=matched",
            "partition.local_test_size=400",
            "num_clients=20",
            "clients_per_round=20",
            "local_epochs=5",
            "batch_size=100",
            "lr=0.1",
            "momentum=0.9",
            "federated_eval=true",
        ],
        ["strategy.horizon=300"],
        "lips_vs_fedavg_paper",
    ),
    "mnist5k": (
        [
            "dataset=mnist5k",
            "partition=dirichlet",
            "partition.alpha=0.1",
            "num_clients=100",
            "clients_per_round=100",
            "local_epochs=5",
            "batch_size=32",
            "lr=0.05",
            "momentum=0.9",
            "federated_eval=false",
        ],
        [],
        "lips_vs_fedavg",
    ),
}


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


def gain_rows(runs: list[Path]) -> list[str]:
    """LIPS − FedAvg per seed (final and best accuracy), their mean, and the seeds' spread."""
    acc: dict[tuple[str, int], tuple[float, float]] = {}
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        rows = read_metrics(run)
        acc[summary["strategy"], summary["seed"]] = (
            rows[-1]["accuracy"],
            max(r["accuracy"] for r in rows),
        )
    seeds = sorted(s for name, s in acc if name == "lips" and ("fedavg", s) in acc)
    if not seeds:
        return []
    lines = [
        "| seed | FedAvg final | LIPS final | gain final | gain best |",
        "|---|---|---|---|---|",
    ]
    gains_final, gains_best = [], []
    for seed in seeds:
        (fa_final, fa_best), (li_final, li_best) = acc["fedavg", seed], acc["lips", seed]
        gains_final.append(li_final - fa_final)
        gains_best.append(li_best - fa_best)
        lines.append(
            f"| {seed} | {fa_final:.4f} | {li_final:.4f} | {gains_final[-1]:+.4f} "
            f"| {gains_best[-1]:+.4f} |"
        )
    spread = [
        statistics.stdev(acc[name, s][0] for s in seeds) if len(seeds) > 1 else 0.0
        for name in STRATEGIES
    ]
    lines += [
        "",
        f"Mean gain (final): {statistics.fmean(gains_final):+.4f}; (best): "
        f"{statistics.fmean(gains_best):+.4f}. Seeds' spread of the final accuracy (std): FedAvg "
        f"{spread[0]:.4f}, LIPS {spread[1]:.4f}.",
    ]
    return lines


def run_name(strategy: str, bn_policy: str, seed: str) -> str:
    """A run's folder name; ``global`` keeps the names of the runs made before ``--bn``."""
    policy = "" if bn_policy == "global" else f"_bn{bn_policy}"
    return f"{strategy}{policy}_seed{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="animal_mnist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="which of fedavg,lips to run (two processes can split them)",
    )
    parser.add_argument(
        "--bn",
        default="global",
        help="bn_policy values to run, e.g. local or local,global (folders of policies other "
        "than global are named <strategy>_bn<policy>_seed<seed>)",
    )
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/lips_vs_fedavg")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the runs already in --runs",
    )
    args = parser.parse_args()
    root = args.runs / args.regime
    shared, lips_only, _ = REGIMES[args.regime]
    if not args.report_only:
        runs = [
            (
                root / run_name(strategy, bn, seed),
                [
                    f"strategy={strategy}",
                    f"seed={seed}",
                    f"bn_policy={bn}",
                    *shared,
                    *(lips_only if strategy == "lips" else []),
                ],
            )
            for bn in args.bn.split(",")
            for seed in args.seeds.split(",")
            for strategy in args.strategies.split(",")
        ]
        run_missing_in_process(runs, args.rounds)
    report(args, root)


METRICS = (("local_accuracy_mean", "paper's metric (mean local accuracy)"), ("accuracy", "central"))
LAST = 20  # rounds the end-of-run gain is averaged over


def paper_report(args: argparse.Namespace, root: Path) -> None:
    """The paper regime's report: per policy and strategy the paper's metric and central
    accuracy (mean ± std over seeds) at the end and over the last rounds, the per-seed gain,
    curves, heatmaps and the inertia summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, lips_only, stem = REGIMES[args.regime]
    runs = {run.name: read_metrics(run) for run in find_runs(root)}
    args.results.mkdir(parents=True, exist_ok=True)
    lines = [
        "# FedAvg vs LIPS in the LIPS paper's regime and metric",
        "",
        f"Setting: `{' '.join(REGIMES[args.regime][0])}`; LIPS `{' '.join(lips_only)}` (F=5, "
        "d0=0.5, sensitivity score); identical data, model, seeds and local work for both. "
        "Written by `benchmarks/lips_vs_fedavg.py --regime paper`. The paper's metric is "
        "`local_accuracy_mean`: the global model on each client's 400-image label-matched test "
        "set (under bn_policy=local with the client's own BatchNorm), averaged over clients.",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for bn in ("local", "global"):
        seeds = sorted(
            int(name.rsplit("seed", 1)[1])
            for name in runs
            if name.startswith("fedavg")
            and name == run_name("fedavg", bn, name.rsplit("seed", 1)[1])
        )
        seeds = [s for s in seeds if run_name("lips", bn, str(s)) in runs]
        if not seeds:
            continue
        rounds = min(len(runs[run_name(k, bn, str(s))]) for k in STRATEGIES for s in seeds)
        lines += [
            f"## bn_policy={bn}: {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), "
            f"{rounds} rounds",
            "",
            "| strategy | metric | final (mean ± std) | last 20 rounds (mean ± std) |",
            "|---|---|---|---|",
        ]
        for key, label in METRICS:
            for strategy in STRATEGIES:
                curves = np.array(
                    [[r[key] for r in runs[run_name(strategy, bn, str(s))][:rounds]] for s in seeds]
                )
                final, last = curves[:, -1], curves[:, -LAST:].mean(axis=1)
                lines.append(
                    f"| {strategy} | {label} | {final.mean():.4f} ± {final.std():.4f} | "
                    f"{last.mean():.4f} ± {last.std():.4f} |"
                )
                ax = axes[0 if key == "local_accuracy_mean" else 1]
                x = np.arange(1, rounds + 1)
                line = "-" if bn == "local" else ":"
                ax.plot(x, curves.mean(axis=0), line, label=f"{strategy} bn={bn}")
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), alpha=0.15)
        lines += ["", "| seed | metric | gain final | gain last 20 |", "|---|---|---|---|"]
        for seed in seeds:
            for key, label in METRICS:
                lips, fedavg = (
                    np.array([r[key] for r in runs[run_name(k, bn, str(seed))][:rounds]])
                    for k in ("lips", "fedavg")
                )
                lines.append(
                    f"| {seed} | {label} | {lips[-1] - fedavg[-1]:+.4f} | "
                    f"{(lips[-LAST:] - fedavg[-LAST:]).mean():+.4f} |"
                )
        lines.append("")
    for ax, (_, label) in zip(axes, METRICS, strict=True):
        ax.set(xlabel="round", ylabel="accuracy", title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.results / f"{stem}_accuracy.png", dpi=110)
    plt.close(fig)
    for strategy in STRATEGIES:
        shutil.copy(
            root / run_name(strategy, "local", "0") / "plots" / "layer_updates.png",
            args.results / f"{stem}_heatmap_{strategy}.png",
        )
    lines += [
        "## Layer-wise inertia (bn_policy=local and global runs together)",
        "",
        *inertia_rows(find_runs(root)),
        "",
        f"Curves (mean over seeds, band = min..max): `{stem}_accuracy.png`; heatmaps (seed 0, "
        f"bn_policy=local): `{stem}_heatmap_fedavg.png`, `{stem}_heatmap_lips.png`.",
        "",
    ]
    (args.results / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def report(args: argparse.Namespace, root: Path) -> None:
    """Write the table, the gain per seed, the inertia summary and the plots into --results."""
    if args.regime == "paper":
        paper_report(args, root)
        return
    shared, lips_only, stem = REGIMES[args.regime]
    table = compare(root)
    runs = find_runs(root)
    rounds = {json.loads((run / "summary.json").read_text())["rounds"] for run in runs}
    args.results.mkdir(parents=True, exist_ok=True)
    first_seed = args.seeds.split(",")[0]
    for strategy in STRATEGIES:
        shutil.copy(
            root / f"{strategy}_seed{first_seed}" / "plots" / "layer_updates.png",
            args.results / f"{stem}_heatmap_{strategy}.png",
        )
    shutil.copy(root / "compare.png", args.results / f"{stem}_accuracy.png")
    report = [
        f"# FedAvg vs LIPS (low-data regime, {args.regime})",
        "",
        f"Setting: `{' '.join(shared)} num_rounds={'/'.join(map(str, sorted(rounds)))}`, "
        f"seeds {args.seeds}; LIPS: F=5, d0=0.5, sensitivity score, "
        f"{' '.join(lips_only) or 'T=num_rounds'}; bn_policy=global for both. "
        "Written by `benchmarks/lips_vs_fedavg.py`.",
        "",
        "## Central test accuracy (mean ± std over seeds)",
        "",
        table,
        "## LIPS − FedAvg per seed",
        "",
        *gain_rows(runs),
        "",
        "## Layer-wise inertia",
        "",
        *inertia_rows(runs),
        "",
        f"Heatmaps (seed {first_seed}): `{stem}_heatmap_fedavg.png`, `{stem}_heatmap_lips.png`; "
        f"accuracy curves: `{stem}_accuracy.png`.",
        "",
    ]
    (args.results / f"{stem}.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
