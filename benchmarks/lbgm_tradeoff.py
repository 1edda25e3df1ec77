"""Accuracy vs uplink: LBGM against FedAvg in two regimes.

    python benchmarks/lbgm_tradeoff.py                                  # FedSGD regime, full grid
    # the recorded grid, about an hour on 2 cores as two processes side by side:
    python benchmarks/lbgm_tradeoff.py --datasets mnist5k &
    python benchmarks/lbgm_tradeoff.py --datasets animal_mnist --partitions dirichlet \
        --deltas 0.4,0.8
    python benchmarks/lbgm_tradeoff.py --regime multistep               # local SGD, 3 seeds
    python benchmarks/lbgm_tradeoff.py --seeds 0 --rounds 2 --clients 4 # smoke run

``fedsgd`` (the public LBGM code's regime): one full-batch gradient step per client and round
(``local_steps=1 batch_size=full momentum=0``), all clients every round, heavy-ball momentum 0.9
on the server only, for FedAvg and LBGM alike. FedAvg with server momentum is
``strategy=lbgm strategy.delta=-1`` (never reuse: every layer goes in full, exactly FedAvg's
update with momentum; ``strategy=fedavg`` has no server momentum). IID and Dirichlet(0.5)
partitions of mnist5k and animal_mnist. Each run is its own in-process run folder under
``--runs`` (no Ray); a rerun skips finished runs, so a grid can be filled in pieces (e.g. one
data set per process). Writes ``lbgm_tradeoff_fedsgd.md`` (final accuracy mean ± std, gap to
FedAvg, cumulative uplink and its ratio to FedAvg, uplink needed to reach FedAvg's final
accuracy − 1 pt, reuse, the target verdict) and ``lbgm_tradeoff_fedsgd.png``.

``multistep``: mnist5k, pathological non-IID (3 classes per client), half the clients per round,
1 local epoch of batch-32 SGD with momentum 0.9; FedAvg, LBGM at three thresholds, top-k, and
top-k + LBGM, as three ``fedsparse --multirun`` invocations into one sweep root (FedAvg has no
``strategy.delta``). Writes ``lbgm_tradeoff.md`` and ``lbgm_tradeoff.png``.
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

from benchmarks.sweep import multirun, run_missing_in_process  # noqa: E402
from server_app.compare import find_runs  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

SETTING = [  # the multistep regime
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
    """Multistep regime: one row per variant, most uplink first."""

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


FEDSGD = [  # the fedsgd regime, shared by every variant
    "local_steps=1",
    "batch_size=full",
    "momentum=0",
    # the public code's MNIST lr; with server momentum 0.9, lr 0.05 diverged after ~12 rounds and
    # 0.02 swung by up to 0.4 in accuracy after ~25 (mnist5k and animal_mnist, 30 clients)
    "lr=0.01",
    "strategy=lbgm",
    "strategy.server_momentum=0.9",
    "federated_eval=false",
    "plots=false",
]
PARTITIONS = {"iid": ["partition=iid"], "dirichlet": ["partition=dirichlet", "partition.alpha=0.5"]}
FEDAVG_M = "-1"  # the δ that never reuses: FedAvg with the same server momentum
TARGET_GAP = 0.01  # the accuracy target is FedAvg's mean final accuracy minus 1 point
REACH_GAPS = (TARGET_GAP, 0.05)  # uplink-to-accuracy columns: FedAvg's final − 1 and − 5 pts
TARGET_RATIO = 3.0  # the target: >= 3x less cumulative uplink within 1 pt of FedAvg


def fedsgd_runs(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    """(run folder, overrides) of the requested cells: FedAvg-M first, then each δ, per seed."""
    scale = [f"num_clients={args.clients}", f"clients_per_round={args.clients}"]
    return [
        (
            args.runs / dataset / partition / f"delta{delta}_seed{seed}",
            [
                *FEDSGD,
                *scale,
                f"dataset={dataset}",
                *PARTITIONS[partition],
                f"strategy.delta={delta}",
                f"seed={seed}",
            ],
        )
        for dataset in args.datasets.split(",")
        for partition in args.partitions.split(",")
        for delta in [FEDAVG_M, *args.deltas.split(",")]
        for seed in args.seeds.split(",")
    ]


def fedsgd_cells(root: Path) -> dict[tuple[str, str], dict[str, list[list[dict]]]]:
    """Per (data set, partition), per δ label, the metrics rows of each seed's finished run."""
    cells: dict[tuple[str, str], dict[str, list[list[dict]]]] = {}
    for run in find_runs(root):
        dataset, partition = run.parent.parent.name, run.parent.name
        delta = run.name.split("_seed")[0].removeprefix("delta")
        cells.setdefault((dataset, partition), {}).setdefault(delta, []).append(read_metrics(run))
    return cells


