"""Shared by the benchmark scripts: run one `fedsparse --multirun` sweep into a folder."""

from __future__ import annotations

import subprocess
import sys
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
