"""benchmarks/peers.py (fedsparse vs pfl-research vs plain Flower): the shared model, the
commands, the per-round arithmetic and the report; the process-tree CPU meter on processes that
burn a known amount of CPU (slow: it starts processes)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import models
from benchmarks import peers, peers_pfl
from benchmarks.process_tree import TreeMeter, kill
from server_app.settings import compose_config, validate

PFL_CNN_PARAMS = 1_626_442  # pfl-research's simple_cnn on 32×32×3, 10 classes


def test_pfl_cnn_is_pfl_research_simple_cnn() -> None:
    """Same parameter count and shapes, in the same order, and the same function: pfl's model
    on NHWC images computes what fedsparse's computes on the same images in NCHW."""
    torch.manual_seed(0)
    ours = models.build_model("pfl_cnn", (3, 32, 32), 10).eval()
    theirs = peers_pfl.simple_cnn((32, 32, 3), 10).eval()
    assert sum(p.numel() for p in ours.parameters()) == PFL_CNN_PARAMS
    assert sum(p.numel() for p in theirs.parameters()) == PFL_CNN_PARAMS
    shapes = [p.shape for p in ours.parameters()]
    assert shapes == [p.shape for p in theirs.parameters()]
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values(), strict=True)))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x.permute(0, 2, 3, 1)), rtol=1e-4, atol=1e-4)


def _args(tmp_path: Path, **changes: object) -> argparse.Namespace:
    values = {
        "rounds": 3,
        "device": "cpu",
        "pfl_python": Path("/venv/bin/python"),
        "pfl_user_eval": False,
        "pfl_threads": None,
        "data": tmp_path / "data.npz",
    }
    return argparse.Namespace(**(values | changes))


@pytest.mark.parametrize("eval_every", [1, 10])
def test_fedsparse_command_composes_and_validates(tmp_path: Path, eval_every: int) -> None:
    command = peers.commands(_args(tmp_path), eval_every, tmp_path)["fedsparse"]
    overrides = command[command.index("server_app.cli") + 1 :]
    assert ("eval_every=10" in overrides) == (eval_every == 10)
    cfg = compose_config([o for o in overrides if not o.startswith("hydra.")])
    validate(cfg)
    assert (cfg.model.name, cfg.num_clients, cfg.clients_per_round) == ("pfl_cnn", 1000, 50)
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.local_test_fraction) == (10, 0.1, 0, 0)


def test_pfl_and_flower_commands_run_the_same_job(tmp_path: Path) -> None:
    found = peers.commands(_args(tmp_path, pfl_user_eval=True, pfl_threads=1), 10, tmp_path)
    assert found["pfl"][:2] == ["/venv/bin/python", str(peers.REPO / "benchmarks/peers_pfl.py")]
    for expected in ("--cohort=50", "--batch-size=10", "--lr=0.1", "--eval-every=10"):
        assert expected in found["pfl"]
    assert {"--eval-batch=128", "--user-eval", "--threads=1"} <= set(found["pfl"])
    for expected in ("--clients=1000", "--clients-per-round=50", "--model=pfl_cnn", "--momentum=0"):
        assert expected in found["flower"]
    assert "--local-test-fraction=0" in found["flower"]


def test_pfl_runs_without_fedsparse_on_its_path() -> None:
    env = peers.environment("pfl", "cpu", "tag")
    assert "PYTHONPATH" not in env and env[peers.TAG] == "tag"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    flower = peers.environment("flower", "cuda", "tag")
    assert flower["PYTHONPATH"] == str(peers.REPO) and flower["RAY_worker_niceness"] == "0"


