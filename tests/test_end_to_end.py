"""End-to-end runs of the `fedsparse` CLI on the Ray simulation engine (digits, 5 clients).

Three small runs (about 20 s each): an uninterrupted 4-round run, and a 2-round run of the same
config that is then resumed to round 4 with cohorts of 2 clients per node. Together they pin the
output contract, determinism (same seed, same numbers) and resume (stop after 2 + resume to 4 ==
uninterrupted 4, whatever the cohort size). One more run attaches to a Ray head the test starts.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from server_app.results import read_metrics
from tests.processes import kill_tree, run_command
from tests.runs import SMALL_RUN

pytestmark = pytest.mark.slow  # every test here runs the fedsparse CLI (Ray) in a subprocess

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "round",
    "accuracy",
    "loss",
    "uplink_bytes",
    "downlink_bytes",
    "clients",
    "failures",
    "round_s",
    "client_train_s",
    "train_loss",
    "fed_accuracy",
    "fed_loss",
    "layer_rel_update",
}
SUMMARY_KEYS = {
    "final_accuracy",
    "best_accuracy",
    "uplink_bytes_total",
    "downlink_bytes_total",
    "wall_s",
    "strategy",
    "seed",
    "rounds",
}


def fedsparse(*overrides: str, timeout: float = 300) -> str:
    """Run the CLI to completion; fail the test with its output tail if it fails."""
    result = run_command([sys.executable, "-m", "server_app.cli", *overrides], REPO, timeout)
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("e2e") / "full"
    output = fedsparse(*SMALL_RUN, "num_rounds=4", f"hydra.run.dir={run_dir}")
    return run_dir, output


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("e2e") / "resumed"
    fedsparse(*SMALL_RUN, "num_rounds=2", f"hydra.run.dir={run_dir}")
    first_leg = read_metrics(run_dir)
    # the second leg hosts clients in cohorts of 2: the engine may change on resume, numbers not
    fedsparse(
        *SMALL_RUN,
        "num_rounds=4",
        "resume=true",
        "engine.clients_per_node=2",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir, first_leg


def test_output_contract(uninterrupted: tuple[Path, str]) -> None:
    run_dir, output = uninterrupted
    metrics = read_metrics(run_dir)
    assert [r["round"] for r in metrics] == [1, 2, 3, 4]
    for row in metrics:
        assert ROW_KEYS <= row.keys()
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["clients"] == 5 and row["failures"] == 0
        assert set(row["layer_rel_update"]) == {
            "conv1.weight",
            "conv2.weight",
            "fc1.weight",
            "fc2.weight",
        }
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["rounds"] == 4 and summary["strategy"] == "fedavg" and summary["seed"] == 0
    assert summary["final_accuracy"] == metrics[-1]["accuracy"]
    assert summary["uplink_bytes_total"] == sum(r["uplink_bytes"] for r in metrics)
    assert "num_rounds: 4" in (run_dir / "config.yaml").read_text()
    for plot in ("accuracy_vs_round.png", "accuracy_vs_uplink.png", "layer_updates.png"):
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "checkpoint" / "latest.json").read_text())["round"] == 4
    assert output.count("[fedsparse] round ") == 4
    assert "[fedsparse] fedavg on digits" in output


def test_a_finished_run_ends_with_one_summary_line(uninterrupted: tuple[Path, str]) -> None:
    """The last line says how it went and where the results are; Ray's actor-termination
    warnings are gone."""
    run_dir, output = uninterrupted
    summary = json.loads((run_dir / "summary.json").read_text())
    last = [line for line in output.splitlines() if line.startswith("[fedsparse]")][-1]
    assert last.startswith("[fedsparse] done: 4 rounds, final acc ")
    assert f"best {summary['best_accuracy']:.4f}" in last and last.endswith(f"-> {run_dir}")
    assert "Manually terminating" not in output


def test_learns_beyond_chance(uninterrupted: tuple[Path, str]) -> None:
    metrics = read_metrics(uninterrupted[0])
    assert metrics[-1]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_uplink_is_the_dense_model_per_client(uninterrupted: tuple[Path, str]) -> None:
    import models

    model = models.build_model("cnn", (1, 8, 8), 10)
    dense = sum(p.numel() * 4 for p in model.state_dict().values())
    for row in read_metrics(uninterrupted[0]):
        per_client = row["uplink_bytes"] / row["clients"]
        assert dense <= per_client <= dense + 2_000  # npy headers, names and the metrics record


def test_same_seed_gives_same_metrics(uninterrupted: tuple[Path, str], resumed) -> None:
    _, first_leg = resumed
    full = read_metrics(uninterrupted[0])
    assert [r["accuracy"] for r in first_leg] == [r["accuracy"] for r in full[:2]]
    assert [r["train_loss"] for r in first_leg] == [r["train_loss"] for r in full[:2]]


def test_resume_equals_uninterrupted_run(uninterrupted: tuple[Path, str], resumed) -> None:
    run_dir, _ = resumed
    full, continued = read_metrics(uninterrupted[0]), read_metrics(run_dir)
    assert [r["round"] for r in continued] == [1, 2, 3, 4]
    for key in ("accuracy", "loss", "train_loss", "uplink_bytes", "fed_accuracy"):
        assert [r[key] for r in continued] == [r[key] for r in full], key


def test_bad_config_fails_before_starting(tmp_path: Path) -> None:
    result = run_command(
        [sys.executable, "-m", "server_app.cli", "num_rounds=-1", f"hydra.run.dir={tmp_path}"],
        REPO,
        timeout=60,
    )
    assert result.returncode != 0
    assert "num_rounds=-1" in result.stdout
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("strategy", ["fedavg", "fedpm"])
def test_missing_data_fails_in_one_line_before_ray_starts(tmp_path: Path, strategy: str) -> None:
    result = run_command(
        [
            sys.executable,
            "-m",
            "server_app.cli",
            f"strategy={strategy}",
            "dataset=cifar10",
            f"dataset.root={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        REPO,
        timeout=120,
    )
    assert result.returncode != 0
    assert "not found" in result.stdout and str(tmp_path / "data") in result.stdout
    assert "Traceback" not in result.stdout and "Ray" not in result.stdout


def test_unknown_group_option_lists_choices(tmp_path: Path) -> None:
    result = run_command(
        [sys.executable, "-m", "server_app.cli", "partition=nope", f"hydra.run.dir={tmp_path}"],
        REPO,
        timeout=60,
    )
    assert result.returncode != 0
    assert "dirichlet" in result.stdout and "pathological" in result.stdout


def test_fresh_run_never_overwrites_a_finished_one(uninterrupted: tuple[Path, str]) -> None:
    run_dir, _ = uninterrupted
    before = (run_dir / "metrics.jsonl").read_bytes()
    result = run_command(
        [
            sys.executable,
            "-m",
            "server_app.cli",
            *SMALL_RUN,
            "num_rounds=4",
            f"hydra.run.dir={run_dir}",
        ],
        REPO,
        timeout=60,
    )
    assert result.returncode != 0
    assert "already holds a run" in result.stdout and "resume=true" in result.stdout
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_resuming_a_finished_run_changes_nothing(uninterrupted: tuple[Path, str]) -> None:
    """resume=true on a run that has all its rounds: exit 0 before Ray starts, files untouched;
    fewer rounds than it has finished is a config error."""
    run_dir, _ = uninterrupted
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    base = [sys.executable, "-m", "server_app.cli", *SMALL_RUN, "resume=true"]
    done = run_command([*base, "num_rounds=4", f"hydra.run.dir={run_dir}"], REPO, timeout=60)
    assert done.returncode == 0 and "nothing to resume" in done.stdout
    fewer = run_command([*base, "num_rounds=2", f"hydra.run.dir={run_dir}"], REPO, timeout=60)
    assert fewer.returncode != 0 and "finished 4 rounds" in fewer.stdout
    assert "Ray" not in done.stdout + fewer.stdout
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "fedsparse.log"} == {
        k: v for k, v in before.items() if k != "fedsparse.log"
    }


def test_resume_refuses_a_different_experiment(uninterrupted: tuple[Path, str]) -> None:
    run_dir, _ = uninterrupted
    result = run_command(
        [
            sys.executable,
            "-m",
            "server_app.cli",
            *SMALL_RUN,
            "num_rounds=6",
            "lr=0.2",
            "resume=true",
            f"hydra.run.dir={run_dir}",
        ],
        REPO,
        timeout=60,
    )
    assert result.returncode != 0
    assert "changes lr (the run has 0.05, given 0.2)" in result.stdout


def test_sigkill_mid_round_then_resume_equals_uninterrupted(
    uninterrupted: tuple[Path, str], tmp_path: Path
) -> None:
    """kill -9 of the whole run during round 3, then resume=true: same numbers as never killed."""
    run_dir = tmp_path / "crashed"
    stall = ["faults.slow_rate=1.0", "faults.slow_s=0.5"]  # slows rounds, changes no number
    args = [
        sys.executable,
        "-m",
        "server_app.cli",
        *SMALL_RUN,
        *stall,
        "num_rounds=4",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").exists() or len(read_metrics(run_dir)) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach round 2 in time"
            time.sleep(0.1)
    finally:
        kill_tree(proc)
    assert proc.returncode == -9
    assert len(read_metrics(run_dir)) < 4
    fedsparse(*SMALL_RUN, *stall, "num_rounds=4", "resume=true", f"hydra.run.dir={run_dir}")
    full, resumed = read_metrics(uninterrupted[0]), read_metrics(run_dir)
    assert [r["round"] for r in resumed] == [1, 2, 3, 4]
    for key in ("accuracy", "loss", "train_loss", "uplink_bytes", "fed_accuracy"):
        assert [r[key] for r in resumed] == [r[key] for r in full], key


def test_lbgm_client_state_persists_across_rounds_on_ray(tmp_path: Path) -> None:
    """Look-back gradients live in the simulated SuperNodes' context.state between rounds."""
    run_dir = tmp_path / "lbgm"
    fedsparse(
        *SMALL_RUN,
        "strategy=lbgm",
        "strategy.delta=0.9",
        "num_rounds=3",
        "federated_eval=false",
        f"hydra.run.dir={run_dir}",
    )
    metrics = read_metrics(run_dir)
    assert metrics[0]["lbgm_reuse_frac"] == 0.0  # nothing to look back on in round 1
    assert all(r["lbgm_reuse_frac"] > 0.5 for r in metrics[1:])
    assert all(r["uplink_bytes"] < metrics[0]["uplink_bytes"] / 2 for r in metrics[1:])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ray_address_attaches_to_a_running_ray_cluster(tmp_path: Path) -> None:
    """engine.ray_address: the run uses the cluster the test started and leaves it running."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--ray-client-server-port={_free_port()}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in head.stdout:
            if "Ray runtime started" in line:
                break
        else:
            pytest.fail("the Ray head did not start")
        run_dir = tmp_path / "cluster"
        output = fedsparse(
            *SMALL_RUN,
            "num_rounds=1",
            "federated_eval=false",
            "plots=false",
            f"engine.ray_address=127.0.0.1:{port}",
            f"hydra.run.dir={run_dir}",
        )
        assert "Connecting to existing Ray cluster" in output
        assert [r["round"] for r in read_metrics(run_dir)] == [1]
        assert head.poll() is None, "the run must not stop a cluster it did not start"
    finally:
        kill_tree(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_unreachable_ray_address_is_a_clear_error(tmp_path: Path) -> None:
    result = run_command(
        [
            sys.executable,
            "-m",
            "server_app.cli",
            *SMALL_RUN,
            f"engine.ray_address=127.0.0.1:{_free_port()}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        REPO,
        timeout=120,
    )
    assert result.returncode != 0
    assert "engine.ray_address" in result.stdout
