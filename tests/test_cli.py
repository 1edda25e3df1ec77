"""The command line before Hydra: typos get the nearest key or option, an unusable run folder is
one line, ``--help`` says what fedsparse is (server_app/cli.py, overrides.py, help.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server_app.help import EXAMPLES, help_text
from server_app.overrides import check_command_line, groups, overrides_of

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["num_round=5"], "unknown key num_round; did you mean num_rounds"),
        (["+num_round=5"], "unknown key num_round; did you mean num_rounds"),
        (
            ["strategy=lips", "strategy.perod=5"],
            "unknown key strategy.perod; did you mean strategy.period",
        ),
        (["strategy=fedpn"], "strategy=fedpn: no such strategy; did you mean fedpm"),
        (["model=resnet99"], "model=resnet99: no such model; did you mean resnet"),
        (
            ["--multirun", "strategy=fedavg,lipz"],
            "strategy=lipz: no such strategy; did you mean lips",
        ),
    ],
)
def test_typos_get_the_nearest_key_or_option(args: list[str], expected: str) -> None:
    assert expected in check_command_line(args)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["strategy=lbgm", "strategy.delta=0.2", "partition.alpha=0.1"],
        ["--multirun", "seed=0,1", "strategy=fedavg,lips", "strategy.period=5"],
        ["--cfg", "job", "num_rounds=3"],
        ["hydra.run.dir=outputs/${now:%H}", "+hydra.job.env_set.A=1"],
    ],
)
def test_valid_command_lines_pass(args: list[str]) -> None:
    assert check_command_line(args) is None


def test_flags_and_their_values_are_not_overrides() -> None:
    assert overrides_of(["--cfg", "job", "-m", "seed=1", "--info", "a=b"]) == ["seed=1", "a=b"]


def test_an_unusable_run_folder_is_named_in_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    for folder in (Path("/proc/fedsparse"), blocked / "run"):
        problem = check_command_line([f"hydra.run.dir={folder}"])
        assert problem.startswith(f"hydra.run.dir={folder}: cannot write there")
    assert check_command_line([f"hydra.run.dir={tmp_path / 'new' / 'run'}"]) is None


def test_help_lists_every_group_option_and_the_examples_are_valid(tmp_path: Path) -> None:
    text = help_text()
    for group, options in groups().items():
        line = next(line for line in text.splitlines() if line.strip().startswith(group + " "))
        assert all(option in line for option in options), group
    for command, _ in EXAMPLES:  # the resume example's run folder: one that exists
        args = command.replace("outputs/<date>/<time>", str(tmp_path)).split()[1:]
        assert check_command_line(args) is None, command
    assert "--hydra-help" in text and "docs/" in text


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server_app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_command_answers_help_and_typos_without_a_traceback(tmp_path: Path) -> None:
    shown = _cli("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("fedsparse: federated learning")
    assert "powered by Hydra" not in shown.stdout
    typo = _cli("num_round=5", f"hydra.run.dir={tmp_path / 'run'}")
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert typo.stderr.strip() == (
        "fedsparse: unknown key num_round; did you mean num_rounds? `fedsparse --cfg job` "
        "prints every key"
    )
    folder = _cli("hydra.run.dir=/proc/fedsparse")
    assert folder.returncode == 1 and len(folder.stderr.strip().splitlines()) == 1
