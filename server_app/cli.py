"""``fedsparse``, ``fedsparse-deploy`` and ``fedsparse-compare``: the commands. Light on
purpose: Ctrl-C is handled before anything heavy loads, and a client-only install (an edge
device, no ``[server]`` extra) gets one line instead of an import traceback.

    fedsparse                                        # the default experiment (see --help)
    fedsparse strategy=lbgm strategy.delta=0.2 partition.alpha=0.1
    fedsparse --multirun seed=0,1,2

Order: signal handlers, ``--help``, the command line checked for typos and an unusable run
folder (one line each), then the Hydra app (``server_app.launch``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from server_app import interrupts
from server_app.run_folder import run_dir_pattern, snapshot


def server_side_missing(command: str, err: ModuleNotFoundError) -> SystemExit:
    """The one line a server-side command gives on a client-only install."""
    package = (err.name or "a package").split(".")[0]
    return SystemExit(
        f"{command}: the server side is not installed here ({package} is missing); "
        "pip install 'fedsparse[server]' (a device running only the ClientApp needs none "
        "of it: see docs/deployment.md)"
    )


def main() -> None:
    interrupts.install()
    args = sys.argv[1:]
    try:
        from server_app.help import help_text
        from server_app.launch import hydra_main
        from server_app.overrides import check_command_line
    except ModuleNotFoundError as err:  # a client-only install (an edge device)
        raise server_side_missing("fedsparse", err) from None
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    pattern = run_dir_pattern(args)
    if pattern is not None:  # before anything can make folders: what Hydra will add is removable
        interrupts.RUN.existed = snapshot(pattern)
        if "${" not in pattern:  # known already: a Ctrl-C while Hydra makes it finds it too
            interrupts.RUN.run_dir = Path(pattern)
    problem = check_command_line(args)
    if problem:
        raise SystemExit(f"fedsparse: {problem}")
    hydra_main()


def _server_main(command: str, module: str) -> Callable[[], int | None]:
    try:
        return importlib.import_module(module).main
    except ModuleNotFoundError as err:
        raise server_side_missing(command, err) from None


def deploy() -> None:
    """``fedsparse-deploy`` (server_app.deploy)."""
    sys.exit(_server_main("fedsparse-deploy", "server_app.deploy")())


def compare() -> None:
    """``fedsparse-compare`` (server_app.compare)."""
    sys.exit(_server_main("fedsparse-compare", "server_app.compare")())


if __name__ == "__main__":
    main()
