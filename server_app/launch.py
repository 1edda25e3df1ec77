"""The Hydra app behind ``fedsparse`` (``server_app.cli``): composes the config, checks it and
the data, and runs the experiment on Flower's Ray simulation engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NoReturn

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from data.datasets import DataNotFoundError
from server_app import interrupts
from server_app.checkpoint import CheckpointError
from server_app.engine import (
    actor_pool_size,
    client_state_folder,
    server_threads,
    start_ray,
    with_clients_per_node,
)
from server_app.experiment import initial_arrays, starting_point
from server_app.resume import resumed_config
from server_app.run_folder import remove_unstarted
from server_app.settings import (
    ConfigError,
    check_data,
    cohorts_reduce,
    cohorts_unreduced_because,
    validate,
)
from strategies.core.cohort import expected_nodes

log = logging.getLogger(__name__)


def run_simulation(cfg: DictConfig, run_dir: Path, sweep: Path | None = None) -> None:
    """Run ``cfg`` in-process on the Ray backend with one virtual node per cohort of clients
    (as a job of the ``--multirun`` in ``sweep`` when one is given)."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation as flower_run_simulation

    from client_app.app import app as client_app
    from server_app.app import make_server_app

    start_ray(cfg.engine.ray_address)  # Flower's backend then reuses this Ray connection
    cpus, gpus = cfg.engine.client_cpus, float(cfg.engine.client_gpus)
    # a reduced cohort replies with one partial sum whatever its size: no cap from the model
    reducing = cohorts_reduce(cfg)
    model_bytes = 0 if reducing else initial_arrays(cfg).count_bytes()
    actors = actor_pool_size(cpus, gpus)
    if not cfg.engine.ray_address:
        torch.set_num_threads(server_threads(actors, cpus))
    cfg = with_clients_per_node(cfg, actors, model_bytes)
    if reducing and cfg.engine.clients_per_node > 1:
        log.info(
            "engine.reduce_cohorts: each node checks its %d clients' replies and sends one "
            "partial sum",
            cfg.engine.clients_per_node,
        )
    elif cfg.engine.clients_per_node > 1:
        log.info(
            "engine.reduce_cohorts: each node sends its %d clients' updates one by one (%s)",
            cfg.engine.clients_per_node,
            cohorts_unreduced_because(cfg),
        )
    # after ray.init, which sets its own SIGTERM handler (a sys.exit that Flower's threads outlive)
    interrupts.install()
    with client_state_folder(cfg, run_dir) as cfg:
        flower_run_simulation(
            server_app=make_server_app(cfg, run_dir, sweep),
            client_app=client_app,
            num_supernodes=expected_nodes(cfg.num_clients, cfg.engine.clients_per_node),
            backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": gpus}},
        )


def _drop_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    """fedsparse chooses the in-process engine on purpose; Flower's notice about it is noise."""
    return "`run_simulation` function is deprecated" not in record.getMessage()


@hydra.main(config_path="pkg://conf", config_name="config", version_base=None)
def hydra_main(cfg: DictConfig) -> None:
    """Validate the composed config and load the data, then run; a config error, missing data
    or a run folder that cannot be used exits with a one-line message before Ray starts."""
    flwr_log = logging.getLogger("flwr")
    flwr_log.propagate = False  # flwr logs once, through its own handler
    flwr_log.addFilter(_drop_run_simulation_deprecation)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    interrupts.RUN.run_dir = run_dir
    try:
        if cfg.resume:
            cfg = resumed_config(cfg, run_dir, hydra_cfg.overrides.task)
        validate(cfg)
        check_data(cfg)
        checkpoint = starting_point(run_dir, cfg)
    except (ConfigError, CheckpointError, DataNotFoundError) as err:
        refuse(run_dir, err)
    if checkpoint is not None and checkpoint.round == cfg.num_rounds:
        print(f"[fedsparse] {run_dir} has finished all {cfg.num_rounds} rounds: nothing to resume")
        return
    try:
        run_simulation(cfg, run_dir, sweep)
    except ConnectionError as err:
        refuse(run_dir, err)


def refuse(run_dir: Path, err: Exception) -> NoReturn:
    """Exit with ``err`` in one line, removing the folder Hydra made if the run never started."""
    if interrupts.RUN.existed is not None:  # a single run (a sweep's folders are the sweep's)
        remove_unstarted(run_dir, interrupts.RUN.existed)
    raise SystemExit(f"fedsparse: {err}") from None