def uplink_to(rows: list[dict], target: float) -> float | None:
    """Cumulative uplink (bytes) when the accuracy first reaches ``target``; None if never."""
    total = 0.0
    for row in rows:
        total += row["uplink_bytes"]
        if row["accuracy"] >= target:
            return total
    return None


def label(delta: str) -> str:
    return "FedAvg + server momentum" if delta == FEDAVG_M else f"LBGM δ={delta}"


def reach_ratio(variant: list[list[dict]], base: list[list[dict]], target: float) -> str:
    """FedAvg's mean uplink to ``target`` over this variant's, with the seeds that reached it
    (each mean over the seeds that did)."""
    mine = [u for u in (uplink_to(rows, target) for rows in variant) if u is not None]
    theirs = [u for u in (uplink_to(rows, target) for rows in base) if u is not None]
    if not mine or not theirs:
        return f"not reached (0/{len(variant)})"
    ratio = statistics.fmean(theirs) / statistics.fmean(mine)
    return f"{ratio:.2f}× ({len(mine)}/{len(variant)})"


def fedsgd_table(variants: dict[str, list[list[dict]]]) -> tuple[list[str], str]:
    """One cell's table rows and its verdict line (best δ, target met or not)."""
    base = variants[FEDAVG_M]
    base_final = statistics.fmean(rows[-1]["accuracy"] for rows in base)
    base_uplink = statistics.fmean(sum(r["uplink_bytes"] for r in rows) for rows in base)
    targets = [base_final - gap for gap in REACH_GAPS]
    lines = [
        "Targets: FedAvg's mean final accuracy − "
        + ", − ".join(f"{100 * g:g} pt ({t:.4f})" for g, t in zip(REACH_GAPS, targets, strict=True))
        + "; *to target*: FedAvg's cumulative uplink until it first reaches the target over this "
        "variant's (seeds that reached it).",
        "",
        "| variant | seeds | final accuracy | last 5 rounds | gap to FedAvg (pts) "
        "| cumulative uplink MB | FedAvg / this "
        + "".join(f"| to − {100 * g:g} pt " for g in REACH_GAPS)
        + "| reuse frac |",
        "|---|---|---|---|---|---|---|" + "---|" * len(REACH_GAPS) + "---|",
    ]
    best: tuple[float, str] | None = None
    closest: tuple[float, str, float] | None = None
    for delta in sorted(variants, key=float):
        seeds = variants[delta]
        finals = [rows[-1]["accuracy"] for rows in seeds]
        final = statistics.fmean(finals)
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        uplink = statistics.fmean(sum(r["uplink_bytes"] for r in rows) for rows in seeds)
        reuse = [
            r["lbgm_reuse_frac"]
            for rows in seeds
            for r in rows
            if r.get("lbgm_reuse_frac") is not None
        ]
        gap = 100 * (final - base_final)
        lines.append(
            f"| {label(delta)} | {len(seeds)} | {final:.4f} ± {std:.4f} "
            f"| {statistics.fmean(r['accuracy'] for rows in seeds for r in rows[-5:]):.4f} "
            f"| {gap:+.2f} | {uplink / 1e6:,.1f} | {base_uplink / uplink:.2f}× "
            + "".join(f"| {reach_ratio(seeds, base, t)} " for t in targets)
            + f"| {statistics.fmean(reuse) if reuse else 0.0:.3f} |"
        )
        if delta == FEDAVG_M or len(seeds) < 3:
            continue
        if gap >= -100 * TARGET_GAP:
            best = max(best or (0.0, ""), (base_uplink / uplink, delta))
        if closest is None or gap > closest[0]:
            closest = (gap, delta, base_uplink / uplink)
    if best is not None:
        met = "met" if best[0] >= TARGET_RATIO else "not met"
        verdict = (
            f"best δ within 1 pt of FedAvg: {best[1]} at {best[0]:.2f}× less cumulative uplink: "
            f"target (≥ {TARGET_RATIO:g}×) {met}."
        )
    elif closest is not None:
        verdict = (
            "no δ stays within 1 pt of FedAvg over ≥ 3 seeds: target not met; closest "
            f"δ={closest[1]}, {closest[0]:+.2f} pts at {closest[2]:.2f}× less uplink."
        )
    else:
        verdict = "no LBGM variant has 3 seeds yet."
    return lines, verdict


