"""KLMS against range coding, round by round, in FedPM's two regimes: which block cut and bits.

    nice -n 10 python benchmarks/fedpm_klms_sweep.py --seeds 0            # screen every setting
    nice -n 10 python benchmarks/fedpm_klms_sweep.py --seeds 0,1,2 --settings range,klms-8b2
    python benchmarks/fedpm_klms_sweep.py --report-only

Regimes (mnist5k, cnn, Dirichlet 0.5, 3 local epochs at batch 128, Adam 0.1 on the scores,
``federated_eval=false``, so every client trains on all its images): **10x400**, 10 clients
all every round; **100x40**, 100 clients of ~40 images, 10 a round. Each KLMS setting names its
index bits and the KL (bits) at which a block closes (``klms_bits``, ``klms_kl_per_block``).
Runs in process (no Ray), one after another; finished runs are skipped, interrupted ones
resume. Writes ``benchmarks/results/fedpm_klms_sweep.md``: per regime and setting the seeds
found, the final accuracy, the accuracy gap to range coding of the same seeds (final, and the
worst round from round 5 of the seed-mean gap), the uplink bpp on the wire and its KL bound,
the client's encode seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fedpm_links import mean_std  # noqa: E402
from benchmarks.sweep import run_missing_in_process  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

COMMON = [
    "dataset=mnist5k",
    "model=cnn",
    "partition=dirichlet",
    "local_epochs=3",
    "batch_size=128",
    "federated_eval=false",
    "strategy=fedpm",
]
REGIMES = {
    "10x400": ["num_clients=10", "clients_per_round=10"],
    "100x40": ["num_clients=100", "clients_per_round=10"],
}
SETTINGS: dict[str, list[str]] = {
    "range": ["strategy.uplink_coding=range"],
    **{
        f"klms-{bits}b{kl:g}": [
            "strategy.uplink_coding=klms",
            f"strategy.klms_bits={bits}",
            f"strategy.klms_kl_per_block={kl}",
        ]
        for bits, kl in ((6, 3.0), (6, 1.5), (8, 3.0), (8, 2.0))
    },
    # every block sends its index: no block (a small layer's, a layer's tail) takes a θ sample
    "klms-6b3-fresh0": [
        "strategy.uplink_coding=klms",
        "strategy.klms_bits=6",
        "strategy.klms_kl_per_block=3.0",
        "strategy.klms_fresh_kl=0",
    ],
}
FROM_ROUND = 5  # the bar: within 1 point of range at every round from round 5
STATUS = """
## Status (2026-12-08)

