"""``fedsparse``: the command. Light on purpose: Ctrl-C is handled before anything heavy loads.

    fedsparse                                        # the default experiment (see --help)
    fedsparse strategy=lbgm strategy.delta=0.2 partition.alpha=0.1
    fedsparse --multirun seed=0,1,2

Order: signal handlers, ``--help``, the command line checked for typos and an unusable run
folder (one line each), then the Hydra app (``server_app.launch``).
"""

from __future__ import annotations

import sys

from server_app import interrupts


def main() -> None:
    interrupts.install()
    args = sys.argv[1:]
    try:
        from server_app.help import help_text
        from server_app.launch import hydra_main
        from server_app.overrides import check_command_line
    except ModuleNotFoundError as err:  # a client-only install (an edge device)
        raise SystemExit(
            f"fedsparse: the server side is not installed here ({err.name} is missing); "
            "pip install 'fedsparse[server]' (a device running only the ClientApp needs none "
            "of it: see docs/deployment.md)"
        ) from None
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    problem = check_command_line(args)
    if problem:
        raise SystemExit(f"fedsparse: {problem}")
    hydra_main()


if __name__ == "__main__":
    main()
