"""Issue #36's GPU rows in one command, within a hard time budget, for a lent GPU machine.

    bash benchmarks/gpu_rows.sh                        # on the GPU machine (what it needs: there)
    GPU_ROWS_DEVICE=cpu GPU_ROWS_SCALE=tiny bash benchmarks/gpu_rows.sh   # the same steps, here

Steps, most wanted first, each a fresh process tree under its own time limit and all of them
within ``GPU_ROWS_BUDGET_S`` (default 510 s) from the start:

1. ``fedavg``: ``benchmarks.scale --gpu --clients 1000 --strategies fedavg``: fedsparse's FedAvg
   row as ``scale_gpu_reduced.md`` ran it (ResNet-18 on cifar10_synthetic, 3 rounds, 10 Ray
   actors at 0.1 GPU, cohorts auto), then its GPU floor (``floor.py --device cuda``, 2 rounds);
2. ``fedpm``: the same with ``--model conv6 --clients 500 --strategies fedpm-klms``, as
   ``scale_gpu_fedpm.md`` ran it;
3. ``peers``: ``benchmarks.peers --device cuda --rounds 20 --repeats 1 --eval-every 10``, if
   ``benchmarks/peers.py`` is there: fedsparse and pfl-research (pfl's Python: the image's with
   ``.gpu-deps/pfl``, see gpu_rows.sh) on the GPU; peers.py skips plain Flower on a GPU.

``GPU_ROWS_SCALE=tiny`` runs the same steps on a few clients of ``digits`` with the cnn, and
``GPU_ROWS_DEVICE=cpu`` on the CPU (no actor GPU share, the one-process floor on the CPU): a
check of the plumbing in a few minutes on a box without a GPU.

Every step's report goes to ``OUT`` (``$OUT``; without it ``benchmarks/results``) as soon as the
step ends: ``gpu_rows_<step>.json`` and ``.md`` (a step stopped at its limit gets its report
from the rows it finished; ``gpu_rows_peers.*`` are peers.py's ``peers.*``); ``gpu_rows.log``
says what ran, how long and how it ended, with the GPU and software seen first;
``gpu_rows_logs.tar.gz`` holds every row's own log. That is 8 files, what the device tool
brings back.

Limits (H100, from the 2026-12-05 rows): ``fedavg`` 180 s (fedsparse's row took 99 s for 3
rounds; the floor, ~2,000 ResNet-18 steps of batch 32 a round, an estimated ~15 s a round after
~25 s of start and data), ``fedpm`` 270 s (fedsparse's row took 155 s; the floor, KLMS hashed
on the GPU and the rest of its coding on one core, an estimated 30–60 s a round), ``peers`` what
is left (~60–100 s: one fedsparse and one pfl run of 20 rounds of 50 small clients).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from benchmarks.scale.__main__ import SMALL_CLIENTS

REPO = Path(__file__).resolve().parents[1]
TAG = "FEDSPARSE_GPU_ROWS_STEP"  # in every process a step starts: Ray's daemons are found too
MIN_STEP_S = 45  # a step with less time left than this is skipped


@dataclass(frozen=True)
class Size:
    """The rows' sizes: clients, model and data of the FedAvg and FedPM rows, peers' rounds."""

    fedavg_clients: int
    fedavg_model: str
    fedpm_clients: int
    fedpm_model: str
    dataset: str
    peers_rounds: int
    peers_eval_every: int


SIZES = {
    "full": Size(1000, "resnet18", 500, "conv6", "cifar10_synthetic", 20, 10),
    "tiny": Size(10, "cnn", 6, "cnn", "digits", 3, 1),
}


@dataclass(frozen=True)
class Step:
    """A command, the most seconds it may take, the report files it writes (copied out as
    ``gpu_rows_<name>.<suffix>``), and the command that rebuilds that report from partial
    results when it is stopped (None: nothing to rebuild)."""

    name: str
    command: list[str]
    limit_s: float
    results: list[str]
    after_timeout: list[str] | None = None


def scale_step(
    name: str, strategy: str, clients: int, model: str, size: Size, device: str, work: Path
) -> Step:
    """One fedsparse row at ``clients`` and its one-process floor on ``device``."""
    stem = f"gpu_rows_{name}"
    common = ["--results", str(work / "results"), "--runs", str(work / "runs"), "--name", stem]
    command = [sys.executable, "-m", "benchmarks.scale", "--gpu", "--clients", str(clients)]
    command += ["--strategies", strategy, "--model", model, "--dataset", size.dataset]
    command += ["--resident-floor", device, "--resident-rounds", "2", *common]
    if device == "cpu":
        command += ["--client-gpus", "0"]
    if clients <= SMALL_CLIENTS:  # tiny: the rounds asked for, not the benchmark's 12 at least
        command += ["--small-rounds", "3"]
    limit = {"fedavg": 180, "fedpm": 270}[name]
    report = [sys.executable, "-m", "benchmarks.scale", "--gpu", "--report-only", *common]
    return Step(name, command, limit, [f"{stem}.json", f"{stem}.md"], report)


def plan(device: str, scale: str, work: Path) -> list[Step]:
    """The steps of one run, in order."""
    size = SIZES[scale]
    steps = [
        scale_step("fedavg", "fedavg", size.fedavg_clients, size.fedavg_model, size, device, work),
        scale_step("fedpm", "fedpm-klms", size.fedpm_clients, size.fedpm_model, size, device, work),
    ]
    if (REPO / "benchmarks" / "peers.py").exists():
        command = [sys.executable, "-m", "benchmarks.peers", "--device", device]
        command += ["--rounds", str(size.peers_rounds), "--repeats", "1"]
        command += ["--eval-every", str(size.peers_eval_every)]
        command += ["--results", str(work / "results"), "--runs", str(work / "runs" / "peers")]
        if scale == "tiny":
            command += ["--frameworks", "fedsparse"]
        if os.environ.get("GPU_ROWS_PFL_PYTHON"):  # gpu_rows.sh's, with .gpu-deps/pfl
            command += ["--pfl-python", os.environ["GPU_ROWS_PFL_PYTHON"]]
        steps.append(Step("peers", command, 600, ["peers.json", "peers.md"]))
    return steps


def step_limit(step: Step, deadline: float, now: float) -> float:
    """The step's own limit, or what is left of the budget if less (0: skip it)."""
    left = deadline - now
    return 0.0 if left < MIN_STEP_S else min(step.limit_s, left)


