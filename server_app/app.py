"""The ServerApp, built by a factory so both engines share it.

The simulation CLI passes the composed config and run directory in. Under ``flwr run`` (deployment)
the module-level ``app`` composes conf/ itself from the run config's ``overrides`` string and writes
into its ``run-dir`` (a path on the SuperLink host; ``fedsparse-deploy`` sets both), e.g.
``flwr run . <connection> --run-config 'overrides="strategy=fedavg num_rounds=5" run-dir="/abs"'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from server_app.experiment import run_experiment
from server_app.settings import compose_config, validate

DEPLOY_RUNS = Path("outputs") / "deploy"


def deployed_run_dir(run_config: Mapping[str, object], run_id: int) -> Path:
    """The run config's ``run-dir``, else ``outputs/deploy/<run_id>`` under the process cwd."""
    run_dir = str(run_config.get("run-dir", "")).strip()
    return Path(run_dir).expanduser() if run_dir else DEPLOY_RUNS / str(run_id)


def make_server_app(
    cfg: DictConfig | None = None, run_dir: Path | None = None, sweep: Path | None = None
) -> ServerApp:
    """A ServerApp running ``cfg`` into ``run_dir`` (both taken from the run config when None),
    as a job of the ``--multirun`` in ``sweep`` when one is given."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = cfg
        if config is None:
            config = compose_config(str(context.run_config.get("overrides", "")))
            validate(config)
            # devices may hold their own data: the job tells them the set's shape and statistics
            OmegaConf.update(config, "engine.describe_data", True)
        target = run_dir or deployed_run_dir(context.run_config, context.run_id)
        run_experiment(grid, config, target, sweep)

    return server_app


app = make_server_app()
