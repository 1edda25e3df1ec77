"""Ctrl-C and SIGTERM: one line, Ray shut down, the clients' scratch state removed, exit 128 + n.

The handler is installed before anything heavy is imported, so a signal at any moment of a run
(loading, starting Ray, mid-round, evaluating, checkpointing) takes the same path. Flower's
simulation runs the ServerApp in a thread that a KeyboardInterrupt in the main thread never
reaches, and Ray's actors die of the same Ctrl-C and make that thread raise: so the handler does
not unwind the stack, it says what to do next, silences the process's output (the dying threads'
tracebacks), cleans up in a helper thread and leaves with ``os._exit``. Nothing is lost: the
checkpoint of the last finished round is written atomically, and the printed command continues
the run from it. A second signal while cleaning up leaves at once.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

CLEANUP_S = 15.0  # longest wait for Ray's shutdown before leaving anyway


@dataclass
class RunInfo:
    """What the handler needs to know about the run under way (filled in as the run starts)."""

    run_dir: Path | None = None
    scratch: list[Path] = field(default_factory=list)


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


def _cleanup_and_exit(code: int) -> None:
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                ray.shutdown()  # a private local Ray stops; an attached cluster is disconnected
        except Exception:
            pass
    for folder in RUN.scratch:
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(code)


def _mute() -> None:
    """Send this process's stdout and stderr to /dev/null (threads dying of the stop)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)


def _handle(signum: int, _frame: object) -> None:
    code = 128 + signum
    if _stopping.is_set():  # the second Ctrl-C: leave now
        os._exit(code)
    _stopping.set()
    sys.stdout.flush()
    print(f"\n{stop_message(signum)}", file=sys.stderr, flush=True)
    _mute()
    threading.Thread(target=_cleanup_and_exit, args=(code,), daemon=True).start()
    # wait here (interruptibly: a second signal re-enters this handler) so the main thread does
    # not go on running the experiment while the helper cleans up
    threading.Event().wait(CLEANUP_S)
    os._exit(code)


def install() -> None:
    """Route SIGINT and SIGTERM of this process to the handler: first thing in main, and again
    after a library (``ray.init``) set handlers of its own."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handle)
