"""The ServerApp, built by a factory so both engines share it.

The simulation CLI passes the composed config and run directory in. Under ``flwr run`` (deployment)
the module-level ``app`` composes conf/ itself from the run config's ``overrides`` string and writes
into its ``run-dir`` (a path on the SuperLink host; ``fedsparse-deploy`` sets both), e.g.
``flwr run . <connection> --run-config 'overrides="strategy=fedavg num_rounds=5" run-dir="/abs"'``.
A deployed run sizes itself from the connected SuperNodes unless ``num_clients`` is given
(``server_app.federation``), and ``resume=true`` continues the run in ``run-dir`` with its own
settings, as ``fedsparse resume=true`` does. A failure fedsparse can name ends the run in one
line (``server_app.failures``).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from server_app.engine import with_clients_per_node
from server_app.experiment import run_experiment
from server_app.failures import one_line_failures
from server_app.federation import (
    await_nodes,
    count_clients,
    seated_clients,
    sized_by_nodes,
    without_auto,
)
from server_app.resume import CONFIG_FILE, resumed_config
from server_app.settings import compose_config, validate
from strategies.core.cohort import expected_nodes

DEPLOY_RUNS = Path("outputs") / "deploy"
say = functools.partial(print, flush=True)


def deployed_run_dir(run_config: Mapping[str, object], run_id: int) -> Path:
    """The run config's ``run-dir``, else ``outputs/deploy/<run_id>`` under the process cwd."""
    run_dir = str(run_config.get("run-dir", "")).strip()
    return Path(run_dir).expanduser() if run_dir else DEPLOY_RUNS / str(run_id)


def deployed_config(
    grid: Grid, overrides: str, run_dir: Path
) -> tuple[DictConfig, dict[int, list[int]] | None]:
    """The deployed run's checked config, once its SuperNodes are there, and the clients of the
    nodes counted so far (``run_experiment``'s ``seated``; None: the first round waits for
    every client).

    ``num_clients`` given: wait for that many nodes. Not given (or ``auto``): count the nodes
    (``federation.count_clients``; the missing ones join later); a resumed run keeps its own
    count and starts once its nodes, or after the grace period any of them, are there.
    """
    items = shlex.split(overrides)
    by_nodes = sized_by_nodes(items)
    config = compose_config(without_auto(items))
    resumed = bool(config.resume) and (run_dir / CONFIG_FILE).exists()
    if config.resume:
        config = resumed_config(config, run_dir, without_auto(items))
    wait_s, grace_s = config.deployment.node_wait_s, config.deployment.node_grace_s
    if by_nodes and not resumed:
        size, seats = count_clients(grid, grace_s, wait_s, say)
        OmegaConf.update(config, "num_clients", size)
        validate(config)
        return config, seated_clients(seats, size, _clients_per_node(config))
    validate(config)
    needed = expected_nodes(config.num_clients, _clients_per_node(config))
    await_nodes(grid, needed, wait_s, grace_s if by_nodes else None, say)
    return config, {} if by_nodes else None


def _clients_per_node(config: DictConfig) -> int:
    return with_clients_per_node(config, actors=None).engine.clients_per_node


def make_server_app(
    cfg: DictConfig | None = None, run_dir: Path | None = None, sweep: Path | None = None
) -> ServerApp:
    """A ServerApp running ``cfg`` into ``run_dir`` (both taken from the run config when None),
    as a job of the ``--multirun`` in ``sweep`` when one is given."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        target = run_dir or deployed_run_dir(context.run_config, context.run_id)
        if cfg is not None:
            run_experiment(grid, cfg, target, sweep)
            return
        overrides = str(context.run_config.get("overrides", ""))
        with one_line_failures(target):
            config, seated = deployed_config(grid, overrides, target)
            # devices may hold their own data: the job tells them the set's shape and statistics
            OmegaConf.update(config, "engine.describe_data", True)
            run_experiment(grid, config, target, sweep, seated)

    return server_app


app = make_server_app()
