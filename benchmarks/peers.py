"""fedsparse, pfl-research and plain Flower side by side, on pfl-research's CIFAR-10 job.

    python -m benchmarks.peers                          # 30 rounds × 3 repeats, eval every 10 and 1
    python -m benchmarks.peers --rounds 3 --repeats 1   # a smoke run: proves the harness only
    python -m benchmarks.peers --report-only            # peers.md again from peers.json
    python -m benchmarks.peers --pfl-threads 1 --name peers_pfl_1thread   # pfl on one thread

The job of pfl-research's framework comparison (its paper's Table 1; publications/pfl and
benchmarks/image_classification in its repository): 1,000 clients of 50 images (IID), 50 a
round, one local epoch of SGD at batch 10 and lr 0.1 without momentum, FedAvg (pfl: the mean
update applied by central SGD at lr 1.0, users weighted equally; every client holds 50 images,
so weighting by examples, as fedsparse and Flower do, is the same), pfl's 2-conv CNN
(fedsparse's ``model=pfl_cnn``), and a central evaluation of the 10,000 test images every
``--eval-every`` rounds (pfl's cadence is 10) at batch 128, fedsparse's evaluation batch (pfl's
config says 10,000). The images are ``cifar10_synthetic`` (CIFAR-10's shapes and sizes, no
download): the harness writes the clients' arrays and the test set once to an .npz that the pfl
driver loads, so the three train and evaluate the same images.

Rows, each a fresh process tree, run interleaved (fedsparse, pfl, plain Flower, fedsparse, …)
within each cadence: fedsparse (``python -m server_app.cli`` with the overrides in peers.md;
engine defaults: cohorts ``auto``, reduced); pfl (``peers_pfl.py`` in pfl's own Python; see
there what it builds); plain Flower (``benchmarks/scale/plain_flower.py``: a ClientApp and stock
FedAvg, one SuperNode per client, on fedsparse's data and training loop). Ray's workers run at
nice 0 in both Flower rows (fedsparse's own default; plain Flower gets ``RAY_worker_niceness=0``).

Measured per run: seconds per round after the first (fedsparse: ``round_s`` of metrics.jsonl;
pfl: its driver's per-iteration timer; plain Flower: gaps between its per-round lines), median;
the gaps between per-round lines for all three; the whole command's wall time; CPU seconds of
the whole process tree (``process_tree.py``: every process the command started, Ray's GCS,
raylet and workers included, sampled every 0.2 s) per round over the whole command, and per
round between the first and the last round line (rounds 2..N); peak RSS summed over the tree;
the box's load averages before the run.

pfl needs an environment of its own (Python < 3.13), outside the repository:

    python3.11 -m venv /work/pfl-venv
    /work/pfl-venv/bin/pip install 'pfl[pytorch]==0.6.0' torch==2.14.1 torchvision==0.29.1

(the torch fedsparse runs on); ``--pfl-python`` names another. Without it the pfl rows are
skipped, with one line saying how to create it.

pfl runs as its benchmark does, one process with torch's default threads (2 on a 2-core box).
Where other work shares the cores those threads contend: in a 3-round smoke at load 6–8 pfl
spent 45 CPU-s a round at 2 threads against 5.4 at ``--pfl-threads 1``. Measure on a quiet box,
and see the load column of the report.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from benchmarks.process_tree import TreeMeter, kill, wait_unreaped

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("fedsparse", "pfl", "flower")
LABELS = {"fedsparse": "fedsparse", "pfl": "pfl-research", "flower": "plain Flower"}
ROUND_LINES = {
    "fedsparse": re.compile(r"^\[fedsparse\] round (\d+)/"),
    "pfl": re.compile(r"^\[pfl\] round (\d+) ([0-9.]+) s"),
    "flower": re.compile(r"^\[plain-flower\] round (\d+)"),
}
PFL_SETUP = re.compile(r"^\[pfl\] .* (\d+) parameters, .* torch threads (\d+)")
DEFAULT_PFL_PYTHON = Path("/work/pfl-venv/bin/python")
PFL_RECIPE = (
    "python3.11 -m venv /work/pfl-venv && /work/pfl-venv/bin/pip install "
    "'pfl[pytorch]==0.6.0' torch==2.14.1 torchvision==0.29.1"
)
TAG = "FEDSPARSE_PEERS_RUN"  # in every process a run starts, so Ray's daemons are found too
SAMPLE_S = 0.2
TIMEOUT_S = 1800
MIN_ROUNDS = 10  # fewer: the report calls itself a smoke run
# pfl-research's CIFAR-10 job (benchmarks/image_classification/configs/baseline.yaml)
JOB = {
    "dataset": "cifar10_synthetic",
    "model": "pfl_cnn",
    "clients": 1000,
    "images_per_client": 50,
    "per_round": 50,
    "local_epochs": 1,
    "batch_size": 10,
    "lr": 0.1,
    "eval_batch": 128,
    "seed": 0,
}


@dataclass
class Run:
    """One command, measured."""

    framework: str
    eval_every: int
    repeat: int
    rounds: int
    command: list[str] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # own timer, rounds 2..N
    gap_s: list[float] = field(default_factory=list)  # between round lines, rounds 2..N
    wall_s: float = 0.0
    cpu_s: float = 0.0  # whole process tree, whole command
    cpu_rounds_s: float = float("nan")  # whole process tree, first to last round line
    rounds_seen: int = 0
    peak_rss_mb: float = 0.0
    load: list[float] = field(default_factory=list)  # 1, 5, 15 min load averages before
    others_cores: float = float("nan")  # cores busy with anything else while it ran
    nice: dict[str, int] = field(default_factory=dict)
    processes: int = 0
    params: int = 0
    threads: int = 0  # pfl: torch's threads in its one process
    config: dict[str, object] = field(default_factory=dict)  # fedsparse: engine and evaluation
    cpu_by_process: dict[str, float] = field(default_factory=dict)  # whole command, by name
    error: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.round_s) if self.round_s else float("nan")

    @property
    def median_gap_s(self) -> float:
        return statistics.median(self.gap_s) if self.gap_s else float("nan")

    @property
    def cpu_per_round(self) -> float:
        return self.cpu_s / self.rounds_seen if self.rounds_seen else float("nan")

    @property
    def cpu_per_later_round(self) -> float:
        later = self.rounds_seen - 1
        return self.cpu_rounds_s / later if later > 0 else float("nan")


def write_data(path: Path) -> Path:
    """The clients' training images (uint8, NCHW, client after client), their labels and sizes,
    the central test set and the normalisation, exactly as fedsparse's clients and server load
    them; written once."""
    if path.exists():
        return path
    import numpy as np

    from data.federated import DataSpec, central_test, client_data, dataset_info

    spec = DataSpec(
        dataset=JOB["dataset"],
        partition="iid",
        num_clients=JOB["clients"],
        seed=JOB["seed"],
        local_test_fraction=0.0,
    )
    clients = [client_data(spec, c)[0] for c in range(JOB["clients"])]
    sizes = {len(c.y) for c in clients}
    if sizes != {JOB["images_per_client"]}:
        raise SystemExit(f"expected {JOB['images_per_client']} images a client, got {sizes}")
    info, test = dataset_info(spec), central_test(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(
        partial,
        x=np.concatenate([c.x for c in clients]),
        y=np.concatenate([c.y for c in clients]),
        sizes=np.array([len(c.y) for c in clients]),
        test_x=test.x,
        test_y=test.y,
        mean=np.array(info.mean),
        std=np.array(info.std),
    )
    partial.rename(path)
    return path


def commands(args: argparse.Namespace, eval_every: int, run_dir: Path) -> dict[str, list[str]]:
    """Each framework's command for one run of the job."""
    rounds = str(args.rounds)
    overrides = [
        "strategy=fedavg",
        f"dataset={JOB['dataset']}",
        f"model={JOB['model']}",
        "partition=iid",
        f"num_clients={JOB['clients']}",
        f"clients_per_round={JOB['per_round']}",
        f"num_rounds={rounds}",
        f"local_epochs={JOB['local_epochs']}",
        f"batch_size={JOB['batch_size']}",
        f"lr={JOB['lr']}",
        "momentum=0",
        "local_test_fraction=0",
        "federated_eval=false",
        "plots=false",
        f"seed={JOB['seed']}",
        f"device={args.device}",
        *(["engine.client_gpus=0.5"] if args.device == "cuda" else []),
        # eval_every=1 is fedsparse's default: left out, the command reads as a default run
        *([f"eval_every={eval_every}"] if eval_every != 1 else []),
        f"hydra.run.dir={run_dir / 'fedsparse'}",
    ]
    pfl = [
        str(args.pfl_python),
        str(REPO / "benchmarks" / "peers_pfl.py"),
        f"--data={args.data}",
        f"--run-dir={run_dir / 'pfl'}",
        f"--rounds={rounds}",
        f"--cohort={JOB['per_round']}",
        f"--batch-size={JOB['batch_size']}",
        f"--lr={JOB['lr']}",
        f"--eval-every={eval_every}",
        f"--eval-batch={JOB['eval_batch']}",
        f"--device={args.device}",
        *(["--user-eval"] if args.pfl_user_eval else []),
        *([f"--threads={args.pfl_threads}"] if args.pfl_threads else []),
    ]
    flower = [
        sys.executable,
        "-m",
        "benchmarks.scale.plain_flower",
        f"--clients={JOB['clients']}",
        f"--rounds={rounds}",
        f"--clients-per-round={JOB['per_round']}",
        f"--eval-every={eval_every}",
        f"--model={JOB['model']}",
        f"--dataset={JOB['dataset']}",
        f"--batch-size={JOB['batch_size']}",
        f"--lr={JOB['lr']}",
        "--momentum=0",
        "--local-test-fraction=0",
    ]
    return {
        "fedsparse": [sys.executable, "-m", "server_app.cli", *overrides],
        "pfl": pfl,
        "flower": flower,
    }