def fedsgd_plot(cells: dict[tuple[str, str], dict[str, list[list[dict]]]], path: Path) -> None:
    """Mean accuracy vs mean cumulative uplink per δ, one panel per data set and partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(cells)
    deltas = sorted({delta for variants in cells.values() for delta in variants}, key=float)
    colors = {delta: f"C{i}" for i, delta in enumerate(deltas)}  # one colour per δ in every panel
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        variants = cells[key]
        for delta in sorted(variants, key=float):
            seeds = variants[delta]
            length = min(len(rows) for rows in seeds)
            uplink = np.mean(
                [np.cumsum([r["uplink_bytes"] for r in rows[:length]]) for rows in seeds], 0
            )
            accuracy = np.mean([[r["accuracy"] for r in rows[:length]] for rows in seeds], 0)
            ax.plot(
                uplink / 1e6,
                accuracy,
                marker=".",
                markersize=3,
                color=colors[delta],
                label=label(delta),
            )
        target = statistics.fmean(rows[-1]["accuracy"] for rows in variants[FEDAVG_M])
        ax.axhline(target - TARGET_GAP, color="grey", linestyle="--", linewidth=0.8)
        ax.set(xscale="log", xlabel="cumulative uplink (MB)", title=" / ".join(key))
        ax.set_ylim(0.1, min(1.0, target + 0.05))  # from chance (10 classes) up
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("central test accuracy (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fedsgd_report(args: argparse.Namespace) -> None:
    """Write ``lbgm_tradeoff_fedsgd.md`` and ``.png`` from every finished run under --runs."""
    cells = fedsgd_cells(args.runs)
    rounds = sorted({len(rows) for v in cells.values() for s in v.values() for rows in s})
    args.results.mkdir(parents=True, exist_ok=True)
    fedsgd_plot(cells, args.results / "lbgm_tradeoff_fedsgd.png")
    report = [
        "# LBGM vs FedAvg in the FedSGD regime (the public LBGM code's)",
        "",
        f"Setting: `{' '.join(FEDSGD)} num_clients={args.clients} "
        f"clients_per_round={args.clients} num_rounds={'/'.join(map(str, rounds))}`; "
        "partitions `partition=iid` and `partition=dirichlet partition.alpha=0.5`; "
        "FedAvg + server momentum is `strategy.delta=-1` (never reuse). LBGM per layer, no "
        "residual. Uplink is measured from the records sent. "
        "Written by `benchmarks/lbgm_tradeoff.py`.",
        "",
        "`strategy.delta` is the public LBGM code's threshold (`--error-tol`): both reuse a "
        "parameter tensor's look-back gradient when its phase error 1 − cos²(g, LBG) ≤ δ, one "
        "decision per tensor. With one full-batch step per round the pseudo-gradient "
        "θ_start − θ_end that fedsparse compares is lr·g, so the phase error is that of the "
        "gradient itself, as in the code; only with several local steps do the two differ.",
        "",
    ]
    for key in sorted(cells):
        lines, verdict = fedsgd_table(cells[key])
        report += [f"## {key[0]}, {key[1]}", "", *lines, "", f"Verdict: {verdict}", ""]
    report += ["Accuracy vs cumulative uplink: `lbgm_tradeoff_fedsgd.png`.", ""]
    (args.results / "lbgm_tradeoff_fedsgd.md").write_text("\n".join(report))
    print("\n".join(report))


def multistep(args: argparse.Namespace) -> None:
    """Run the multistep sweeps afresh and write ``lbgm_tradeoff.md`` and ``.png``."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=("fedsgd", "multistep"), default="fedsgd")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, help="default: fedsgd 50, multistep 30")
    parser.add_argument("--clients", type=int, help="default: fedsgd 30, multistep 20")
    parser.add_argument("--datasets", default="mnist5k,animal_mnist", help="fedsgd only")
    parser.add_argument("--partitions", default="dirichlet,iid", help="fedsgd only")
    parser.add_argument("--deltas", default="0.2,0.4,0.6,0.8", help="fedsgd only")
    parser.add_argument("--runs", type=Path, help="default: benchmarks/runs/lbgm_tradeoff[_fedsgd]")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true", help="fedsgd: only the report")
    args = parser.parse_args()
    fedsgd = args.regime == "fedsgd"
    args.rounds = args.rounds or (50 if fedsgd else 30)
    args.clients = args.clients or (30 if fedsgd else 20)
    suffix = "_fedsgd" if fedsgd else ""
    args.runs = args.runs or REPO / "benchmarks" / "runs" / f"lbgm_tradeoff{suffix}"
    if not fedsgd:
        multistep(args)
        return
    if not args.report_only:
        run_missing_in_process(fedsgd_runs(args), args.rounds)
    fedsgd_report(args)


if __name__ == "__main__":
    main()
