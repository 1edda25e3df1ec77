"""Ctrl-C and SIGTERM at any moment of a run: one line, exit 128 + n, no traceback, Ray gone,
the last checkpoint intact (and the clients' state a resume continues from), a second Ctrl-C
leaves at once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from server_app import interrupts
from server_app.checkpoint import load_checkpoint
from server_app.results import read_metrics
from tests.processes import descendants, kill_tree

REPO = Path(__file__).resolve().parents[1]
SMALL_RUN = ["dataset=digits", "num_clients=5", "local_epochs=1", "partition.min_size=20"]
EARLY_INTERRUPTS = 8  # at seeded random moments from the start: imports, config, data, Ray
LIVE_CHILDREN = interrupts._children  # the real one: the handler fixture stubs it
MID_RUN = [(signal.SIGINT, True), (signal.SIGTERM, False)]  # after round 1: group / the process


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """The installed handler with the process exit, the output muting and Ray stubbed: returns
    the exit codes asked for, in order."""
    exits: list[int] = []
    monkeypatch.setattr(interrupts, "_stopping", threading.Event())
    monkeypatch.setattr(interrupts, "RUN", interrupts.RunInfo())
    monkeypatch.setattr(interrupts, "_mute", lambda: None)
    monkeypatch.setattr(interrupts, "_children", lambda: [])  # never pytest's own processes

    def exit_now(code: int) -> None:
        exits.append(code)
        if threading.current_thread() is threading.main_thread():
            raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield exits
    for sig, previous in before.items():
        signal.signal(sig, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_the_handler_keeps_client_state_and_exits_with_128_plus_n(
    handler: list[int], tmp_path: Path, capsys: pytest.CaptureFixture, signum: int
) -> None:
    scratch = tmp_path / "client-state"
    scratch.mkdir()
    (scratch / "client-0.npz").write_bytes(b"state")
    (tmp_path / "config.yaml").write_text("num_rounds: 3\n")
    interrupts.RUN.run_dir = tmp_path
    with pytest.raises(SystemExit):
        signal.raise_signal(signum)
    assert handler[-1] == 128 + signum and scratch.exists()  # the resume needs it
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [interrupts.stop_message(signum)]
    assert f"fedsparse resume=true hydra.run.dir={tmp_path}" in lines[0]


def test_a_run_stopped_before_it_started_says_to_run_the_command_again(
    handler: list[int], tmp_path: Path
) -> None:
    interrupts.RUN.run_dir = tmp_path  # no config.yaml yet: nothing to resume
    assert "run the same command again" in interrupts.stop_message(signal.SIGINT)
    interrupts.RUN.run_dir = None
    assert "run the same command again" in interrupts.stop_message(signal.SIGINT)


@pytest.mark.slow
def test_the_handler_kills_the_processes_the_run_started(
    handler: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's daemons and actors are this process's descendants: each is killed before the
    exit, whether or not the signal reached it (SIGTERM to the run's process alone)."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert child.pid in LIVE_CHILDREN()
        monkeypatch.setattr(interrupts, "_children", lambda: [child.pid])
        with pytest.raises(SystemExit):
            signal.raise_signal(signal.SIGTERM)
        assert child.wait(timeout=5) == -signal.SIGKILL and handler == [143]
    finally:
        child.kill()
        child.wait()


def _interrupt(run_dir: Path, signum: int, *, group: bool, when: float | None, twice: bool):
    """Start a small run; ``when`` seconds after the start (None: once round 1 is logged, then
    a random fraction of a second) send ``signum``; return (exit code, output, seconds to exit,
    every process the run had started)."""
    log = run_dir.with_suffix(".txt")
    args = [sys.executable, "-m", "server_app.cli", *SMALL_RUN, "num_rounds=30"]
    with log.open("w") as output:
        proc = subprocess.Popen(
            [*args, f"hydra.run.dir={run_dir}"],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: set[int] = set()
    try:
        started, deadline = time.monotonic(), time.monotonic() + 150
        while True:
            seen.update(descendants(proc.pid))
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run did not reach the moment in time"
            if when is not None and time.monotonic() - started >= when:
                break
            if when is None and read_metrics(run_dir):
                time.sleep(random.Random(str(run_dir)).uniform(0.0, 1.0))
                break
            time.sleep(0.05)
        seen.update(descendants(proc.pid))
        sent = time.monotonic()
        for _ in range(2 if twice else 1):
            (os.killpg if group else os.kill)(proc.pid, signum)
            time.sleep(0.05)
        proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        kill_tree(proc)
    return proc.returncode, log.read_text(), took, seen


def _assert_clean_stop(run_dir: Path, code: int, output: str, signum: int, seen: set[int]):
    assert code == 128 + signum, output[-3000:]
    assert "Traceback" not in output and "ActorDiedError" not in output, output[-3000:]
    assert f"{signal.Signals(signum).name}: stopped" in output.strip().splitlines()[-1]
    if "stopped before the run started" in output:  # no empty run folder left behind (or the
        # ServerApp's thread wrote config.yaml in the instant between the message and the check)
        assert not run_dir.exists() or (run_dir / "config.yaml").exists(), output[-3000:]
    deadline = time.monotonic() + 10
    while [p for p in seen if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in seen if Path(f"/proc/{p}").exists()], "processes left running"
    rows = read_metrics(run_dir)
    if (run_dir / "checkpoint" / "latest.json").exists():
        checkpoint = load_checkpoint(run_dir / "checkpoint")
        assert checkpoint.round in (len(rows), len(rows) - 1)  # stopped after logging, or not
        assert "fedsparse resume=true" in output
    else:
        assert len(rows) <= 1


@pytest.mark.slow
def test_ctrl_c_at_seeded_random_moments_stops_cleanly(tmp_path: Path) -> None:
    """Ten interrupts: eight at seeded random moments in the first 12 s (imports, config, data,
    Ray's start, the first rounds; the third of them a double Ctrl-C), then SIGINT to the
    process group and SIGTERM to the process after round 1 (mid-round, evaluation, checkpoint).
    A Ctrl-C reaches Ray's daemons too, and Ray's driver used to exit with status 1 when it saw
    them die before the handler had finished (seen once in 20 here): the exit code is checked."""
    rng = random.Random(31)
    for i in range(EARLY_INTERRUPTS):
        run_dir = tmp_path / f"early{i}"
        when = rng.uniform(0.3, 12.0)
        code, output, took, seen = _interrupt(
            run_dir, signal.SIGINT, group=True, when=when, twice=i == 2
        )
        _assert_clean_stop(run_dir, code, output, signal.SIGINT, seen)
        assert took < 20, f"interrupt {i} at {when:.1f} s took {took:.1f} s to stop"
    for signum, group in MID_RUN:
        run_dir = tmp_path / f"mid{signum}"
        code, output, took, seen = _interrupt(run_dir, signum, group=group, when=None, twice=False)
        _assert_clean_stop(run_dir, code, output, signum, seen)
        assert read_metrics(run_dir) and took < 20