def environment(framework: str, device: str, tag: str) -> dict[str, str]:
    """The run's environment: its tag, the repository on the path (not for pfl, which must not
    see fedsparse), no GPU for a CPU run, Ray's workers at nice 0 for plain Flower."""
    env = {**os.environ, TAG: tag, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    env.pop("PYTHONPATH", None)
    if framework != "pfl":
        env["PYTHONPATH"] = str(REPO)
    if framework == "flower":
        env["RAY_worker_niceness"] = "0"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def measure(run: Run, env: dict[str, str], log: Path, echo: Callable[[str], None]) -> Run:
    """Run ``run.command``, timing its round lines and metering its whole process tree."""
    run.load = list(os.getloadavg())
    log.parent.mkdir(parents=True, exist_ok=True)
    busy_before = _busy_s()
    started = time.perf_counter()
    proc = subprocess.Popen(
        run.command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    meter = TreeMeter(proc.pid, (TAG, env[TAG]))
    done = threading.Event()
    stamps: dict[int, tuple[float, float]] = {}  # round -> (time, tree CPU s) at its line
    own: dict[int, float] = {}  # pfl: the round's seconds as its timer printed them
    tail: list[str] = []

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            meter.sample()

    def read() -> None:
        pattern = ROUND_LINES[run.framework]
        with log.open("w") as out:
            for line in proc.stdout:
                out.write(line)
                tail[:] = [*tail[-30:], line]
                if (found := PFL_SETUP.match(line)) is not None:
                    run.params, run.threads = int(found.group(1)), int(found.group(2))
                if (found := pattern.match(line)) is not None:
                    stamps[int(found.group(1))] = (time.perf_counter(), meter.sample())
                    if found.lastindex == 2:
                        own[int(found.group(1))] = float(found.group(2))
                    echo(f"    {line.rstrip()}")

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, read)]
    for thread in threads:
        thread.start()
    timer = threading.Timer(TIMEOUT_S, lambda: kill([proc.pid, *meter.live()]))
    timer.start()
    try:
        wait_unreaped(proc.pid)
        run.wall_s = time.perf_counter() - started
        meter.sample()  # the root's final seconds, its reaped children's included
    finally:
        timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        kill(meter.live())  # what the command left running (Ray's daemons) or, on failure, all
        proc.wait()
        threads[1].join(timeout=30)
        done.set()
        threads[0].join()
    time.sleep(2 * SAMPLE_S)
    meter.sample()
    run.cpu_s = meter.sample()  # the second settles what vanished at the first
    elapsed = time.perf_counter() - started
    run.others_cores = max(0.0, _busy_s() - busy_before - run.cpu_s) / elapsed
    run.peak_rss_mb, run.nice, run.processes = meter.peak_rss_mb, meter.nice, meter.processes
    run.cpu_by_process = dict(sorted(meter.by_name().items(), key=lambda item: -item[1]))
    _rounds(run, stamps, own)
    if proc.returncode != 0 or run.rounds_seen < run.rounds:
        run.error = f"exit {proc.returncode} (log: {log}): " + "".join(tail[-5:]).strip()[-400:]
    return run


