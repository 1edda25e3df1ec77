"""A run that never started leaves no folder behind.

Hydra makes the run folder (and any missing parents), writes ``.hydra/`` and the log file into
it, and only then hands over to fedsparse, which may still refuse the config or be stopped by
Ctrl-C before the run starts. The folders such a command created are removed again; folders
that existed before it are never touched. Which ones existed is noted before Hydra starts
(``snapshot``), as the folder's name is only known once Hydra has resolved ``${now:...}``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# conf/config.yaml's hydra.run.dir (tests/test_cli.py keeps the two the same)
DEFAULT_RUN_DIR = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
RUN_DIR_KEY = "hydra.run.dir="
HYDRA_FILES = frozenset({".hydra", "fedsparse.log"})  # what Hydra writes before the run starts


def run_dir_pattern(args: list[str]) -> str | None:
    """The run folder a single run of ``args`` uses, ``${...}`` unresolved (None: --multirun)."""
    if "--multirun" in args or "-m" in args:
        return None
    given = [a[len(RUN_DIR_KEY) :] for a in args if a.startswith(RUN_DIR_KEY)]
    return given[-1] if given else DEFAULT_RUN_DIR


def snapshot(pattern: str) -> frozenset[Path]:
    """The folders that exist now among those the run folder ``pattern`` may resolve into: the
    literal part's ancestors, and below it as many levels as the pattern has after it."""
    literal, _, rest = pattern.partition("${")
    if rest:  # the last whole folder before the first ${
        literal = literal.rpartition("/")[0] or ("/" if literal.startswith("/") else "")
    root = Path(literal or ".").expanduser().absolute()
    depth = len(pattern[len(literal) :].strip("/").split("/")) if rest else 0
    existing = {p for p in (root, *root.parents) if p.is_dir()}
    level = [root] if root.is_dir() else []
    for _ in range(depth):
        level = [child for folder in level for child in folder.iterdir() if child.is_dir()]
        existing.update(level)
    return frozenset(existing)


def remove_unstarted(run_dir: Path, existed: frozenset[Path]) -> None:
    """Remove ``run_dir`` and its parents that this command created, if the run never started:
    the folder holds nothing but Hydra's files, its parents nothing at all."""
    folder = run_dir.absolute()
    if folder in existed or not folder.is_dir():
        return
    if not {entry.name for entry in folder.iterdir()} <= HYDRA_FILES:
        return  # the run started (config.yaml), or something else was written there
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent in existed or not parent.is_dir() or any(parent.iterdir()):
            return
        parent.rmdir()