The issue asks for 3 seeds × 30 rounds of every setting in both regimes. On the shared 2-core
box (load 7-18 for most of the session: a 10-client round took 20-230 s) this ran: range and
the default KLMS (6 bits, 3 bits of KL per block) over seeds 0, 1, 2 (100x40 for 30 rounds,
10x400 for 10), and `klms_kl_per_block=1.5` on seed 0. The default KLMS trails range by 7.5
points at 100x40 after 30 rounds and by 5.4 at 10x400 after 10 rounds (worst 6.9, round 8): the
lag is real, also with every client training on all its images. Halving the KL per block
(~8 candidates' worth of KL per block of 64 candidates instead of ~64) did not close it on
seed 0 (100x40: 0.522 vs the default's 0.588 on that seed) and cost 0.116 bpp up over 10
rounds of 10x400, above the 0.10 bar. So the KLMS defaults stay. Not yet measured:
`klms_fresh_kl=0` (at ~0.0015 bits of KL per entry a layer of 10-32 entries, fc2.bias or
conv1.bias, carries less than the 0.05-bit fresh threshold, so its q never travels) and the
8-bit settings. To finish the sweep (about 2 h on a quiet box):

    nice -n 10 python benchmarks/fedpm_klms_sweep.py --seeds 0,1,2
"""


def planned(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    """Seeds outermost: a cut-short sweep has every setting of the first seeds."""
    return [
        (
            args.runs / f"{regime}_{setting}_seed{seed}",
            [*COMMON, *REGIMES[regime], *SETTINGS[setting], f"seed={seed}"],
        )
        for seed in args.seeds.split(",")
        for regime in args.regimes.split(",")
        for setting in args.settings.split(",")
    ]


def finished(args: argparse.Namespace, regime: str) -> dict[str, dict[str, list[dict]]]:
    """The metrics rows of every run of ``regime`` that has logged at least
    :data:`FROM_ROUND` rounds, by setting and seed, cut to the rounds every one of them has
    (at most ``--rounds``): a regime run shorter or interrupted is compared over its rounds."""
    found: dict[str, dict[str, list[dict]]] = {}
    for setting in SETTINGS:
        for run in sorted(args.runs.glob(f"{regime}_{setting}_seed*")):
            rows = read_metrics(run) if (run / "metrics.jsonl").exists() else []
            if len(rows) >= FROM_ROUND:
                found.setdefault(setting, {})[run.name.rsplit("seed", 1)[1]] = rows
    rounds = min([args.rounds, *(len(r) for runs in found.values() for r in runs.values())])
    return {s: {seed: r[:rounds] for seed, r in runs.items()} for s, runs in found.items()}


def report(args: argparse.Namespace) -> str:
    lines = [
        "# FedPM: KLMS block cut and index bits against range coding, both regimes",
        "",
        f"Setting: `{' '.join(COMMON)}`, {args.rounds} rounds, in process on the shared 2-core "
        "box (1 torch thread); `federated_eval=false`, so clients train on all their images "
        "(nothing held back). Regimes: 10x400 = `num_clients=10 clients_per_round=10`, 100x40 = "
        "`num_clients=100 clients_per_round=10`. `klms-<b>b<k>`: `klms_bits=b "
        "klms_kl_per_block=k` (other KLMS settings at their defaults; `-fresh0`: "
        "`klms_fresh_kl=0`). acc = thresholded "
        "network (θ > 0.5) on the central test split. Gaps are KLMS − range over the seeds both "
        f"have; 'worst from round {FROM_ROUND}' is the lowest seed-mean gap over rounds "
        f"{FROM_ROUND}.. the last round the regime's runs share (column 'rounds'). Uplink "
        "bpp: cumulative per client-round on the wire. "
        "Written by `benchmarks/fedpm_klms_sweep.py`.",
        "",
        "| regime | setting | seeds | rounds | final acc | final gap | worst gap from round "
        f"{FROM_ROUND} (round) | uplink bpp | KL bpp | encode s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    curves = ["", "Accuracy per round (mean over the seeds found):", ""]
    for regime in REGIMES:
        found = finished(args, regime)
        for setting, runs in found.items():
            lines.append(_row(regime, setting, runs, found.get("range", {})))
            per_round = zip(*(r for r in runs.values()), strict=True)
            means = [statistics.fmean(row["accuracy"] for row in rows) for rows in per_round]
            curves.append(f"- {regime} {setting}: {' '.join(f'{a:.3f}' for a in means)}")
    lines += [*curves, STATUS]
    return "\n".join(lines) + "\n"


def _row(regime: str, setting: str, runs: dict, reference: dict) -> str:
    final = [rows[-1]["accuracy"] for rows in runs.values()]
    sent = {s: sum(r["clients"] for r in rows) for s, rows in runs.items()}
    up = [
        sum(r["fedpm_bpp_wire"] * r["clients"] for r in rows) / sent[s] for s, rows in runs.items()
    ]
    kl = [sum(r["fedpm_bpp_kl"] * r["clients"] for r in rows) / sent[s] for s, rows in runs.items()]
    encode = [statistics.fmean(r["fedpm_encode_s"] for r in rows) for rows in runs.values()]
    paired = sorted(set(runs) & set(reference))
    final_gap = worst = "–"
    if setting != "range" and paired:
        gaps = [
            statistics.fmean(runs[s][i]["accuracy"] - reference[s][i]["accuracy"] for s in paired)
            for i in range(len(runs[paired[0]]))
        ]
        low = min(range(FROM_ROUND - 1, len(gaps)), key=gaps.__getitem__)
        final_gap = f"{gaps[-1]:+.4f}"
        worst = f"{gaps[low]:+.4f} ({low + 1})"
    return (
        f"| {regime} | {setting} | {','.join(runs)} | {len(next(iter(runs.values())))} | "
        f"{mean_std(final)} | {final_gap} | "
        f"{worst} | {statistics.fmean(up):.4f} | {statistics.fmean(kl):.4f} | "
        f"{statistics.fmean(encode):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/fedpm_klms_sweep")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        for run, overrides in planned(args):
            run_missing_in_process([(run, overrides)], args.rounds)
            (args.results / "fedpm_klms_sweep.md").write_text(report(args))
    text = report(args)
    (args.results / "fedpm_klms_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