def test_rounds_from_lines_skip_the_first_round_and_flower_round_zero() -> None:
    stamps = {0: (0.0, 0.0), 1: (5.0, 4.0), 2: (7.0, 7.0), 3: (10.0, 12.0)}
    flower = peers.Run("flower", 1, 0, 3)
    peers._rounds(flower, stamps, {})
    assert flower.rounds_seen == 3 and flower.round_s == flower.gap_s == [2.0, 3.0]
    assert flower.cpu_rounds_s == 8.0 and flower.cpu_per_later_round == 4.0
    pfl = peers.Run("pfl", 1, 0, 3)
    peers._rounds(pfl, {r: stamps[r] for r in (1, 2, 3)}, {1: 9.0, 2: 1.5, 3: 2.5})
    assert pfl.round_s == [1.5, 2.5] and pfl.median_s == 2.0


def test_fedsparse_figures_come_from_its_run_folder(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "seed: 0\neval_every: 10\nfederated_eval: false\nengine:\n  clients_per_node: 13\n"
    )
    rows = [{"round": r, "round_s": s} for r, s in ((1, 9.0), (2, 2.0), (3, 3.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps({"num_params": PFL_CNN_PARAMS}))
    run = peers.Run("fedsparse", 10, 0, 3)
    peers._read_fedsparse(run, tmp_path)
    assert run.round_s == [2.0, 3.0] and run.params == PFL_CNN_PARAMS
    assert run.config == {
        "engine.clients_per_node": 13,
        "eval_every": 10,
        "federated_eval": False,
    }


def _run(framework: str, eval_every: int, repeat: int, seconds: float, **more: object) -> dict:
    run = peers.Run(framework, eval_every, repeat, 3, ["python", "-m", framework])
    run.round_s = run.gap_s = [seconds, seconds]
    run.cpu_rounds_s, run.cpu_s, run.rounds_seen = 4 * seconds, 9 * seconds, 3
    run.wall_s, run.peak_rss_mb, run.params, run.load = 20.0, 1000.0, PFL_CNN_PARAMS, [1, 1, 1]
    for key, value in more.items():
        setattr(run, key, value)
    return peers.asdict(run)


def _data(rounds: int, runs: list[dict]) -> dict:
    return {
        "settings": {
            "job": peers.JOB,
            "rounds": rounds,
            "repeats": 2,
            "eval_every": [10, 1],
            "frameworks": list(peers.FRAMEWORKS),
            "device": "cpu",
            "pfl_user_eval": False,
            "pfl_threads": None,
            "machine": {"cpus": 2, "cpu": "x", "platform": "linux"},
            "versions": {"flwr": "1.42.0", "pfl": "0.6.0"},
            "ray_worker_niceness": "0",
            "date": "2026-12-06 10:00",
        },
        "runs": runs,
    }


def test_report_has_a_table_per_cadence_with_ratios_over_pfl() -> None:
    runs = [
        _run(framework, every, repeat, seconds * (1 + repeat))
        for every in (10, 1)
        for repeat in (0, 1)
        for framework, seconds in (("fedsparse", 2.0), ("pfl", 1.0), ("flower", 4.0))
    ]
    runs.append(_run("flower", 1, 2, 9.0, error="exit 1 (log: x)", round_s=[]))
    runs[0]["config"] = {"engine.clients_per_node": 13, "eval_every": 10}
    for fedsparse in runs[0], runs[3]:  # every 10 rounds, repeats 1 and 2
        fedsparse["cpu_by_process"] = {"ray::ClientAppActor": 9.0, "python": 2.7, "raylet": 0.3}
    text = peers.report(_data(30, runs))
    assert "Smoke run" not in text
    ten = text.split("## Central evaluation every 10 round(s)")[1].split("##")[0]
    assert "| fedsparse | 1,626,442 | 3.00 (2.00–4.00) |" in ten
    assert "| pfl-research | 1,626,442 | 1.50 (1.00–2.00) |" in ten
    assert "| fedsparse ÷ pfl-research | | 2.00× | 2.00× | 2.00× | 2.00× | 1.00× | 1.00× | |" in ten
    assert "| plain Flower ÷ pfl-research | | 4.00× |" in ten
    one = text.split("## Central evaluation every 1 round(s)")[1].split("##")[0]
    assert "| 2 (1 failed) |" in one
    assert text.count("python -m fedsparse") == 2  # its command, once per cadence
    assert "failed: exit 1" in text
    assert "(its first run): `engine.clients_per_node=13`, `eval_every=10`" in text
    assert "- fedsparse: `ray::ClientAppActor` 3.00, `python` 0.90, `raylet` 0.10" in ten


def test_report_of_few_rounds_says_smoke_run() -> None:
    runs = [_run(f, 1, 0, 1.0) for f in ("fedsparse", "pfl")]
    assert "**Smoke run** (3 rounds" in peers.report(_data(3, runs))


def test_report_without_pfl_has_no_ratio_rows() -> None:
    runs = [_run("fedsparse", 10, 0, 1.0), _run("flower", 10, 0, 2.0)]
    assert "÷ pfl-research" not in peers.report(_data(30, runs))


BURN = """
import os, sys, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
if os.fork() == 0:  # a child that its parent reaps
    burn({child})
    os._exit(0)
if os.fork() == 0:  # a daemon: orphaned, reparented away from the tree, reaped by another
    if os.fork() == 0:
        burn({orphan})
        os._exit(0)
    os._exit(0)
burn({root})
os.wait()
os.wait()
"""


@pytest.mark.slow
def test_tree_meter_counts_reaped_children_and_reparented_orphans(tmp_path: Path) -> None:
    """A root burning 0.6 s, a child it reaps burning 0.6 s and an orphan (double fork, found
    by its tag when reparented) burning 0.9 s after the root is gone: 2.1 CPU-s, plus Python's
    start, within a sampling interval."""
    script = textwrap.dedent(BURN.format(root=0.6, child=0.6, orphan=0.9))
    env = {**os.environ, peers.TAG: "meter-test"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    meter = TreeMeter(proc.pid, (peers.TAG, "meter-test"))
    try:
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            meter.sample()
            time.sleep(0.05)
        meter.sample()  # the root's final seconds, as measure() takes them
        proc.wait()
        deadline = time.monotonic() + 10
        while meter.live() and time.monotonic() < deadline:  # the orphan outlives the root
            meter.sample()
            time.sleep(0.05)
        meter.sample()
        total = meter.sample()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        kill(meter.live())
        proc.wait()
    assert meter.processes >= 3
    assert 2.05 <= total <= 2.5
    assert sum(meter.by_name().values()) == pytest.approx(total)
    assert meter.peak_rss_mb > 1


@pytest.mark.slow
def test_measure_times_round_lines_and_the_whole_command(tmp_path: Path) -> None:
    """A stand-in pfl driver: three round lines, its parameter line, CPU burnt between them."""
    script = textwrap.dedent(
        """
        import time
        print("[pfl] 4 users, cohort 2, 1234 parameters, device cpu, torch threads 3", flush=True)
        for r in (1, 2, 3):
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass
            print(f"[pfl] round {r} 0.3000 s", flush=True)
        """
    )
    run = peers.Run("pfl", 1, 0, 3, [sys.executable, "-c", script])
    env = {**os.environ, peers.TAG: "measure-test"}
    peers.measure(run, env, tmp_path / "pfl.log", lambda line: None)
    assert not run.error, run.error
    assert (run.params, run.threads, run.rounds_seen, run.round_s) == (1234, 3, 3, [0.3, 0.3])
    assert run.cpu_rounds_s == pytest.approx(0.6, abs=0.15)
    assert run.cpu_s >= run.cpu_rounds_s and run.wall_s >= 0.9
    assert 0 <= run.others_cores <= os.cpu_count()
    assert "[pfl] round 3" in (tmp_path / "pfl.log").read_text()
    json.dumps(peers.asdict(run))  # what peers.json holds
