"""Ctrl-C and SIGTERM: one line, Ray's processes stopped, exit 128 + n (the clients' kept state
stays for the resume).

The handler is installed before anything heavy is imported, so a signal at any moment of a run
(loading, starting Ray, mid-round, evaluating, checkpointing) takes the same path. Flower's
simulation runs the ServerApp in a thread that a KeyboardInterrupt in the main thread never
reaches, and a terminal's Ctrl-C reaches Ray's daemons and actors too: they die, Flower's
threads raise, and Ray's driver ends this process with status 1 as soon as it sees its raylet
gone. So the handler does not unwind the stack or wait for an orderly ``ray.shutdown``: it
says what to do next, silences the process's output (the dying threads' tracebacks), removes
the run folder if the run had not started yet, kills every process
this one started (Ray's daemons and actors, whether or not the signal reached them) and leaves
at once with ``os._exit``. Nothing is lost: the
checkpoint of the last finished round is written atomically, and the printed command continues
the run from it. A second signal arriving meanwhile leaves at once too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from server_app.run_folder import remove_unstarted


@dataclass
class RunInfo:
    """What the handler needs to know about the run under way (filled in as the run starts)."""

    run_dir: Path | None = None
    # the folders that existed before Hydra made the run folder (None: keep whatever it made)
    existed: frozenset[Path] | None = None


RUN = RunInfo()
_stopping = threading.Event()


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` with its own settings."""
    return f"fedsparse resume=true hydra.run.dir={shlex.quote(str(run_dir))}"


def stop_message(signum: int) -> str:
    """The one line a stopped run prints."""
    name = signal.Signals(signum).name
    if RUN.run_dir is None or not (RUN.run_dir / "config.yaml").exists():
        return f"[fedsparse] {name}: stopped before the run started; run the same command again"
    return f"[fedsparse] {name}: stopped; continue with: {resume_command(RUN.run_dir)}"


def _children() -> list[int]:
    """Every live descendant of this process (Ray's daemons, workers and actors)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [os.getpid()]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _mute() -> None:
    """Send this process's stdout and stderr to /dev/null (threads dying of the stop)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)


def _handle(signum: int, _frame: object) -> None:
    code = 128 + signum
    if _stopping.is_set():  # a second signal while stopping: leave now
        os._exit(code)
    _stopping.set()
    sys.stdout.flush()
    print(f"\n{stop_message(signum)}", file=sys.stderr, flush=True)
    _mute()
    if RUN.run_dir is not None and RUN.existed is not None:
        remove_unstarted(RUN.run_dir, RUN.existed)  # nothing if the run had started
    for pid in _children():  # a private local Ray; an attached cluster only loses this driver
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    os._exit(code)


def install() -> None:
    """Route SIGINT and SIGTERM of this process to the handler: first thing in main, and again
    after a library (``ray.init``) set handlers of its own."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handle)
