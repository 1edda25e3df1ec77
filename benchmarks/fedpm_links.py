"""FedPM on both links: range vs KLMS uplink with the coded downlink, side by side in one run.

    python benchmarks/fedpm_links.py                  # seed 0, IID and Dirichlet, 30 rounds
    python benchmarks/fedpm_links.py --seeds 0,1,2 --rounds 30
    python benchmarks/fedpm_links.py --theta-cohorts 10,100,500   # the θ downlink vs cohort size
    python benchmarks/fedpm_links.py --cohort-runs 100 --rounds 10  # and in a real run

The fedpm_vs_dense setting (mnist5k cnn, 10 clients all every round, 3 local epochs at batch
128, Adam 0.1 on the scores), in process (no Ray), one folder per run under ``--runs``;
finished runs are skipped and interrupted ones resume. Writes
``benchmarks/results/fedpm_links.md``: per run the final accuracy, the cumulative uplink bpp on
the wire and its KL bound, the downlink bpp, up + down against FedAvg's 64 bits per parameter
per client-round (32 up, 32 down), client encode and its share of the client's round.

``--theta-cohorts``: the θ downlink's bits per entry per client-round against the clients a
round, without training (:func:`simulate_theta`): the cnn's real seed θ, then each round K
clients' q = σ(logit θ_{t−1} + g + ξ_k) (g a per-entry drift kept over the rounds, the learning,
ξ_k each client's own), one mask each, the FedPM posterior (reset every round) and the uint16 θ
the server sends, exactly as the strategy computes it; every option measured on those θ.
Stored in ``results/fedpm_links_theta.json`` and shown in ``fedpm_links.md``.
``--cohort-runs K,...``: real runs with K clients, all K every round (IID, so every client has
data), range-coded uplink, and their measured downlink per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord  # noqa: E402

from benchmarks.fedpm_vs_dense import SETTING  # noqa: E402
from benchmarks.sweep import run_missing_in_process  # noqa: E402
from server_app.results import read_metrics  # noqa: E402
from server_app.settings import client_job, compose_config  # noqa: E402
from strategies.fedpm import count_model, theta_codec  # noqa: E402
from strategies.fedpm.mask_codec import quantize_prior  # noqa: E402
from strategies.fedpm.posterior import BetaPosterior  # noqa: E402
from strategies.fedpm.shared import logit, seed_theta, sigmoid  # noqa: E402

CODINGS = ("range", "klms")
FEDAVG_BPP = 64.0  # float32 both ways
THETA_FILE = "fedpm_links_theta.json"
SECTION_START = "<!-- clients-per-round sections: fedpm_links.py --theta-cohorts, --cohort-runs -->"
SECTION_END = "<!-- end of the clients-per-round sections -->"


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


def cohort_runs(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    """Real runs with every one of K clients sampled every round (so all hold last round's θ)."""
    common = [s for s in SETTING if not s.startswith(("engine.", "num_clients", "clients_per"))]
    return [
        (
            args.runs / f"fedpm-range_cohort{k}_seed0",
            [
                "strategy=fedpm",
                "strategy.uplink_coding=range",
                "partition=iid",
                f"num_clients={k}",
                f"clients_per_round={k}",
                "seed=0",
                "model=cnn",
                *common,
            ],
        )
        for k in (args.cohort_runs or "").split(",")
        if k
    ]


def cohort_report(args: argparse.Namespace) -> list[str]:
    """Measured downlink bpp per round of the cohort runs found."""
    lines = []
    for run in sorted(args.runs.glob("fedpm-range_cohort*_seed0")):
        if not (run / "summary.json").exists():
            continue
        rows = read_metrics(run)
        later = [r["downlink_bpp"] for r in rows[1:]]
        lines.append(
            f"| {rows[0]['clients']} | {len(rows)} | {rows[0]['downlink_bpp']:.3f} | "
            f"{statistics.fmean(later):.3f} | {max(later):.3f} | "
            f"{statistics.fmean(r['fedpm_bpp_wire'] for r in rows):.3f} | "
            f"{rows[-1]['accuracy']:.4f} |"
        )
    if not lines:
        return []
    return [
        "",
        "## Real runs, every client every round (measured bytes)",
        "",
        "`python benchmarks/fedpm_links.py --cohort-runs K --rounds R`: mnist5k cnn, IID, K "
        "clients all sampled every round, 3 local epochs at batch 128, range-coded uplink, "
        "`federated_eval=false` (clients train on all their images), seed 0.",
        "",
        "| clients a round | rounds | downlink bpp round 1 | rounds 2+ mean | rounds 2+ max | "
        "uplink bpp | final acc |",
        "|---|---|---|---|---|---|---|",
        *lines,
    ]


def cohort_sections(args: argparse.Namespace) -> list[str]:
    """The clients-per-round sections: the simulated θ table and the real cohort runs."""
    return [*theta_report(args.results / THETA_FILE), *cohort_report(args)]


def update_cohort_sections(args: argparse.Namespace) -> str:
    """``fedpm_links.md`` with only its clients-per-round sections rewritten (the rest of the
    page, runs no longer on disk included, kept as it is)."""
    path = args.results / "fedpm_links.md"
    text = path.read_text() if path.exists() else ""
    section = "\n".join([SECTION_START, *cohort_sections(args), SECTION_END])
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        return head + section + rest.split(SECTION_END, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def report(args: argparse.Namespace) -> str:
    lines = [
        "# FedPM on both links: range vs KLMS uplink, coded downlink",
        "",
        f"Setting: `{' '.join(s for s in SETTING if not s.startswith('engine.'))} model=cnn "
        f"num_rounds={args.rounds}`, seeds {args.seeds}, in process on the 2-core box; "
        "`downlink_coding=coded` (default), KLMS defaults (6 bits, 3 bits of KL per block). "
        "bpp = bits per parameter per client-round, cumulative over the run, measured bytes. "
        "Clients train on all their images (nothing held back under `federated_eval=false`). "
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
            cells = [mean_std([r[key] for r in runs]) for key in ("accuracy", "up", "down")]
            lines.append(
                f"| {partition} | {coding} | {len(runs)} | {' | '.join(cells)} | {versus} |"
            )
    lines += [SECTION_START, *cohort_sections(args), SECTION_END]
    return "\n".join(lines) + "\n"


def simulate_theta(clients: int, rounds: int, drift: float, seed: int = 0) -> list[dict]:
    """Per downlink round 2..rounds+1, the bits per entry a client receives under each option,
    for θ made by ``clients`` simulated masks a round (see the module docstring)."""
    job = client_job(compose_config(["strategy=fedpm", "model=cnn", *SETTING, f"seed={seed}"]))
    base = seed_theta(job, seed)
    shapes = {k: v.shape for k, v in base.items()}
    flat_base = np.concatenate([np.ravel(v) for v in base.values()])
    entries = flat_base.size
    rng = np.random.default_rng([seed, clients])
    learning = rng.normal(0.0, drift, entries).astype(np.float32)
    posterior = BetaPosterior(1.0, 0.01, 1)
    rows = []
    for server_round in range(1, rounds + 1):
        p = flat_base / 65536.0
        start = logit(p).astype(np.float32) + learning
        count = np.zeros(entries, np.int32)
        kl = 0.0
        for _ in range(clients):
            q = sigmoid(start + rng.normal(0.0, drift, entries).astype(np.float32))
            kl += float(np.mean(q * np.log2(q / p) + (1 - q) * np.log2((1 - q) / (1 - p))))
            count += rng.random(entries) < q
        counts = _layers(count, shapes)
        theta = posterior.update(server_round, counts, clients)
        priors = {k: quantize_prior(sigmoid(logit(v).astype(np.float32))) for k, v in theta.items()}
        options = _options(priors, _layers(flat_base, shapes), counts, clients)
        rows.append({"round": server_round + 1, "kl": kl / clients, **options})
        flat_base = np.concatenate([np.ravel(v) for v in priors.values()])
    return rows


def _layers(flat: np.ndarray, shapes: dict) -> dict[str, np.ndarray]:
    sizes = [int(np.prod(s)) for s in shapes.values()]
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return {k: part.reshape(s) for (k, s), part in zip(shapes.items(), parts, strict=True)}


def _options(priors: dict, base: dict, counts: dict, clients: int) -> dict[str, float]:
    """Bits per entry of each way to send ``priors`` to a client holding ``base``: measured
    streams (ArrayRecord bytes of what the client decodes) and, for the options not built,
    their ideal code length plus any table they would send."""
    entries = sum(v.size for v in priors.values())
    own = theta_codec.encode(priors)
    header = {k: v for k, v in own.items() if k not in theta_codec.SELF_CONTAINED}
    delta = theta_codec.encode_delta(priors, (1, base), own, (clients, counts)) or {}

    def bits(arrays: dict) -> float:
        record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
        return 8.0 * record.count_bytes() / entries

    flat = np.concatenate([np.ravel(v) for v in priors.values()])
    flat_base = np.concatenate([np.ravel(v) for v in base.values()])
    levels, index = np.unique(flat, return_inverse=True)
    kept, context = np.unique(flat_base, return_inverse=True)
    joint = np.bincount(context * levels.size + index, minlength=kept.size * levels.size)
    joint = joint.reshape(kept.size, levels.size)
    conditional = _entropy_bits(joint)
    count_flat = np.concatenate([np.ravel(counts[k]) for k in priors])
    u_context, u = count_model.contexts(flat_base)
    level_counts = np.zeros(levels.size, np.int64)
    level_counts[index] = count_flat
    weights = count_model.level_probabilities(u, clients, 0, level_counts)
    weights = np.maximum(weights / weights.sum(axis=1, keepdims=True), 2.0**-24)
    return {
        "self": bits(own),
        "delta": bits(header | delta) if delta else float("nan"),
        "delta_spread": float(delta[theta_codec.SPREAD][0]) if delta else float("nan"),
        "table_ideal": (conditional + 32.0 * joint.size) / entries,
        "binomial_ideal": float(-np.log2(weights[u_context, index]).sum()) / entries,
        "conditional_ideal": conditional / entries,
        "marginal_ideal": _entropy_bits(np.bincount(index)) / entries,
    }


def _entropy_bits(histogram: np.ndarray) -> float:
    """Σ n·log₂(row total / n) over a (rows, symbols) histogram: the ideal bits of coding each
    row's symbols with that row's own frequencies."""
    histogram = np.atleast_2d(histogram).astype(np.float64)
    totals = np.broadcast_to(histogram.sum(axis=1, keepdims=True), histogram.shape)
    seen = histogram > 0
    return float(np.sum(histogram[seen] * np.log2(totals[seen] / histogram[seen])))


def theta_report(path: Path) -> list[str]:
    """The clients-per-round table of ``path`` (written by ``--theta-cohorts``)."""
    if not path.exists():
        return []
    sweep = json.loads(path.read_text())
    lines = [
        "",
        "## θ downlink against clients per round (simulated masks, no training)",
        "",
        sweep["note"],
        "",
        "| clients a round | KL(q‖θ) per entry | self-contained (no base) | delta, measured "
        "(spreads chosen) | ideal: binomial, no table | ideal: context table (old delta) incl. "
        "its table | ideal H(θ_t | θ_t−1) | ideal H(θ_t) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients, rows in sweep["rows"].items():
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "round"}
        spreads = sorted({int(r["delta_spread"]) for r in rows})
        lines.append(
            f"| {clients} | {mean['kl']:.4f} | {mean['self']:.3f} | {mean['delta']:.3f} "
            f"({'/'.join(map(str, spreads))}) | {mean['binomial_ideal']:.3f} | "
            f"{mean['table_ideal']:.3f} | {mean['conditional_ideal']:.3f} | "
            f"{mean['marginal_ideal']:.3f} |"
        )
    lines += ["", "Per round (measured delta / self-contained, bits per entry):", ""]
    for clients, rows in sweep["rows"].items():
        cells = ", ".join(f"r{r['round']} {r['delta']:.2f}/{r['self']:.2f}" for r in rows)
        lines.append(f"- {clients} clients: {cells}")
    return lines


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` to 4 decimals (± 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/fedpm_links")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--theta-cohorts", help="clients a round, e.g. 10,100,500")
    parser.add_argument("--cohort-runs", help="real runs with K clients a round, e.g. 100")
    parser.add_argument("--theta-rounds", type=int, default=10)
    parser.add_argument("--theta-drift", type=float, default=0.1)
    args = parser.parse_args()
    if args.theta_cohorts:
        sweep = {
            "note": (
                f"`--theta-cohorts {args.theta_cohorts} --theta-rounds {args.theta_rounds} "
                f"--theta-drift {args.theta_drift}`: the cnn's {SETTING[0]} seed-0 θ (round 1 "
                "sends the seed: ≤ 1 bpp), then per round K clients' masks drawn from q = "
                "σ(logit θ_{t−1} + g + ξ_k), g and ξ_k ~ N(0, drift²) per entry (g kept over the "
                "rounds); bits per entry per client-round of downlink rounds "
                f"2..{args.theta_rounds + 1}, mean over those rounds. Measured: the bytes of the "
                "ArrayRecord a client decodes (shapes, CRC, levels and its stream; not the "
                "round's config record). Ideal: code lengths without the coder, plus the "
                "uint32 context × level table the old delta sent."
            ),
            "rows": {
                k: simulate_theta(int(k), args.theta_rounds, args.theta_drift)
                for k in args.theta_cohorts.split(",")
            },
        }
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / THETA_FILE).write_text(json.dumps(sweep, indent=1))
    if args.cohort_runs:
        run_missing_in_process(cohort_runs(args), args.rounds)
    if args.theta_cohorts or args.cohort_runs:
        text = update_cohort_sections(args)
    else:
        if not args.report_only:
            run_missing_in_process(planned(args), args.rounds)
        text = report(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fedpm_links.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
