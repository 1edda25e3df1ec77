"""FedPM on both links: range vs KLMS uplink with the coded downlink, side by side in one run.

    python benchmarks/fedpm_links.py                  # seed 0, IID and Dirichlet, 30 rounds
    python benchmarks/fedpm_links.py --seeds 0,1,2 --rounds 30

The fedpm_vs_dense setting (mnist5k cnn, 10 clients all every round, 3 local epochs at batch
128, Adam 0.1 on the scores), in process (no Ray), one folder per run under ``--runs``;
finished runs are skipped and interrupted ones resume. Writes
``benchmarks/results/fedpm_links.md``: per run the final accuracy, the cumulative uplink bpp on
the wire and its KL bound, the downlink bpp, up + down against FedAvg's 64 bits per parameter
per client-round (32 up, 32 down), client encode and its share of the client's round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fedpm_vs_dense import SETTING  # noqa: E402
from benchmarks.sweep import run_missing_in_process  # noqa: E402
from server_app.results import read_metrics  # noqa: E402

CODINGS = ("range", "klms")
FEDAVG_BPP = 64.0  # float32 both ways


def planned(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    common = [s for s in SETTING if not s.startswith("engine.")]
    return [
        (
            args.runs / f"fedpm-{coding}_{partition}_seed{seed}",
            [
                "strategy=fedpm",
                f"strategy.uplink_coding={coding}",
                f"partition={partition}",
                f"seed={seed}",
                "model=cnn",
                *common,
            ],
        )
        for seed in args.seeds.split(",")
        for partition in ("iid", "dirichlet")
        for coding in CODINGS
    ]


def row(run: Path) -> dict:
    rows = read_metrics(run)
    summary = json.loads((run / "summary.json").read_text())
    sent = sum(r["clients"] for r in rows)

    def per_reply(key: str) -> float:
        return sum(r[key] * r["clients"] for r in rows) / sent

    return {
        "accuracy": rows[-1]["accuracy"],
        "up": per_reply("fedpm_bpp_wire"),
        "kl": per_reply("fedpm_bpp_kl"),
        "down": summary["downlink_bpp"],
        "down_after_1": statistics.fmean(r["downlink_bpp"] for r in rows[1:]),
        "encode": statistics.fmean(r["fedpm_encode_s"] for r in rows),
        "train": statistics.fmean(r["client_train_s"] / r["clients"] for r in rows),
        "decode": statistics.fmean(r["fedpm_decode_s"] / r["clients"] for r in rows),
    }


def report(args: argparse.Namespace) -> str:
    lines = [
        "# FedPM on both links: range vs KLMS uplink, coded downlink",
        "",
        f"Setting: `{' '.join(s for s in SETTING if not s.startswith('engine.'))} model=cnn "
        f"num_rounds={args.rounds}`, seeds {args.seeds}, in process on the 2-core box; "
        "`downlink_coding=coded` (default), KLMS defaults (6 bits, 3 bits of KL per block). "
        "bpp = bits per parameter per client-round, cumulative over the run, measured bytes. "
        "Written by `benchmarks/fedpm_links.py`.",
        "",
        "| run | final acc | uplink bpp (wire) | KL bound | downlink bpp (all rounds / "
        "rounds 2+) | up + down | × below FedAvg (64) | encode s | decode s | client round s "
        "| (encode + decode) / round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, _ in planned(args):
        if not (run / "summary.json").exists():
            continue
        r = row(run)
        total = r["up"] + r["down"]
        lines.append(
            f"| {run.name} | {r['accuracy']:.4f} | {r['up']:.4f} | {r['kl']:.4f} | "
            f"{r['down']:.3f} / {r['down_after_1']:.3f} | {total:.3f} | "
            f"{FEDAVG_BPP / total:.1f}× | {r['encode']:.3f} | {r['decode']:.4f} | "
            f"{r['train']:.3f} | {(r['encode'] + r['decode']) / r['train']:.0%} |"
        )
    lines += [
        "",
        "Mean ± std over the seeds found:",
        "",
        "| partition | coding | seeds | final acc | uplink bpp | downlink bpp | KLMS − range acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for partition in ("iid", "dirichlet"):
        found = {
            coding: {
                seed: row(run)
                for seed in args.seeds.split(",")
                if (run := args.runs / f"fedpm-{coding}_{partition}_seed{seed}")
                .joinpath("summary.json")
                .exists()
            }
            for coding in CODINGS
        }
        paired = sorted(set(found["range"]) & set(found["klms"]))
        for coding in CODINGS:
            runs = list(found[coding].values())
            if not runs:
                continue
            gap = [found["klms"][s]["accuracy"] - found["range"][s]["accuracy"] for s in paired]
            versus = (
                f"{statistics.fmean(gap):+.4f} (seeds {','.join(paired)})"
                if coding == "klms" and gap
                else ""
            )
            cells = [_mean_std([r[key] for r in runs]) for key in ("accuracy", "up", "down")]
            lines.append(
                f"| {partition} | {coding} | {len(runs)} | {' | '.join(cells)} | {versus} |"
            )
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/fedpm_links")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_missing_in_process(planned(args), args.rounds)
    text = report(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fedpm_links.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
