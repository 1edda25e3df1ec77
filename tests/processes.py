"""Run a command in its own process group and stop exactly what it started, also on failure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Ray daemons may leave the process group)."""
    children, found, stack = _children_map(), [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` and every descendant it spawned."""
    pids = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_command(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``args`` to completion (output captured); whatever is left running is killed."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    return subprocess.CompletedProcess(args, proc.returncode, output, None)


SERVER_PACKAGES = ("ray", "hydra", "omegaconf", "matplotlib", "sklearn", "mlxtend", "torchvision")
# None in sys.modules is how Python spells "not installed": ``import ray`` raises
# ModuleNotFoundError and ``importlib.util.find_spec("ray")`` (torch probes optional packages
# with it) returns None
BLOCKER = f"""import sys

sys.modules.update(dict.fromkeys({SERVER_PACKAGES!r}))
"""


def client_only_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` whose Python processes cannot import the server-side packages: a
    ``sitecustomize`` in ``folder``, first on ``PYTHONPATH``, blocks them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path}