def _busy_s() -> float:
    """CPU seconds the machine's cores have run anything since boot (user, nice, system and
    interrupts; guest time is inside user and nice already)."""
    times = psutil.cpu_times()
    return sum(getattr(times, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))


def _rounds(run: Run, stamps: dict[int, tuple[float, float]], own: dict[int, float]) -> None:
    """The per-round figures from the round lines (plain Flower's "round 0" is its evaluation
    of the initial model, before training: not a round)."""
    rounds = sorted(r for r in stamps if r >= 1)
    run.rounds_seen = len(rounds)
    run.gap_s = [stamps[b][0] - stamps[a][0] for a, b in itertools.pairwise(rounds)]
    if len(rounds) > 1:
        run.cpu_rounds_s = stamps[rounds[-1]][1] - stamps[rounds[0]][1]
    if run.framework == "pfl":
        run.round_s = [own[r] for r in rounds[1:]]
    elif run.framework == "flower":
        run.round_s = list(run.gap_s)


def _read_fedsparse(run: Run, run_dir: Path) -> None:
    """fedsparse's own round seconds, parameter count and resolved engine and evaluation
    settings (its defaults, e.g. the cohort size ``auto`` chose), from its run folder."""
    config = run_dir / "config.yaml"
    if config.exists():
        import yaml

        cfg = yaml.safe_load(config.read_text())
        run.config = {f"engine.{k}": v for k, v in cfg.get("engine", {}).items()}
        run.config |= {k: v for k, v in cfg.items() if "eval" in k}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        run.round_s = [row["round_s"] for row in rows[1:]]
    summary = run_dir / "summary.json"
    if summary.exists():
        run.params = json.loads(summary.read_text()).get("num_params", 0)


