"""A warm ClientApp executor for a SuperNode started with ``--isolation process``.

With its default ``--isolation subprocess`` a SuperNode hands every message to
``flower-superexec``, which starts a new ``flwr-clientapp`` interpreter for it: Python, flwr,
torch and fedsparse are imported again for each message (about 2 s on a small CPU, more than a
small model's training). With ``--isolation process`` Flower leaves running the ClientApp to a
process of one's own that asks the SuperNode's Runtime API for tasks. This is that process: it
imports all of it once, then forks a child per task, which runs Flower's own ClientApp task
runner (``run_clientapp``: pull the message, run the ClientApp, push the reply and the context)
and exits. A fork of a process that has the imports done starts in milliseconds.

The child runs the ClientApp imported here, from the fedsparse installed on the device, not the
copy in the run's app bundle (which a fresh ``flwr-clientapp`` would import): the two are the same
code when the device runs the same fedsparse as the SuperLink, as docs/deployment.md asks.

    python -m client_app.warm_executor --runtime-api-address 127.0.0.1:9094 [--parent-pid PID]

``fedsparse-supernode`` (client_app.supernode) starts it beside its SuperNode.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import time

from flwr.proto.runtime_pb2 import AcquireTaskRequest  # type: ignore[attr-defined]
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import run_clientapp

import client_app.app  # noqa: F401  (the import this process exists to do once)

TASK_POLL_S = 0.05  # a local HTTP call to the SuperNode: cheap, and it is how soon a task starts
FALLBACK_POLL_S = 1.0  # with the SuperNode's pipe: ask anyway this often


def _run_task(runtime_api_address: str, token: str, parent_pid: int | None) -> None:
    """In the forked child: run one ClientApp task with Flower's runner, then leave without
    running the parent's exit handlers or closing its connections."""
    code = 1
    try:
        run_clientapp(
            runtime_api_address=runtime_api_address,
            token=token,
            insecure=True,
            parent_pid=parent_pid,  # the task stops if the SuperNode goes, as Flower's do
        )
    except SystemExit as exit_:  # flwr_exit ends the task with sys.exit
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os._exit(code)


def _reap() -> None:
    """Collect the children that have finished (no zombies)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_message(ready_fd: int | None, poll_s: float) -> bool:
    """Wait until the SuperNode says a message is in (a byte on ``ready_fd``), at most
    ``FALLBACK_POLL_S``; without ``ready_fd`` just ``poll_s``. False once the SuperNode is gone
    (the pipe closed)."""
    if ready_fd is None:
        time.sleep(poll_s)
        return True
    readable, _, _ = select.select([ready_fd], [], [], FALLBACK_POLL_S)
    return not readable or os.read(ready_fd, 4096) != b""


def serve(
    runtime_api_address: str,
    parent_pid: int | None = None,
    ready_fd: int | None = None,
    poll_s: float = TASK_POLL_S,
) -> None:
    """Take the SuperNode's ClientApp tasks one by one, each in a forked child, until the
    ``parent_pid`` process (the SuperNode) is gone. Single-threaded, so that forking is safe.

    With ``ready_fd`` (fedsparse-supernode's pipe) a task is asked for once the SuperNode has
    pulled the whole message: a child started earlier finds the message's objects missing and
    Flower's object pull then backs off a full second before it asks again."""
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    while parent_pid is None or _alive(parent_pid):
        _reap()
        acquired = client.AcquireTask(request)
        if acquired.HasField("task") and acquired.token:
            if os.fork() == 0:
                _run_task(runtime_api_address, acquired.token, parent_pid)
            continue
        if not _wait_for_message(ready_fd, poll_s):
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's host:port")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process (the SuperNode) does"
    )
    parser.add_argument(
        "--ready-fd", type=int, help="a pipe the SuperNode writes to when a message is in"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.runtime_api_address, args.parent_pid, args.ready_fd)


if __name__ == "__main__":
    main()
