"""The prepared GPU-rows script (benchmarks/gpu_rows.py): its steps, sizes and time limits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_rows
from benchmarks.gpu_rows import MIN_STEP_S, Step, plan, run_step, step_limit


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_full_plan_reproduces_the_recorded_gpu_rows(tmp_path: Path) -> None:
    fedavg, fedpm, *rest = plan("cuda", "full", tmp_path)
    assert (fedavg.name, fedpm.name) == ("fedavg", "fedpm")
    for step, strategy, clients, model in (
        (fedavg, "fedavg", "1000", "resnet18"),
        (fedpm, "fedpm-klms", "500", "conv6"),
    ):
        command = step.command
        assert command[1:4] == ["-m", "benchmarks.scale", "--gpu"]  # 0.1 GPU a actor, 3 rounds
        assert option(command, "--strategies") == strategy
        assert option(command, "--clients") == clients
        assert option(command, "--model") == model
        assert option(command, "--dataset") == "cifar10_synthetic"
        assert option(command, "--resident-floor") == "cuda"
        assert "--client-gpus" not in command and "--small-rounds" not in command
        assert step.results == [f"gpu_rows_{step.name}.json", f"gpu_rows_{step.name}.md"]
        assert "--report-only" in step.after_timeout
    assert fedavg.limit_s + fedpm.limit_s <= 510 - MIN_STEP_S
    if rest:  # benchmarks/peers.py is there
        (peers,) = rest
        assert option(peers.command, "--device") == "cuda" and "--frameworks" not in peers.command


def test_tiny_cpu_plan_is_the_same_steps_small(tmp_path: Path) -> None:
    steps = plan("cpu", "tiny", tmp_path)
    fedavg, fedpm = steps[:2]
    assert option(fedavg.command, "--clients") == "10"
    assert option(fedpm.command, "--clients") == "6"
    for step in (fedavg, fedpm):
        assert option(step.command, "--dataset") == "digits"
        assert option(step.command, "--model") == "cnn"
        assert option(step.command, "--resident-floor") == "cpu"
        assert option(step.command, "--client-gpus") == "0"
        assert option(step.command, "--small-rounds") == "3"
        assert option(step.command, "--results") == str(tmp_path / "results")
    if len(steps) == 3:
        assert option(steps[2].command, "--frameworks") == "fedsparse"


def test_step_limit_is_the_least_of_its_own_and_the_budget_left() -> None:
    step = Step("s", ["true"], 180, [])
    assert step_limit(step, deadline=1000.0, now=0.0) == 180
    assert step_limit(step, deadline=100.0, now=0.0) == 100
    assert step_limit(step, deadline=100.0, now=100.0 - MIN_STEP_S + 1) == 0.0


def test_a_step_past_its_limit_is_stopped_with_all_it_started(tmp_path: Path) -> None:
    """The step's grandchild, in a session of its own as a benchmark row is, goes too; the
    report command runs after."""
    marker, report = tmp_path / "child.pid", tmp_path / "report"
    child = (
        "import os, subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True); "
        f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    after = [sys.executable, "-c", f"open({str(report)!r}, 'w').write('rebuilt')"]
    lines: list[str] = []
    started = time.perf_counter()
    run_step(Step("slow", [sys.executable, "-c", child], 60, [], after), 3.0, lines.append)
    assert time.perf_counter() - started < 30
    assert "stopped at its limit" in lines[-1] and "stopped 2 of its processes" in lines[-1]
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by init shortly after the kill
            gpu_rows.os.kill(pid, 0)
            time.sleep(0.1)
    assert report.read_text() == "rebuilt"