def _flower_params() -> int:
    """plain Flower builds its model with fedsparse's registry: the same count as fedsparse's."""
    import models

    model = models.build_model(JOB["model"], (3, 32, 32), 10)
    return sum(p.numel() for p in model.parameters())


def versions(pfl_python: Path | None) -> dict[str, str]:
    import flwr
    import ray
    import torch

    found = {
        "python (fedsparse, plain Flower)": platform.python_version(),
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "torch (fedsparse, plain Flower)": torch.__version__,
    }
    if pfl_python is not None:
        probe = (
            "import platform, pfl, torch; "
            "print(platform.python_version(), pfl.__version__, torch.__version__)"
        )
        out = subprocess.run(
            [str(pfl_python), "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
        found |= {"python (pfl)": out[0], "pfl": out[1], "torch (pfl)": out[2]}
    return found


def machine() -> dict[str, object]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform()}


def run_all(args: argparse.Namespace) -> None:
    """Every run, interleaved; <name>.json is rewritten after each one."""
    frameworks = args.frameworks
    if "pfl" in frameworks and not Path(args.pfl_python).exists():
        print(f"pfl rows skipped: no {args.pfl_python}; create it with: {PFL_RECIPE}")
        frameworks = [f for f in frameworks if f != "pfl"]
    if "flower" in frameworks and args.device == "cuda":
        print("plain Flower rows skipped: its training loop (benchmarks/scale/work.py) is CPU-only")
        frameworks = [f for f in frameworks if f != "flower"]
    args.data = write_data(args.runs / f"data_{JOB['clients']}x{JOB['images_per_client']}.npz")
    data: dict[str, object] = {
        "settings": {
            "job": JOB,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "eval_every": args.eval_every,
            "frameworks": frameworks,
            "device": args.device,
            "pfl_user_eval": args.pfl_user_eval,
            "pfl_threads": args.pfl_threads,
            "machine": machine(),
            "versions": versions(Path(args.pfl_python) if "pfl" in frameworks else None),
            "ray_worker_niceness": "fedsparse: its own default; plain Flower: "
            "RAY_worker_niceness=0",
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "runs": [],
    }
    runs: list[dict] = data["runs"]  # type: ignore[assignment]
    for eval_every in args.eval_every:
        for repeat, framework in itertools.product(range(args.repeats), frameworks):
            run_dir = args.runs / f"e{eval_every}_r{repeat}"
            command = commands(args, eval_every, run_dir)[framework]
            run = Run(framework, eval_every, repeat, args.rounds, command)
            print(f"[peers] eval every {eval_every}, repeat {repeat + 1}: {LABELS[framework]}")
            log = run_dir / f"{framework}.log"
            shutil.rmtree(run_dir / framework, ignore_errors=True)  # fedsparse refuses a used one
            measure(run, environment(framework, args.device, uuid.uuid4().hex), log, print)
            if framework == "fedsparse":
                _read_fedsparse(run, run_dir / "fedsparse")
            elif framework == "flower":
                run.params = _flower_params()
            print(f"[peers]   {_run_line(run)}")
            runs.append(asdict(run))
            args.results.mkdir(parents=True, exist_ok=True)
            (args.results / f"{args.name}.json").write_text(json.dumps(data, indent=1))


def _run_line(run: Run) -> str:
    if run.error:
        return f"failed: {run.error}"
    return (
        f"{run.median_s:.2f} s/round, {run.cpu_per_later_round:.2f} CPU-s/round (rounds 2..N), "
        f"{run.wall_s:.1f} s whole, peak RSS {run.peak_rss_mb:.0f} MB"
    )


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN: not measured
    return statistics.median(values) if values else float("nan")


def _number(value: float, digits: int) -> str:
    return "–" if value != value else f"{value:.{digits}f}"  # NaN: not measured


def _spread(values: list[float], digits: int) -> str:
    """The median of ``values``, and their range when there are several."""
    middle = _median(values)
    if middle != middle:
        return "–"
    text = f"{middle:.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
    return text


METRICS: dict[str, tuple[str, Callable[[Run], float], int]] = {
    "s_round": ("s/round", lambda r: r.median_s, 2),
    "gap": ("s between round lines", lambda r: r.median_gap_s, 2),
    "cpu_later": ("CPU-s/round, rounds 2..N", lambda r: r.cpu_per_later_round, 2),
    "cpu_whole": ("CPU-s/round, whole command", lambda r: r.cpu_per_round, 2),
    "wall": ("whole command s", lambda r: r.wall_s, 1),
    "rss": ("peak RSS MB", lambda r: r.peak_rss_mb, 0),
}


def _table(runs: list[Run], frameworks: list[str]) -> list[str]:
    """One cadence: a row per framework (medians over its repeats), then each framework's
    medians over pfl's."""
    header = " | ".join(label for label, _, _ in METRICS.values())
    lines = [f"| framework | parameters | {header} | runs |", "|---" * (len(METRICS) + 3) + "|"]
    medians: dict[str, dict[str, float]] = {}
    for framework in frameworks:
        mine = [r for r in runs if r.framework == framework and not r.error]
        failed = [r for r in runs if r.framework == framework and r.error]
        if not mine and not failed:
            continue
        medians[framework] = {
            k: _median([get(r) for r in mine]) for k, (_, get, _) in METRICS.items()
        }
        cells = " | ".join(_spread([get(r) for r in mine], d) for _, get, d in METRICS.values())
        params = f"{mine[0].params:,}" if mine and mine[0].params else "–"
        count = f"{len(mine)}" + (f" ({len(failed)} failed)" if failed else "")
        lines.append(f"| {LABELS[framework]} | {params} | {cells} | {count} |")
    base = medians.get("pfl")
    for framework in (f for f in frameworks if f != "pfl" and f in medians and base):
        cells = " | ".join(
            f"{medians[framework][k] / base[k]:.2f}×" if base[k] and base[k] == base[k] else "–"
            for k in METRICS
        )
        lines.append(f"| {LABELS[framework]} ÷ pfl-research | | {cells} | |")
    return lines


def _cpu_by_process(runs: list[Run], frameworks: list[str]) -> list[str]:
    """Each framework's whole-command CPU-s per round by process name (a process's reaped
    children in its own), median over its repeats; names under 2 % of the total are "other"."""
    lines = []
    for framework in frameworks:
        mine = [r for r in runs if r.framework == framework and not r.error and r.rounds_seen]
        names = {name for run in mine for name in run.cpu_by_process}
        per_round = {
            name: _median([r.cpu_by_process.get(name, 0.0) / r.rounds_seen for r in mine])
            for name in names
        }
        total = sum(per_round.values())
        if not total:
            continue
        shown = sorted(
            ((n, v) for n, v in per_round.items() if v >= 0.02 * total), key=lambda nv: -nv[1]
        )
        other = total - sum(v for _, v in shown)
        cells = [f"`{name}` {value:.2f}" for name, value in shown]
        cells += [f"other {other:.2f}"] if other >= 0.005 else []
        lines.append(f"- {LABELS[framework]}: {', '.join(cells)}")
    return lines


def report(data: dict) -> str:
    """peers.md from peers.json's contents."""
    settings = data["settings"]
    runs = [Run(**r) for r in data["runs"]]
    frameworks = settings["frameworks"]
    job = settings["job"]
    lines = ["# Peers: fedsparse, pfl-research and plain Flower on pfl-research's CIFAR-10 job", ""]
    if settings["rounds"] < MIN_ROUNDS or settings["repeats"] < 2:
        lines += [
            f"**Smoke run** ({settings['rounds']} rounds × {settings['repeats']} repeat(s), "
            f"{settings['date']}): it proves the harness, it is not a measurement; the numbers "
            "below are of too few rounds, on a box that may have been busy.",
            "",
        ]
    lines += [
        f"Written by `python -m benchmarks.peers` ({settings['date']}). The job: "
        f"{job['clients']:,} clients × {job['images_per_client']} images of "
        f"`{job['dataset']}` (IID), {job['per_round']} clients a round, {job['local_epochs']} "
        f"local epoch at batch {job['batch_size']}, SGD lr {job['lr']} without momentum, FedAvg, "
        f"model `{job['model']}` (pfl-research's 2-conv CNN), a central evaluation of the "
        f"10,000 test images at batch {job['eval_batch']} every *N* rounds; the same images in "
        f"all three. {settings['rounds']} rounds a run, {settings['repeats']} repeat(s), "
        "interleaved. See the module docstring of `benchmarks/peers.py` for what each row runs "
        "and how it is measured.",
        "",
        "Cells: the median over the repeats (their range in brackets). s/round: the median "
        "round after the first by the framework's own timer (fedsparse `round_s`, pfl its "
        "iteration timer, plain Flower the gaps between its round lines); CPU-s/round: user + "
        "system seconds of the whole process tree (Ray's daemons and workers included) per "
        "round, between the first and last round lines (rounds 2..N) and over the whole "
        "command; peak RSS: the largest sum of RSS over the tree (shared pages counted once "
        "per process).",
        "",
    ]
    for eval_every in settings["eval_every"]:
        lines += [f"## Central evaluation every {eval_every} round(s)", ""]
        cadence = [r for r in runs if r.eval_every == eval_every]
        lines += _table(cadence, frameworks)
        lines += ["", "CPU-s/round by process, whole command:", ""]
        lines += [*_cpu_by_process(cadence, frameworks), ""]
    lines += ["## Settings", "", f"- device: {settings['device']}"]
    lines += [f"- {name}: {value}" for name, value in settings["versions"].items()]
    box = settings["machine"]
    fedsparse = next((r for r in runs if r.framework == "fedsparse" and r.config), None)
    lines += [
        f"- machine: {box['cpus']} CPUs, {box['cpu']}, {box['platform']}",
        f"- Ray worker niceness: {settings['ray_worker_niceness']}",
        "- fedsparse's resolved engine and evaluation settings (its first run): "
        + (", ".join(f"`{k}={v}`" for k, v in fedsparse.config.items()) if fedsparse else "–"),
        "- pfl's torch threads: "
        + (
            f"{settings['pfl_threads']} (`--pfl-threads`)"
            if settings.get("pfl_threads")
            else "torch's own choice, as pfl runs (per run below); fedsparse and plain Flower "
            "train with 1 thread per Ray actor"
        ),
        "- pfl's per-user evaluation before and after local training: "
        + (
            "every evaluated iteration, as pfl's benchmark"
            if settings["pfl_user_eval"]
            else "first iteration only (fedsparse and plain Flower evaluate no client)"
        ),
        "",
        "Every run, in the order run (load: the box's 1/5/15-minute load averages before it; "
        "other work: the cores busy with anything else while it ran, this harness included):",
        "",
        "| eval every | repeat | framework | load | other work (cores) | s/round | CPU-s/round, "
        "rounds 2..N | whole command s | peak RSS MB | processes | niceness seen | torch threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        nice = ", ".join(f"{name} {value}" for name, value in sorted(run.nice.items()))
        seconds = f"{run.median_s:.2f}" if not run.error else f"failed: {run.error[:60]}"
        lines.append(
            f"| {run.eval_every} | {run.repeat + 1} | {LABELS[run.framework]} | "
            f"{' / '.join(f'{x:.2f}' for x in run.load)} | {_number(run.others_cores, 2)} | "
            f"{seconds} | "
            f"{_number(run.cpu_per_later_round, 2)} | {run.wall_s:.1f} | {run.peak_rss_mb:.0f} | "
            f"{run.processes} | {nice} | {run.threads or '–'} |"
        )
    lines += ["", "Commands (one run each; paths are the harness's):", ""]
    shown: set[tuple[str, int]] = set()
    for run in runs:
        if (run.framework, run.eval_every) not in shown:
            shown.add((run.framework, run.eval_every))
            lines += [
                f"- {LABELS[run.framework]}, every {run.eval_every}:",
                "",
                "  ```",
                f"  {shlex.join(run.command)}",
                "  ```",
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--frameworks",
        type=lambda s: s.split(","),
        default=list(FRAMEWORKS),
        help=f"comma-separated, of {','.join(FRAMEWORKS)}",
    )
    parser.add_argument(
        "--eval-every",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[10, 1],
        help="central evaluation cadences, one table each (pfl's is 10)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--pfl-python", type=Path, default=DEFAULT_PFL_PYTHON)
    parser.add_argument(
        "--pfl-threads",
        type=int,
        default=None,
        help="torch threads of pfl's one process (default: torch's own choice, as pfl runs)",
    )
    parser.add_argument(
        "--pfl-user-eval",
        action="store_true",
        help="let pfl evaluate each trained user before and after training, as its benchmark "
        "does (more work than the other rows)",
    )
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks/runs/peers")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--name", default="peers", help="results file stem: <results>/<name>.md")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"--frameworks: unknown {', '.join(sorted(unknown))}; choose of {FRAMEWORKS}")
    if not args.report_only:
        run_all(args)
    data = json.loads((args.results / f"{args.name}.json").read_text())
    text = report(data)
    (args.results / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
