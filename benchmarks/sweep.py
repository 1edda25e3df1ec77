"""Shared by the benchmark scripts: run one `fedsparse --multirun` sweep into a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def multirun(sweep_dir: Path, overrides: list[str], subdir: str) -> None:
    """Run the sweep ``overrides`` with run folders ``sweep_dir/<subdir>`` (Hydra interpolations
    allowed, e.g. ``${strategy.name}_seed${seed}``); a failed run stops the benchmark."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "server_app.cli",
            "--multirun",
            *overrides,
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweep.subdir={subdir}",
        ],
        cwd=REPO,
        check=True,
    )


def grid(**axes: list[str]) -> list[dict[str, str]]:
    """Every combination of the axes' values, e.g. ``grid(seed=["0", "1"], partition=["iid"])``."""
    points: list[dict[str, str]] = [{}]
    for key, values in axes.items():
        points = [{**point, key: value} for point in points for value in values]
    return points


def finished(run_dir: Path, rounds: int) -> bool:
    """Whether ``run_dir`` holds a run that completed ``rounds`` rounds."""
    summary = run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("rounds") == rounds


def missing(runs: list[tuple[Path, list[str]]], rounds: int) -> Iterator[tuple[Path, list[str]]]:
    """Each ``(run_dir, overrides)`` that has not finished ``rounds`` rounds, its overrides with
    ``num_rounds`` and, for an interrupted run (a checkpoint, no summary), ``resume=true``;
    prints a progress line per run, finished ones as skipped."""
    for index, (run_dir, overrides) in enumerate(runs, 1):
        if finished(run_dir, rounds):
            print(f"[benchmark] {index}/{len(runs)} {run_dir.name}: finished, skipped", flush=True)
            continue
        resume = ["resume=true"] if (run_dir / "checkpoint").exists() else []
        print(f"[benchmark] {index}/{len(runs)} {run_dir.name}", flush=True)
        yield run_dir, [*overrides, f"num_rounds={rounds}", *resume]


def run_missing(runs: list[tuple[Path, list[str]]], rounds: int) -> None:
    """Run each run :func:`missing` yields, one process each; a failed run stops the benchmark.
    So a rerun of a benchmark only runs what is missing."""
    for run_dir, overrides in missing(runs, rounds):
        subprocess.run(
            [sys.executable, "-m", "server_app.cli", *overrides, f"hydra.run.dir={run_dir}"],
            cwd=REPO,
            check=True,
        )


def run_missing_in_process(runs: list[tuple[Path, list[str]]], rounds: int) -> None:
    """:func:`run_missing` without Ray: each run goes through ``run_experiment`` on an
    :class:`~server_app.inprocess.InProcessGrid` in this process (the clients one after another),
    so a short run does not pay Ray's ~20 s start. Same run folders, same skip and resume rules.
    Torch uses one thread: two benchmarks side by side then each keep a core of the 2-core box.
    """
    import torch

    from server_app.experiment import run_experiment
    from server_app.inprocess import InProcessGrid
    from server_app.settings import check_data, compose_config, validate

    torch.set_num_threads(1)
    for run_dir, overrides in missing(runs, rounds):
        cfg = compose_config(overrides)
        validate(cfg)
        check_data(cfg)
        run_experiment(InProcessGrid(cfg.num_clients), cfg, run_dir)
