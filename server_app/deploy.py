"""``fedsparse-deploy``: run an experiment on a deployed federation (SuperLink + SuperNodes).

fedsparse-deploy CONNECTION [--run-dir DIR] [--app DIR] [hydra overrides...]

The overrides are the ones the simulation CLI takes. They are composed and validated here first,
so a bad config fails before anything is sent; then ``flwr run APP CONNECTION --stream`` ships
them in the run config and the deployed ServerApp composes the same conf/ from them. The exit
status is 0 only when the run completed (``flwr run --stream`` itself exits 0 on a failed run).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from data.datasets import DataNotFoundError
from server_app.settings import ConfigError, compose_config, validate

RUN_DIR_OVERRIDE = "hydra.run.dir="
STARTED = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"
STATUS_WAIT_S = 30.0
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


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
    """Compose and validate like the ServerApp will; raise ConfigError on any problem."""
    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"invalid overrides {overrides}: {err}") from err
    validate(cfg)


def flwr_executable() -> str:
    """``flwr`` from PATH, else the one next to this Python."""
    return shutil.which("flwr") or str(Path(sys.executable).with_name("flwr"))


def stream_run(app: Path, connection: str, config_file: Path) -> tuple[int, str | None]:
    """Run ``flwr run --stream``, echoing its output; returns (exit status, run id)."""
    command = [flwr_executable(), "run", str(app), connection, "--stream"]
    command += ["--run-config", str(config_file)]
    run_id = None
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            started = STARTED.search(line)
            run_id = run_id or (started.group(1) if started else None)
    return proc.returncode, run_id


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
    """Validate, run with ``flwr run``, then report how the run ended (0 = completed)."""
    args = parse_args(argv)
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
    run_dir = resolve_run_dir(args.overrides, args.run_dir)
    with tempfile.TemporaryDirectory(prefix="fedsparse-deploy-") as tmp:
        config_file = Path(tmp) / "run-config.toml"
        config_file.write_text(run_config_toml(args.overrides, run_dir))
        print(f"[fedsparse-deploy] results on the SuperLink host in {run_dir}", flush=True)
        code, run_id = stream_run(args.app.resolve(), args.connection, config_file)
    if code != 0 or run_id is None:
        print(f"fedsparse-deploy: `flwr run` failed (exit status {code})", file=sys.stderr)
        return code or 1
    status, details = run_status(args.connection, run_id)
    if status != COMPLETED:
        print(f"fedsparse-deploy: run {run_id} ended {status}: {details}", file=sys.stderr)
        return 1
    print(f"[fedsparse-deploy] run {run_id} completed; results in {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
