"""Scale benchmark: seconds per round and peak memory vs number of clients, side by side.

    python -m benchmarks.scale                                   # 10, 100, 300, 1,000 clients
    python -m benchmarks.scale --clients 10,100 --strategies fedavg --rounds 3   # quick look
    python -m benchmarks.scale --clients 100,1000 --cohorts auto --name scale_auto   # K=auto only
    python -m benchmarks.scale --report-only                     # rebuild the report
    python -m benchmarks.scale --gpu     # GPU rows: resnet18, cifar10_synthetic, 500 and 1,000
                                         # clients, 10 actors sharing the GPU -> scale_gpu.md
    python -m benchmarks.scale --gpu --model conv6 --clients 500 --strategies fedpm-klms

Rows, each run in a fresh process tree at every client count (all clients sampled each round):
(a) plain Flower: ClientApp + stock ``flwr.serverapp.strategy.FedAvg``, one SuperNode per
client (``plain_flower.py``); (b) the compute floors (``floor.py``): FedAvg's local training
and averaging in plain PyTorch in one and in two processes, and each other strategy's own floor
(its client algorithm and server arithmetic, in two processes); with ``--resident-floor
DEVICE`` (``--gpu``: cuda) also each fedsparse row's own floor in one process with the model
and every client's data on that device (``floor.py --resident``, pfl-research's way; run after
the fedsparse rows, ``--resident-rounds`` rounds); (c)
fedsparse with each strategy at ``engine.clients_per_node=1`` and ``auto``. Same data, model
and local work everywhere (``work.py``); every row evaluates the global model centrally once
per round (FedPM rows turn off the sampled-mask accuracy, ``strategy.eval_samples=0``: 5 more
evaluations by default). The report holds each fedsparse row against FedAvg's 2-process floor,
against its own strategy's (a variant such as ``fedpm-packed``: its base strategy's floor)
and against its own one-process floor on the device (× GPU floor).

A round's time is the gap between two successive per-round progress lines as this script reads
them, so it covers everything a round does (fedsparse: also the checkpoint and monitor); the
first round (actor start-up, imports) is excluded and the median of the rest reported (at up
to 100 clients every row runs at least 12 rounds, ``--small-rounds``). Peak
memory is the largest sum of PSS over the whole process tree (Ray's daemons and actors
included), sampled every 0.5 s; peak GPU memory is the device's largest ``memory.used``
(``nvidia-smi``) during the row, and GPU busy the mean of its ``utilization.gpu`` over the
timed rounds (``gpu_busy.py``: read every 0.2 s, the same way for every row). Writes
``benchmarks/results/<name>.{json,md,png}`` (``--name``, default ``scale``).

``--model``, ``--dataset`` and ``--local-steps`` change the fedsparse rows and the floors;
row (a) is written for ``work.py``'s cnn on mnist5k and one local epoch, so other setups run
with ``--no-baselines``, which also drops the floors unless ``--floors`` asks for them
(``--no-baselines --floors --model resnet18 --dataset cifar10_synthetic --local-steps 1``: a
large-model row held against its floors). ``--client-gpus`` changes the fedsparse rows only
(the 2-process floors train on the CPU). ``--gpu`` is short for ``--model resnet18 --dataset
cifar10_synthetic --client-gpus 0.1 --clients 500,1000 --cohorts auto --strategies fedavg
--no-baselines --resident-floor cuda --rounds 3 --auto-rounds 3 --name scale_gpu``; options
given beside it win. Each fedsparse row is then also held against its GPU floor (× GPU floor).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.scale import work
from benchmarks.scale.gpu_busy import SOURCE, BusySampler, nvidia_smi

REPO = Path(__file__).resolve().parents[2]
ROUND_LINE = re.compile(r"^\[(fedsparse|plain-flower|floor \w+)\] round (\d+)")
SAMPLE_S = 0.5
TIMEOUT_S = 1800
CPUS = os.cpu_count() or 1
DEFAULT_WORK = (work.MODEL, work.DATASET, None)  # model, data set, local steps of work.py
AUTO_ROUNDS = 5  # K=auto rows run at least 5 rounds: the 1,000-client memory check
# Up to 100 clients a round takes one or two seconds, and Flower's 0.1 s dispatch poll alone moves
# a median of 3 by ~10%: every row at those sizes runs at least 12 rounds (a median of 11).
SMALL_CLIENTS, SMALL_ROUNDS = 100, 12
# Every row evaluates centrally once per round; FedPM's sampled-mask accuracy would add
# strategy.eval_samples (default 5) more central evaluations, so its rows turn it off.
SAME_WORK = {"fedpm": ["strategy.eval_samples=0"]}
# Row names that are a strategy with settings of its own: --strategies fedpm,fedpm-packed,fedpm-klms
# puts FedPM's range-coded, bit-packed and KLMS uplinks side by side; <strategy>-unreduced turns
# cohort reduction off (every client's update travels, as before engine.reduce_cohorts).
VARIANTS = {
    "fedpm-packed": ("fedpm", ["strategy.uplink_coding=packed"]),
    "fedpm-klms": ("fedpm", ["strategy.uplink_coding=klms"]),
    **{
        f"{name}-unreduced": (name, ["engine.reduce_cohorts=false"])
        for name in ("fedavg", "lips", "fedpm", "topk", "signsgd")
    },
}
# Variants whose own algorithm costs differently get a floor of their own (the base strategy's
# floor with these settings); the others are held against their base strategy's floor.
OWN_FLOORS = {"fedpm-klms": ["uplink_coding=klms"]}
# Issue #36's seconds a round on one H100 (10 actors sharing it), by (row, clients).
GPU_TARGETS = {("fedavg", 1000): 8.0, ("fedpm-klms", 500): 12.0}
GPU_PRESET = {
    "model": "resnet18",
    "dataset": "cifar10_synthetic",
    "client_gpus": 0.1,
    "clients": "500,1000",
    "cohorts": "auto",
    "strategies": "fedavg",
    "baselines": False,
    "resident_floor": "cuda",
    "auto_rounds": 3,
    "rounds": 3,
    "name": "scale_gpu",
}


@dataclass
class Row:
    """One measured configuration."""

    kind: str  # floor-1 | floor-2 | floor-resident | flower | fedsparse
    clients: int
    strategy: str = ""  # fedsparse and floor rows (a floor row written without one: fedavg)
    clients_per_node: str = ""
    rounds: int = 0
    round_s: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    gpu_peak_mb: float = 0.0  # the device's peak memory.used during the row (0: no GPU)
    gpu_busy: float = float("nan")  # mean utilization.gpu over the timed rounds, in [0, 1]
    device: str = ""  # floor-resident: where its model and data live
    train_s: float = float("nan")  # fedsparse: median Σ of the clients' own training seconds
    decode_s: float = float("nan")  # FedPM: median seconds decoding masks per round (Σ replies)
    wall_s: float = 0.0
    error: str = ""

    def __post_init__(self) -> None:
        if self.kind.startswith("floor") and not self.strategy:
            self.strategy = "fedavg"

    @property
    def floor_strategy(self) -> str:
        """The strategy whose floor this row is held against."""
        if self.kind == "flower":
            return "fedavg"
        if self.strategy in OWN_FLOORS:
            return self.strategy
        return VARIANTS.get(self.strategy, (self.strategy,))[0]

    @property
    def k_setting(self) -> str:
        """The configured cohort size (``1`` or ``auto``), without what ``auto`` resolved to."""
        return self.clients_per_node.split("=")[0]

    @property
    def name(self) -> str:
        """The row's engine and strategy, without the cohort size."""
        return f"fedsparse {self.strategy}" if self.kind == "fedsparse" else self.label

    @property
    def label(self) -> str:
        if self.kind == "fedsparse":
            return f"fedsparse {self.strategy} K={self.k_setting}"
        if self.kind == "flower":
            return "plain Flower FedAvg"
        if self.kind == "floor-resident":
            return f"PyTorch {self.strategy}, 1 process on {self.device}"
        processes = int(self.kind.removeprefix("floor-"))
        return f"PyTorch {self.strategy}, {processes} process" + ("es" if processes > 1 else "")

    @property
    def median_s(self) -> float:
        return statistics.median(self.round_s) if self.round_s else float("nan")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [pid], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pythonpath() -> str:
    """The repository first, then whatever ``PYTHONPATH`` already holds."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def _gpu_used_mb() -> float:
    """Memory in use on the GPUs (MiB, summed), or 0 without ``nvidia-smi``."""
    return sum(nvidia_smi("memory.used"))


def measure(command: list[str], row: Row, log: Path) -> Row:
    """Run ``command``; time its round lines, sample its process tree's memory and the GPU's.
    Its whole output goes to ``log``; a failed row's error quotes the end and names the log."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": _pythonpath(), "RAY_DEDUP_LOGS": "0"},
    )
    peak, gpu_peak = [0.0], [0.0]
    done = threading.Event()
    busy = BusySampler().start()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], sum(_pss_mb(p) for p in _tree(proc.pid)))
            gpu_peak[0] = max(gpu_peak[0], _gpu_used_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stamps: dict[int, float] = {}
    tail: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("w")
    timer = threading.Timer(TIMEOUT_S, lambda: os.killpg(proc.pid, 9))
    timer.start()
    try:
        for line in proc.stdout:
            out.write(line)
            tail = [*tail[-40:], line]
            match = ROUND_LINE.match(line)
            if match:
                stamps[int(match.group(2))] = time.perf_counter()
                print(f"    {line.rstrip()}", flush=True)
        proc.wait()
    finally:
        out.close()
        timer.cancel()
        done.set()
        sampler.join()
        busy.stop()
        _stop_tree(proc)
    rounds = sorted(r for r in stamps if r >= 1)  # plain Flower also evaluates "round 0"
    row.round_s = [stamps[b] - stamps[a] for a, b in itertools.pairwise(rounds)]
    if len(rounds) > 1:  # the timed rounds: from the end of the first to the end of the last
        row.gpu_busy = busy.share(stamps[rounds[0]], stamps[rounds[-1]])
    row.peak_mb, row.gpu_peak_mb = peak[0], gpu_peak[0]
    row.wall_s = time.perf_counter() - started
    if proc.returncode != 0 or len(rounds) < row.rounds:
        row.error = f"exit {proc.returncode} (log: {log}): " + "".join(tail[-5:]).strip()[-400:]
    return row


def _stop_tree(proc: subprocess.Popen) -> None:
    """Kill whatever the measured command left behind (Ray daemons leave its process group)."""
    pids = _tree(proc.pid)
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    proc.wait()


def own_floors(strategies: list[str]) -> list[str]:
    """The floor each fedsparse row is held against (its base strategy's, or its own with
    ``OWN_FLOORS``' settings), once each."""
    return list(
        dict.fromkeys(s if s in OWN_FLOORS else VARIANTS.get(s, (s,))[0] for s in strategies)
    )


def floor_strategies(strategies: list[str]) -> list[str]:
    """The strategies that get a 2-process floor: FedAvg (every row's reference) and each
    fedsparse row's own."""
    return list(dict.fromkeys(["fedavg", *own_floors(strategies)]))


def floor_command(args: argparse.Namespace, row: Row) -> list[str]:
    """``floor.py`` for ``row``, with the fedsparse rows' model, data set and local steps."""
    command = [sys.executable, "-m", "benchmarks.scale.floor", "--clients", str(row.clients)]
    command += ["--rounds", str(row.rounds)]
    if row.kind == "floor-resident":
        command += ["--device", row.device, "--resident"]
    else:
        command += ["--processes", row.kind.removeprefix("floor-")]
    strategy = VARIANTS.get(row.strategy, (row.strategy,))[0]
    command += ["--strategy", strategy, "--model", args.model, "--dataset", args.dataset]
    command += [f"--set={setting}" for setting in OWN_FLOORS.get(row.strategy, [])]
    return command + ([] if args.local_steps is None else ["--local-steps", str(args.local_steps)])


def commands(args: argparse.Namespace, clients: int) -> list[tuple[Row, list[str]]]:
    """Every row at ``clients`` clients, with the command that measures it."""
    python = sys.executable
    least = args.rounds if clients > SMALL_CLIENTS else max(args.rounds, args.small_rounds)
    strategies = args.strategies.split(",")
    jobs = []
    if args.floors:
        default_work = (args.model, args.dataset, args.local_steps) == DEFAULT_WORK
        # the 1-process floor is the cnn rows' reference; a large model's would take hours
        floors = [Row("floor-1", clients, "fedavg", rounds=least)] if default_work else []
        floors += [Row("floor-2", clients, s, rounds=least) for s in floor_strategies(strategies)]
        jobs += [(row, floor_command(args, row)) for row in floors]
    if args.baselines:
        row = Row("flower", clients, rounds=least)
        module = ["-m", "benchmarks.scale.plain_flower"]
        jobs.append((row, [python, *module, "--clients", str(clients), "--rounds", str(least)]))
    for k in filter(None, args.cohorts.split(",")):  # --cohorts "": floors only
        for strategy in strategies:
            rounds = least if k == "1" else max(least, args.auto_rounds)
            row = Row("fedsparse", clients, strategy, k, rounds)
            run_dir = args.runs / f"{strategy}_k{k}_n{clients}"
            shutil.rmtree(run_dir, ignore_errors=True)
            base, settings = VARIANTS.get(strategy, (strategy, []))
            overrides = [
                f"strategy={base}",
                *settings,
                f"dataset={args.dataset}",
                "partition=iid",
                f"model={args.model}",
                f"num_clients={clients}",
                f"clients_per_round={clients}",
                f"num_rounds={row.rounds}",
                "local_epochs=1",
                f"local_steps={'null' if args.local_steps is None else args.local_steps}",
                "batch_size=32",
                "lr=0.05",
                "momentum=0.9",
                "federated_eval=false",
                "plots=false",
                f"engine.clients_per_node={k}",
                f"engine.client_gpus={args.client_gpus}",
                f"hydra.run.dir={run_dir}",
                *SAME_WORK.get(base, []),
            ]
            jobs.append((row, [python, "-m", "server_app.cli", *overrides]))
    if args.resident_floor:  # last: a floor slower than expected costs only itself
        rounds = args.resident_rounds or least
        for strategy in own_floors(strategies):
            row = Row(
                "floor-resident", clients, strategy, rounds=rounds, device=args.resident_floor
            )
            jobs.append((row, floor_command(args, row)))
    return jobs


def read_run(args: argparse.Namespace, row: Row) -> None:
    """Cohort size ``auto`` resolved to, and the clients' training seconds, from the run dir."""
    run_dir = args.runs / f"{row.strategy}_k{row.clients_per_node}_n{row.clients}"
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if row.clients_per_node == "auto" and config.exists():
        match = re.search(r"clients_per_node: (\d+)", config.read_text())
        row.clients_per_node = f"auto={match.group(1)}" if match else row.clients_per_node
    if metrics.exists():
        lines = [json.loads(line) for line in metrics.read_text().splitlines()][1:]
        if lines:
            row.train_s = statistics.median(line["client_train_s"] for line in lines)
            if "fedpm_decode_s" in lines[0]:
                row.decode_s = statistics.median(line["fedpm_decode_s"] for line in lines)


def run(args: argparse.Namespace) -> list[Row]:
    rows = []
    for clients in [int(c) for c in args.clients.split(",")]:
        for row, command in commands(args, clients):
            print(f"[scale] {row.label}, {clients} clients", flush=True)
            log = args.runs / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', row.label)}_n{clients}.log"
            rows.append(measure(command, row, log))
            if row.kind == "fedsparse":
                read_run(args, row)
            print(
                f"[scale]   median {row.median_s:.2f} s/round, peak {row.peak_mb:.0f} MB, "
                f"GPU {row.gpu_peak_mb:.0f} MB" + (f"  ERROR {row.error}" if row.error else ""),
                flush=True,
            )
            args.results.mkdir(parents=True, exist_ok=True)
            (args.results / f"{args.name}.json").write_text(
                json.dumps(
                    {"machine": machine(), "setup": setup(args), "rows": [asdict(r) for r in rows]},
                    indent=1,
                )
            )
    return rows


def setup(args: argparse.Namespace) -> dict[str, object]:
    """What the fedsparse rows ran, and the Ray actors that ran their clients."""
    cpu_actors = CPUS  # 1 CPU per actor
    gpu_actors = math.floor(1 / args.client_gpus) if args.client_gpus > 0 else cpu_actors
    return {
        "model": args.model,
        "dataset": args.dataset,
        "local_steps": args.local_steps,
        "client_gpus": args.client_gpus,
        "actors": min(cpu_actors, gpu_actors),
        "resident_floor": args.resident_floor,
    }


def machine() -> str:
    import torch

    return (
        f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, "
        + (f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU")
    )


def _ratio(numerator: Row | None, denominator: Row | None) -> str:
    if numerator is None or denominator is None or not numerator.round_s:
        return "–"
    if not denominator.round_s:
        return "– (failed)"
    return f"{numerator.median_s / denominator.median_s:.2f}×"


def _share(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0%}"


def resident_floor_name(rows: list[Row]) -> str:
    """What the one-process floor rows are called in the report: "GPU floor" on CUDA; ""
    when there are none."""
    devices = {row.device for row in rows if row.kind == "floor-resident"}
    if not devices:
        return ""
    return "GPU floor" if devices == {"cuda"} else f"{'/'.join(sorted(devices))} 1-process floor"


def report(args: argparse.Namespace) -> None:
    """Tables and the round-time plot from ``<name>.json``."""
    data = json.loads((args.results / f"{args.name}.json").read_text())
    rows = [Row(**r) for r in data["rows"]]
    run_setup = {"model": "cnn", "dataset": "mnist5k", "local_steps": None}
    run_setup.update({"client_gpus": 0.0, "actors": CPUS, **data.get("setup", {})})
    actors, steps = run_setup["actors"], run_setup["local_steps"]
    with_gpu = any(row.gpu_peak_mb > 0 for row in rows)
    resident = resident_floor_name(rows)

    def find(kind: str, clients: int, strategy: str = "", k: str = "") -> Row | None:
        for row in rows:
            same_k = row.k_setting == k
            if (row.kind, row.clients, row.strategy) == (kind, clients, strategy) and (
                kind != "fedsparse" or same_k
            ):
                return row
        return None

    lines = [
        "# Scale: seconds per round vs clients",
        "",
        f"Machine: {data['machine']}. Written by `python -m benchmarks.scale`. "
        f"{run_setup['dataset']} IID, {run_setup['model']}, "
        + (f"{steps} local steps" if steps else "1 local epoch")
        + " (batch 32, SGD 0.05, momentum 0.9), all clients sampled every round, one central "
        "evaluation every round "
        "(FedPM rows: `strategy.eval_samples=0`, its sampled-mask evaluations off), "
        f"1 CPU and {run_setup['client_gpus']} GPU per Ray actor ({actors} actors). Median "
        "seconds per round after the first round (rounds: how many were measured); peak = "
        "largest PSS sum of the whole process tree; client training s / actor = the clients' "
        "own training seconds (`client_train_s`) "
        f"over the {actors} actors, i.e. the compute share of a fedsparse round; × 2-process "
        "floor = over FedAvg's floor in 2 processes; × own floor = over the 2-process floor of "
        "the row's own strategy (`floor.py --strategy`: its client algorithm and server "
        "arithmetic in plain PyTorch, on the CPU)"
        + (
            f"; × {resident} = over the row's own floor in one process with the model and every "
            "client's data on the device (`floor.py --resident`, pfl-research's way)"
            if resident
            else ""
        )
        + (
            "; peak GPU = the device's largest memory in use during the row; GPU busy = the "
            f"mean of {SOURCE} over the timed rounds."
            if with_gpu
            else "."
        ),
        *(f"\n{note}" for note in data.get("notes", [])),  # how a sweep's rows came together
        "",
        "| clients | row | K | rounds | s/round | × plain Flower | × 2-process floor "
        "| × own floor |"
        + (f" × {resident} |" if resident else "")
        + " × fedsparse FedAvg (same K) | client training s / actor | peak MB |"
        + (" peak GPU MB | GPU busy |" if with_gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|" if resident else "")
        + ("---|---|" if with_gpu else ""),
    ]
    for row in rows:
        flower = find("flower", row.clients)
        floor = find("floor-2", row.clients, "fedavg")
        own_floor = find("floor-2", row.clients, row.floor_strategy)
        device_floor = find("floor-resident", row.clients, row.floor_strategy)
        k = row.k_setting
        fedavg = find("fedsparse", row.clients, "fedavg", k) if row.kind == "fedsparse" else None
        seconds = f"{row.median_s:.2f}" if row.round_s else f"failed: {row.error[:80]}"
        if row.round_s and row.error:
            seconds += f" (failed after round {len(row.round_s) + 1} of {row.rounds})"
        lines.append(
            f"| {row.clients} | {row.name} | {row.clients_per_node or '–'} "
            f"| {len(row.round_s)} | {seconds} | {_ratio(row, flower)} | {_ratio(row, floor)} "
            f"| {_ratio(row, own_floor)} |"
            + (f" {_ratio(row, device_floor)} |" if resident else "")
            + f" {_ratio(row, fedavg) if fedavg is not row else '1.00×'} "
            f"| {'–' if math.isnan(row.train_s) else f'{row.train_s / actors:.2f}'} "
            f"| {row.peak_mb:.0f} |"
            + (f" {row.gpu_peak_mb:.0f} | {_share(row.gpu_busy)} |" if with_gpu else "")
        )
    decoding = [row for row in rows if not math.isnan(row.decode_s)]
    if decoding:
        lines += [
            "",
            "FedPM's seconds per round decoding masks, summed over the replies (`fedpm_decode_s`:"
            " on the nodes, spread over the actors, when cohorts reduce; in the server, or "
            "waiting for its decoding processes, when they do not), median:",
            "",
            "| clients | row | K | s/round | decode s/round |",
            "|---|---|---|---|---|",
            *(
                f"| {r.clients} | {r.name} | {r.clients_per_node} | {r.median_s:.2f} "
                f"| {r.decode_s:.2f} |"
                for r in decoding
            ),
        ]
    lines += ["", *targets(rows, find)]
    (args.results / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(rows, args.results / f"{args.name}.png")


def targets(rows: list[Row], find) -> list[str]:
    """The issue's targets, checked on the measured rows (rows not measured are skipped)."""
    lines = ["## Targets", "", "| target | clients | K | measured | met |", "|---|---|---|---|---|"]

    def check(label: str, n: int, k: str, row: Row | None, ref: Row | None, limit: float) -> None:
        if row is None or ref is None or not row.round_s or not ref.round_s:
            return
        ratio = row.median_s / ref.median_s
        met = "yes" if ratio <= limit else "no"
        lines.append(f"| {label} | {n} | {k} | {ratio:.2f}× | {met} |")

    resident = resident_floor_name(rows)
    for n in sorted({r.clients for r in rows}):
        fedavg = {k: find("fedsparse", n, "fedavg", k) for k in ("1", "auto")}
        check("FedAvg K=1 ≤ 1.10× plain Flower", n, "1", fedavg["1"], find("flower", n), 1.10)
        for row in rows:  # each strategy against its own floor (replaced "1.25× FedAvg")
            if row.kind == "fedsparse" and row.clients == n and row.k_setting == "auto":
                own = find("floor-2", n, row.floor_strategy)
                check(f"{row.strategy} K=auto ≤ 1.5× its own floor", n, "auto", row, own, 1.5)
                device_floor = find("floor-resident", n, row.floor_strategy)
                check(
                    f"{row.strategy} K=auto ≤ 1.5× its {resident}",
                    n,
                    "auto",
                    row,
                    device_floor,
                    1.5,
                )
    for row in rows:
        limit = GPU_TARGETS.get((row.strategy, row.clients))
        if row.kind == "fedsparse" and row.gpu_peak_mb > 0 and limit and row.round_s:
            met = "yes" if row.median_s <= limit else "no"
            lines.append(
                f"| {row.strategy} on the GPU ≤ {limit:g} s a round | {row.clients} "
                f"| {row.clients_per_node} | {row.median_s:.2f} s | {met} |"
            )
    for row in rows:
        small = find("fedsparse", 10, row.strategy, row.k_setting)
        if (
            row.kind == "fedsparse"
            and row.clients > 10
            and small is not None
            and small.peak_mb
            and not row.strategy.endswith("-unreduced")
        ):
            ratio = row.peak_mb / small.peak_mb
            lines.append(
                f"| {row.strategy}: peak memory ≤ 2× that of 10 clients ({row.peak_mb / 1024:.1f}"
                f" GB vs {small.peak_mb / 1024:.1f} GB) | {row.clients} | {row.k_setting} "
                f"| {ratio:.2f}× | {'yes' if ratio <= 2 else 'no'} |"
            )
    for row in rows:
        if row.kind == "fedsparse" and row.clients == 1000 and row.k_setting == "auto":
            done = len(row.round_s) + 1 if row.round_s and not row.error else 0
            lines.append(
                f"| 1,000 clients × {row.rounds} rounds without running out of memory "
                f"({row.strategy}, peak {row.peak_mb / 1024:.1f} GB) | 1000 | auto "
                f"| {done} rounds | {'yes' if done >= row.rounds else 'no'} |"
            )
    return [*lines, ""]


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.round_s:
            series.setdefault(row.label, []).append((row.clients, row.median_s))
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors  # more series than the default 10-colour cycle
    for i, (name, points) in enumerate(sorted(series.items())):
        xs, ys = zip(*sorted(points), strict=True)
        style = "--" if name.startswith("PyTorch") else ("-." if "Flower" in name else "-")
        ax.plot(xs, ys, style, marker="o", label=name, color=colours[i % len(colours)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients (all sampled each round)")
    ax.set_ylabel("seconds per round (median)")
    ax.set_title("Round time vs clients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPU rows (see the module docstring)")
    parser.add_argument("--clients", default="10,100,300,1000")
    parser.add_argument("--strategies", default="fedavg,lips,lbgm,fedpm")
    parser.add_argument("--cohorts", default="1,auto", help="fedsparse rows: 1, auto or both")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--auto-rounds", type=int, default=AUTO_ROUNDS, help="fewest rounds of a K=auto row"
    )
    parser.add_argument(
        "--small-rounds",
        type=int,
        default=SMALL_ROUNDS,
        help=f"fewest rounds of every row at up to {SMALL_CLIENTS} clients",
    )
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/scale")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--name", default="scale", help="results file stem: <results>/<name>.md")
    parser.add_argument("--model", default=work.MODEL, help="fedsparse rows' and floors' model")
    parser.add_argument(
        "--dataset", default=work.DATASET, help="fedsparse rows' and floors' data set"
    )
    parser.add_argument(
        "--local-steps", type=int, default=None, help="optimizer steps per round (default: 1 epoch)"
    )
    parser.add_argument("--client-gpus", type=float, default=0.0, help="GPU share per actor")
    parser.add_argument(
        "--resident-floor",
        choices=("cpu", "cuda"),
        default=None,
        help="also each row's own floor in one process with its data on this device (--gpu: cuda)",
    )
    parser.add_argument(
        "--resident-rounds",
        type=int,
        default=None,
        help="rounds of the --resident-floor rows (default: --rounds; one process varies little)",
    )
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rows (a) and (b): plain Flower (cnn on mnist5k, 1 epoch only) and the floors",
    )
    parser.add_argument(
        "--floors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rows (b), the PyTorch floors of FedAvg and of each strategy (default: --baselines)",
    )
    parser.add_argument("--report-only", action="store_true")
    if "--gpu" in sys.argv[1:]:
        parser.set_defaults(**GPU_PRESET)
    args = parser.parse_args()
    if args.floors is None:
        args.floors = args.baselines
    if args.baselines and (args.model, args.dataset, args.local_steps) != DEFAULT_WORK:
        steps = "" if args.local_steps is None else f" --local-steps {args.local_steps}"
        parser.error(
            f"--model {args.model} --dataset {args.dataset}{steps}: plain Flower runs "
            f"{work.MODEL} on {work.DATASET}, 1 local epoch (benchmarks/scale/work.py); add "
            "--no-baselines (and --floors for the floors)"
        )
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
