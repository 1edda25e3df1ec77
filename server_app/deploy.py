"""``fedsparse-deploy``: run an experiment on a deployed federation (SuperLink + SuperNodes).

fedsparse-deploy CONNECTION [--run-dir DIR] [--app DIR] [hydra overrides...]

The overrides are the ones the simulation CLI takes. They are composed and validated here first,
so a bad config fails before anything is sent; then ``flwr run APP CONNECTION --stream`` ships
them in the run config and the deployed ServerApp composes the same conf/ from them. The exit
status is 0 only when the run completed (``flwr run --stream`` itself exits 0 on a failed run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.datasets import DataNotFoundError
from server_app.failures import reason_of
from server_app.federation import sized_by_nodes, without_auto
from server_app.settings import ConfigError, compose_config, validate

RUN_DIR_OVERRIDE = "hydra.run.dir="
STARTED = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"
FAILED = "finished:failed"
# the ServerApp's start line (server_app.experiment.run_experiment), printed once the run
# folder holds the run's config: from then on resume=true continues it
RUN_STARTED = re.compile(r"\[fedsparse\] \S+ on \S+ .*rounds \d+\.\.\d+")
STATUS_WAIT_S = 30.0
STOP_WAIT_S = 60.0
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
STAND_IN_KEYS = ("clients_per_round", "min_replies")  # bound num_clients from below


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsparse-deploy",
        description="Validate Hydra overrides, then run them on a SuperLink with `flwr run`.",
    )
    parser.add_argument("connection", help="SuperLink connection name from $FLWR_HOME/config.toml")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, as for `fedsparse` (e.g. strategy=lips)"
    )
    parser.add_argument(
        "--run-dir",
        help="results folder on the SuperLink host (default: hydra.run.dir=... if given, else "
        "./outputs/deploy/<date>/<time>, made absolute here)",
    )
    parser.add_argument(
        "--app",
        type=Path,
        default=PACKAGE_ROOT,
        help="the fedsparse project folder holding pyproject.toml (default: %(default)s)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, options before, between or after the overrides (as the usage line
    and the README write them: ``CONNECTION --run-dir DIR overrides...``)."""
    return _parser().parse_intermixed_args(argv)


def resolve_run_dir(overrides: list[str], run_dir: str | None) -> Path:
    """Absolute run folder: ``--run-dir``, else ``hydra.run.dir=``, else a timestamped one."""
    if run_dir is None:
        given = [o[len(RUN_DIR_OVERRIDE) :] for o in overrides if o.startswith(RUN_DIR_OVERRIDE)]
        run_dir = given[-1] if given else time.strftime("outputs/deploy/%Y-%m-%d/%H-%M-%S")
    return Path(run_dir).expanduser().absolute()


def run_config_toml(overrides: list[str], run_dir: Path) -> str:
    """The ``--run-config`` file: JSON string escapes are valid TOML basic strings."""
    quoted = " ".join(shlex.quote(o) for o in overrides if not o.startswith(RUN_DIR_OVERRIDE))
    return f"overrides = {json.dumps(quoted)}\nrun-dir = {json.dumps(str(run_dir))}\n"


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate like the ServerApp will; raise ConfigError on any problem. Under
    ``num_clients=auto`` the nodes are not counted yet: the check stands in the smallest count
    that ``clients_per_round`` and ``min_replies`` allow, and the ServerApp checks again."""
    try:
        cfg = compose_config(without_auto(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"invalid overrides {overrides}: {err}") from err
    if sized_by_nodes(overrides):
        given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in STAND_IN_KEYS]
        OmegaConf.update(cfg, "num_clients", max([1, *(int(v) for v in given if v.isdigit())]))
    validate(cfg)


def flwr_executable() -> str:
    """``flwr`` from PATH, else the one next to this Python."""
    return shutil.which("flwr") or str(Path(sys.executable).with_name("flwr"))


@dataclass
class FlwrRun:
    """The ``flwr run --stream`` under way, and what its output said so far."""

    proc: subprocess.Popen | None = None
    run_id: str | None = None
    started: bool = False  # the ServerApp printed its start line: the run folder holds the run


def stream_run(app: Path, connection: str, config_file: Path, run: FlwrRun) -> int:
    """Run ``flwr run --stream``, echoing its output; returns its exit status. It runs in a
    session of its own, so a terminal's Ctrl-C reaches this process only (which then stops the
    run on the SuperLink, see :func:`stop_run`)."""
    command = [flwr_executable(), "run", str(app), connection, "--stream"]
    command += ["--run-config", str(config_file)]
    run.proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    assert run.proc.stdout is not None
    for line in run.proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        started = STARTED.search(line)
        run.run_id = run.run_id or (started.group(1) if started else None)
        run.started = run.started or RUN_STARTED.search(line) is not None
    return run.proc.wait()


class Stopped(Exception):
    """SIGINT or SIGTERM reached ``fedsparse-deploy``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def _end_child(run: FlwrRun) -> None:
    """Stop the local ``flwr run`` process group (it only streams: the run lives on)."""
    if run.proc is not None and run.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()


