"""``fedsparse-supernode``: Flower's SuperNode with less waiting per message.

    fedsparse-supernode [flower-supernode options ...]

Runs Flower's own ``flower-supernode`` with the options given, in this process, changed in two
ways (docs/deployment.md#round-time measures each):

* ``--isolation process`` and a warm ClientApp executor beside it (client_app.warm_executor):
  each message runs in a fork of a process that imported torch and fedsparse once, instead of a
  new ``flwr-clientapp`` interpreter per message (Flower's default, ``--isolation subprocess``).
  A pipe tells the executor when the SuperNode has a whole message in, so that it asks for the
  task then (a child asking earlier would wait out Flower's 1 s pull backoff).
* Shorter polls. After an empty pull of the SuperLink Flower's SuperNode sleeps 3 s, and it
  checks every 0.5 s whether the ClientApp's reply is ready; neither is a setting. Here both
  wait ``FEDSPARSE_FLEET_POLL_S`` seconds (default 0.2) while the node is busy (within 60 s of
  its last message), so a round's message is picked up within that time instead of ~3 s after
  the server sent it; an idle node goes back to Flower's 3 s, which keeps an idle federation's
  load on the SuperLink as it was. ``FEDSPARSE_FLEET_POLL_S=3`` keeps Flower's polls.

The second change replaces the ``time`` module and the pull and push steps that
``flwr.supernode.start_client_internal`` looks up by name; a Flower release without them makes
this command say so and refuse to start (tests/test_supernode.py checks the installed one).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

POLL_ENV = "FEDSPARSE_FLEET_POLL_S"
DEFAULT_POLL_S = 0.2
FLOWER_IDLE_POLL_S = 3.0  # flwr.supernode.start_client_internal sleeps this after an empty pull
BUSY_WINDOW_S = 60.0
PATCHED_STEPS = ("_pull_and_store_message", "_push_messages")
UNSUPPORTED = ("--isolation", "--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile")
DEFAULT_RUNTIME_HOST, DEFAULT_RUNTIME_PORT = "127.0.0.1", "9094"  # flower-supernode's defaults


class BusyPolls:
    """Stands in for ``time`` in Flower's SuperNode loop: every sleep there is a poll; while
    the node is busy each lasts at most ``poll_s``, and Flower's idle poll is kept otherwise."""

    def __init__(self, poll_s: float, busy_window_s: float = BUSY_WINDOW_S) -> None:
        self.poll_s = poll_s
        self.busy_window_s = busy_window_s
        self.last_busy = -float("inf")
        self.message_in: Callable[[], None] = lambda: None  # told when a message is stored

    def mark_busy(self) -> None:
        self.last_busy = time.monotonic()

    def busy(self) -> bool:
        return time.monotonic() - self.last_busy < self.busy_window_s

    def sleep(self, seconds: float) -> None:
        idle = seconds >= FLOWER_IDLE_POLL_S and not self.busy()
        time.sleep(seconds if idle else min(seconds, self.poll_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def poll_seconds(environ: dict[str, str]) -> float:
    """``FEDSPARSE_FLEET_POLL_S`` checked: seconds in [0.01, 3]."""
    raw = environ.get(POLL_ENV, str(DEFAULT_POLL_S))
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.01 <= value <= FLOWER_IDLE_POLL_S:
        raise SystemExit(
            f"fedsparse-supernode: {POLL_ENV}={raw} must be seconds from 0.01 to 3 (default "
            f"{DEFAULT_POLL_S}; 3 keeps Flower's own polls)"
        )
    return value


def _marking(step: Callable[..., Any], polls: BusyPolls, name: str) -> Callable[..., Any]:
    """``step`` that marks the node busy when a message came (a pull that returned a run id)
    or went (a push)."""

    def marked(*args: Any, **kwargs: Any) -> Any:
        result = step(*args, **kwargs)
        if name == "_push_messages" or result is not None:
            polls.mark_busy()
        if name == "_pull_and_store_message" and result is not None:
            polls.message_in()  # the message and all its objects are in the node's store
        return result

    return marked


def shorten_polls(loop: ModuleType, polls: BusyPolls) -> None:
    """Make Flower's SuperNode loop (``loop``) poll through ``polls``; SystemExit naming what is
    missing when this Flower's loop is not the one this was written for."""
    missing = [name for name in ("time", *PATCHED_STEPS) if not hasattr(loop, name)]
    if missing:
        raise SystemExit(
            f"fedsparse-supernode: this Flower's {loop.__name__} has no {', '.join(missing)}; "
            "run flower-supernode instead (fedsparse supports flwr 1.41-1.42)"
        )
    loop.time = polls  # type: ignore[attr-defined]
    for name in PATCHED_STEPS:
        setattr(loop, name, _marking(getattr(loop, name), polls, name))


def option(args: list[str], name: str, default: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one wins)."""
    value = default
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
    return value


def runtime_api_address(args: list[str]) -> str:
    """Where the SuperNode serves its Runtime API (its ``--host``/``--port``), to connect to."""
    host = option(args, "--host", DEFAULT_RUNTIME_HOST)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    return f"{host}:{option(args, '--port', DEFAULT_RUNTIME_PORT)}"


def _signal(fd: int) -> None:
    """One byte down the pipe; a full pipe already says it."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, b"m")


def main() -> None:
    args = sys.argv[1:]
    given = [o for o in UNSUPPORTED if any(a == o or a.startswith(f"{o}=") for a in args)]
    if given:
        raise SystemExit(
            f"fedsparse-supernode: {' '.join(given)} is not supported here (it runs the "
            "ClientApp in its own warm process, over plain HTTP on this host); use "
            "flower-supernode for that"
        )
    polls = BusyPolls(poll_seconds(dict(os.environ)))
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    shorten_polls(start_client_internal, polls)
    ready_read, ready_write = os.pipe()  # "a message is in": the executor asks for its task
    os.set_blocking(ready_write, False)
    polls.message_in = lambda: _signal(ready_write)
    executor_args = ["--runtime-api-address", runtime_api_address(args)]
    executor_args += ["--parent-pid", str(os.getpid()), "--ready-fd", str(ready_read)]
    executor = subprocess.Popen(
        [sys.executable, "-m", "client_app.warm_executor", *executor_args],
        pass_fds=(ready_read,),
    )
    os.close(ready_read)
    sys.argv = ["flower-supernode", *args, "--isolation", "process"]
    try:
        flower_supernode()
    finally:
        executor.terminate()


if __name__ == "__main__":
    main()
