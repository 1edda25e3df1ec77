"""A command that never started its run leaves no folder behind (server_app/run_folder.py):
rejected configs, ``resume=true`` without a run, Ctrl-C before the start."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from server_app import interrupts
from server_app.overrides import check_command_line
from server_app.run_folder import DEFAULT_RUN_DIR, remove_unstarted, run_dir_pattern, snapshot

REPO = Path(__file__).resolve().parents[1]


def _hydra_made(run_dir: Path) -> Path:
    """What Hydra writes into a run folder before fedsparse runs."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / "fedsparse.log").write_text("")
    return run_dir


def test_the_default_pattern_is_conf_s() -> None:
    conf = OmegaConf.load(REPO / "conf" / "config.yaml")
    assert OmegaConf.to_container(conf.hydra.run)["dir"] == DEFAULT_RUN_DIR


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ([], DEFAULT_RUN_DIR),
        (["seed=1", "hydra.run.dir=a/b", "hydra.run.dir=c"], "c"),
        (["--multirun", "seed=0,1"], None),
        (["-m", "hydra.run.dir=a"], None),
    ],
)
def test_the_run_folder_pattern_of_a_command_line(args: list[str], pattern: str | None) -> None:
    assert run_dir_pattern(args) == pattern


def test_a_fresh_default_tree_is_removed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    existed = snapshot(DEFAULT_RUN_DIR)
    assert tmp_path in existed and not (tmp_path / "outputs").exists()
    run_dir = _hydra_made(tmp_path / "outputs" / "2026-12-07" / "23-40-00")
    remove_unstarted(run_dir, existed)
    assert list(tmp_path.iterdir()) == []


def test_folders_that_existed_and_other_runs_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    earlier = _hydra_made(tmp_path / "outputs" / "2026-12-07" / "23-00-00")
    (earlier / "config.yaml").write_text("seed: 0\n")
    empty_day = tmp_path / "outputs" / "2026-12-06"
    empty_day.mkdir()
    existed = snapshot(DEFAULT_RUN_DIR)
    assert {earlier, empty_day, earlier.parent} <= existed
    rejected = _hydra_made(earlier.parent / "23-40-00")
    remove_unstarted(rejected, existed)
    assert not rejected.exists() and earlier.is_dir() and empty_day.is_dir()
    started = _hydra_made(empty_day / "23-41-00")
    (started / "config.yaml").write_text("seed: 0\n")  # the run started: its folder stays
    remove_unstarted(started, existed)
    assert (started / "config.yaml").is_file()
    remove_unstarted(earlier, existed)  # a folder that existed before is never removed
    assert (earlier / "fedsparse.log").is_file()


def test_a_literal_run_folder_loses_only_the_parents_it_made(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    run_dir = tmp_path / "mine" / "new" / "run"
    existed = snapshot(str(run_dir))
    _hydra_made(run_dir)
    (run_dir / "notes.txt").write_text("not Hydra's")
    remove_unstarted(run_dir, existed)
    assert run_dir.is_dir()  # something else was written there: kept
    (run_dir / "notes.txt").unlink()
    remove_unstarted(run_dir, existed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert list((tmp_path / "mine").iterdir()) == []


def test_resume_without_a_run_is_one_line_and_makes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "x"
    problem = check_command_line(["resume=true", f"hydra.run.dir={missing}"])
    assert problem.startswith(f"resume=true hydra.run.dir={missing}: no such folder")
    assert not (tmp_path / "nonexistent").exists()
    assert "none is given" in check_command_line(["resume=true"])
    assert check_command_line(["resume=false", f"hydra.run.dir={missing}"]) is None
    assert check_command_line(["resume=true", f"hydra.run.dir={tmp_path}"]) is None
    assert not (tmp_path / "nonexistent").exists()  # the write check made no folder either


def test_ctrl_c_before_the_run_started_removes_the_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_dir = tmp_path / "new" / "run"
    info = interrupts.RunInfo(run_dir=run_dir, existed=snapshot(str(run_dir)))
    _hydra_made(run_dir)
    monkeypatch.setattr(interrupts, "RUN", info)
    monkeypatch.setattr(interrupts, "_mute", lambda: None)
    monkeypatch.setattr(interrupts, "_children", lambda: [])

    def leave(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(interrupts.os, "_exit", leave)
    with pytest.raises(SystemExit):
        interrupts._handle(signal.SIGINT, None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_rejected_commands_leave_no_folder(tmp_path: Path) -> None:
    """The real command, in a fresh folder: a refused config (default run folder), a refused
    config with a literal run folder, and resume=true of a folder that does not exist."""
    missing = tmp_path / "nonexistent" / "x"
    commands = {
        "num_rounds=0": "num_rounds=0",
        f"num_rounds=0 hydra.run.dir={tmp_path / 'a' / 'b'}": "num_rounds=0",
        f"resume=true hydra.run.dir={missing}": "no such folder",
    }
    for command, reason in commands.items():
        result = subprocess.run(
            [sys.executable, "-m", "server_app.cli", *command.split()],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], result.stderr[-2000:]
        assert list(tmp_path.iterdir()) == [], command