def stop_run(run: FlwrRun, connection: str, signum: int, resume: str) -> int:
    """Stop the run on the SuperLink too (``flwr stop``), say in one line how to go on, and
    return 128 + the signal number. A second signal meanwhile leaves at once, saying how to
    stop the run by hand."""
    name = signal.Signals(signum).name
    stop_by_hand = f"flwr stop {run.run_id} {connection}"

    def leave_now(again: int, _frame: object) -> None:
        print(
            f"\n[fedsparse-deploy] {signal.Signals(again).name} again: leaving; run "
            f"{run.run_id} may still be running on the SuperLink: {stop_by_hand}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + again)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave_now)
    _end_child(run)
    if run.run_id is None:
        line = f"{name}: stopped before the run started; run the same command again"
    else:
        result = subprocess.run(
            [flwr_executable(), "stop", run.run_id, connection],
            capture_output=True,
            text=True,
            timeout=STOP_WAIT_S,
        )
        status, _ = run_status(connection, run.run_id)
        if not status.startswith("finished"):
            said = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["nothing"]
            line = (
                f"{name}: run {run.run_id} is still {status} on the SuperLink (flwr stop said: "
                f"{said[0]}); stop it with: {stop_by_hand}"
            )
        elif run.started:
            line = f"{name}: stopped run {run.run_id}; continue with: {resume}"
        else:
            line = f"{name}: stopped run {run.run_id} before it started; run the same command again"
    print(f"\n[fedsparse-deploy] {line}", file=sys.stderr, flush=True)
    return 128 + signum


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` with its own settings."""
    words = ["fedsparse-deploy", args.connection, "--run-dir", str(run_dir)]
    if args.app != PACKAGE_ROOT:
        words += ["--app", str(args.app)]
    return shlex.join([*words, "resume=true"])


def run_status(connection: str, run_id: str) -> tuple[str, str]:
    """(status, details) of a run; ``flwr run --stream`` exits 0 even when the run failed."""
    command = [flwr_executable(), "ls", connection, "--run-id", run_id, "--format", "json"]
    deadline = time.monotonic() + STATUS_WAIT_S
    while True:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        try:
            run = json.loads(result.stdout[result.stdout.index("{") :])["runs"][0]
        except (ValueError, KeyError, IndexError):
            return "unknown", (result.stdout + result.stderr).strip()[-500:]
        if run["status"].startswith("finished") or time.monotonic() > deadline:
            return run["status"], run.get("status-details", "")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    """Validate, run with ``flwr run``, then report how the run ended (0 = completed); SIGINT
    or SIGTERM stops the run on the SuperLink too (:func:`stop_run`)."""
    args = parse_args(argv)
    run_dir = resolve_run_dir(args.overrides, args.run_dir)
    run = FlwrRun()
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return deploy(args, run_dir, run)
    except Stopped as stop:
        return stop_run(run, args.connection, stop.signum, resume_command(args, run_dir))
    finally:
        _end_child(run)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def deploy(args: argparse.Namespace, run_dir: Path, run: FlwrRun) -> int:
    """Check the overrides here, stream the run, and say how it ended."""
    if not (args.app / "pyproject.toml").is_file():
        raise SystemExit(
            f"fedsparse-deploy: --app {args.app} holds no pyproject.toml; pass the fedsparse "
            "project folder (a checkout installed with `pip install -e`)"
        )
    try:
        check_overrides(args.overrides)
    except ConfigError as err:
        raise SystemExit(f"fedsparse-deploy: {err}") from None
    except DataNotFoundError as err:
        raise SystemExit(
            f"fedsparse-deploy: {err} (the config is checked on this machine first, and "
            "strategy=fedpm builds its model from the data set's classes: it must be readable "
            "here too)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="fedsparse-deploy-") as tmp:
        config_file = Path(tmp) / "run-config.toml"
        config_file.write_text(run_config_toml(args.overrides, run_dir))
        print(f"[fedsparse-deploy] results on the SuperLink host in {run_dir}", flush=True)
        code = stream_run(args.app.resolve(), args.connection, config_file, run)
    if code != 0 or run.run_id is None:
        print(f"fedsparse-deploy: `flwr run` failed (exit status {code})", file=sys.stderr)
        return code or 1
    status, details = run_status(args.connection, run.run_id)
    if status == FAILED:
        print(f"fedsparse-deploy: run {run.run_id} failed: {reason_of(details)}", file=sys.stderr)
        return 1
    if status != COMPLETED:
        print(f"fedsparse-deploy: run {run.run_id} ended {status}: {details}", file=sys.stderr)
        return 1
    print(f"[fedsparse-deploy] run {run.run_id} completed; results in {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