def kill_tagged(value: str) -> int:
    """SIGKILL every process whose environment carries ``TAG=value``; how many there were."""
    killed = 0
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.environ().get(TAG) == value:
                process.kill()
                killed += 1
    return killed


def run_step(step: Step, limit: float, log: Callable[[str], None]) -> None:
    """Run ``step`` for at most ``limit`` seconds; past it, stop its whole tree and rebuild its
    report from what it finished."""
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag, "PYTHONUNBUFFERED": "1"}
    log(f"[gpu-rows] {step.name}: up to {limit:.0f} s: {' '.join(step.command)}")
    started = time.perf_counter()
    proc = subprocess.Popen(step.command, cwd=REPO, env=env, start_new_session=True)
    try:
        code: int | str = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        code = "stopped at its limit"
    killed = kill_tagged(tag)  # whatever the step left behind (Ray daemons, a row's process)
    proc.wait()
    log(
        f"[gpu-rows] {step.name}: {code} after {time.perf_counter() - started:.0f} s"
        + (f", stopped {killed} of its processes" if killed else "")
    )
    if code != 0 and step.after_timeout is not None:
        subprocess.run(step.after_timeout, cwd=REPO, env=env, timeout=60, check=False)


def collect(steps: list[Step], work: Path, out: Path) -> None:
    """The steps' reports and a tarball of the rows' logs, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for step in steps:
        for name in step.results:
            path = work / "results" / name
            if path.exists():
                shutil.copyfile(path, out / f"gpu_rows_{step.name}{path.suffix}")
    with tarfile.open(out / "gpu_rows_logs.tar.gz", "w:gz") as tar:
        for path in sorted((work / "runs").rglob("*.log")):
            tar.add(path, arcname=str(path.relative_to(work)))


def environment_lines() -> list[str]:
    """The GPU, Python and torch this run sees."""
    lines = [f"python {sys.version.split()[0]} at {sys.executable}"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
        lines.append(subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout)
    lines.append(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    return lines


def main() -> None:
    started = time.perf_counter()
    device = os.environ.get("GPU_ROWS_DEVICE", "cuda")
    scale = os.environ.get("GPU_ROWS_SCALE", "full")
    deadline = started + float(os.environ.get("GPU_ROWS_BUDGET_S", "510"))
    out = Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    work = REPO / "benchmarks" / "runs" / "gpu_rows"
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(device, scale, work)
    with (out / "gpu_rows.log").open("w") as log_file:

        def log(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        log(f"[gpu-rows] device {device}, scale {scale}, results -> {out}")
        for line in environment_lines():
            log(line.rstrip())
        for step in steps:
            limit = step_limit(step, deadline, time.perf_counter())
            if not limit:
                log(f"[gpu-rows] {step.name}: skipped, {MIN_STEP_S} s or less of the budget left")
                continue
            run_step(step, limit, log)
            collect(steps, work, out)
        log(f"[gpu-rows] done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
