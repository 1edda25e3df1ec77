"""Turns the composed Hydra config into checked settings, a client job and a strategy.

Both engines use it: the simulation CLI composes conf/ through ``@hydra.main``; a deployed
ServerApp composes the same tree from the overrides carried in the run config.
"""

from __future__ import annotations

import difflib
import logging
import shlex
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import models
import strategies
from client_app.batchnorm import BN_POLICIES, batchnorm_keys
from client_app.faults import CORRUPT_KINDS
from data.datasets import DATASETS, INPUT_SHAPES
from data.federated import LOCAL_TESTS, client_partition, dataset_info
from data.partition import PARTITIONS
from server_app import tracking
from server_app.engine import AUTO, with_clients_per_node
from strategies.core.cohort import ClientDirectory
from strategies.core.job import FULL_BATCH, ClientJob
from strategies.core.strategy import FedSparseStrategy, reduces_cohorts, unreduced_because

DEVICES = ("auto", "cpu", "cuda")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


def _check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], requirement: str) -> None:
    value = OmegaConf.select(cfg, key)
    try:
        valid = ok(value)
    except TypeError:
        valid = False
    if not valid:
        raise ConfigError(f"invalid config: {key}={value!r}: {requirement}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """Fail before anything starts if a value cannot work; the error names the key. The
    strategy's own parameters are its Params dataclass's to check (built here once)."""
    _check_training(cfg)
    _check_faults_and_outputs(cfg)
    _check_choices(cfg)
    _check_partition(cfg)
    _check_engine(cfg)
    build_strategy(with_clients_per_node(cfg, actors=None), ClientDirectory(cfg.num_clients, 1))


def _check_training(cfg: DictConfig) -> None:
    """The run-level numbers: rounds, clients, local training, the weight cap."""
    _check(cfg, "seed", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0")
    _check(cfg, "num_rounds", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
    _check(
        cfg,
        "num_clients",
        lambda v: _is_int(v) and v >= 1,
        "must be an integer >= 1 (num_clients=auto, the connected SuperNodes, is for "
        "fedsparse-deploy: a simulation starts that many nodes itself)",
    )
    _check(
        cfg,
        "clients_per_round",
        lambda v: _is_int(v) and 1 <= v <= cfg.num_clients,
        f"must be an integer between 1 and num_clients ({cfg.num_clients})",
    )
    _check(
        cfg,
        "min_replies",
        lambda v: _is_int(v) and 1 <= v <= cfg.clients_per_round,
        f"must be an integer between 1 and clients_per_round ({cfg.clients_per_round})",
    )
    _check(cfg, "local_epochs", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
    _check(
        cfg,
        "local_steps",
        lambda v: v is None or (_is_int(v) and v >= 1),
        "must be null (train local_epochs epochs) or an integer >= 1 (that many optimizer steps)",
    )
    _check(
        cfg,
        "batch_size",
        lambda v: v == FULL_BATCH or (_is_int(v) and v >= 1),
        f"must be an integer >= 1 or {FULL_BATCH} (one batch of the client's whole split)",
    )
    _check(cfg, "lr", lambda v: _is_number(v) and v > 0, "must be a number > 0")
    _check(cfg, "momentum", lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)")
    _check(cfg, "weight_decay", lambda v: _is_number(v) and v >= 0, "must be a number >= 0")
    _check(cfg, "local_test_fraction", lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)")
    _check(cfg, "round_timeout_s", lambda v: _is_number(v) and v > 0, "must be a number > 0")
    _check(cfg, "bn_policy", lambda v: v in BN_POLICIES, f"choose one of: {', '.join(BN_POLICIES)}")
    _check(cfg, "monitor.ref_round", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
    _check(
        cfg,
        "eval_every",
        lambda v: _is_int(v) and v >= 1,
        "must be an integer >= 1: evaluate every N-th round and the last (1 = every round)",
    )
    _check(
        cfg,
        "max_client_weight",
        lambda v: v is None or (_is_number(v) and v >= 1),
        "must be null (no cap) or a multiple of the median num-examples >= 1, e.g. 20",
    )


def _check_faults_and_outputs(cfg: DictConfig) -> None:
    """Fault injection, device, tracking and the on/off switches."""
    for key in ("faults.error_rate", "faults.corrupt_rate", "faults.slow_rate"):
        _check(cfg, key, lambda v: _is_number(v) and 0 <= v <= 1, "must be a rate in [0, 1]")
    _check(cfg, "faults.slow_s", lambda v: _is_number(v) and v >= 0, "must be seconds >= 0")
    _check(
        cfg,
        "faults.corrupt_kind",
        lambda v: v in CORRUPT_KINDS,
        f"choose one of: {', '.join(CORRUPT_KINDS)}",
    )
    _check(cfg, "device", lambda v: v in DEVICES, f"choose one of: {', '.join(DEVICES)}")
    _check(
        cfg,
        "tracking",
        tracking.is_valid,
        f"choose {tracking.NONE}, one of {', '.join(tracking.BACKENDS)}, or a list of them, "
        "e.g. tracking=[tensorboard,mlflow]",
    )
    _check(
        cfg,
        "tracking_dir",
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        "must be null (the sweep folder of a --multirun, else the run folder) or a folder path",
    )
    for backend in tracking.backend_names(cfg.tracking):
        install = tracking.missing_extra(backend)
        if install is not None:
            raise ConfigError(
                f"invalid config: tracking={backend}: its package is not installed; run {install}"
            )
    for key in ("resume", "federated_eval", "central_eval_overlap", "plots", "dataset.download"):
        _check(cfg, key, lambda v: isinstance(v, bool), "must be true or false")
    _check(
        cfg,
        "deployment.node_grace_s",
        lambda v: _is_number(v) and v >= 0,
        "must be seconds >= 0",
    )
    _check(cfg, "deployment.node_wait_s", lambda v: _is_number(v) and v > 0, "must be seconds > 0")


def _check_choices(cfg: DictConfig) -> None:
    """The group choices (model, dataset, partition, strategy) and what they make idle."""
    _check(
        cfg,
        "model.name",
        lambda v: v in models.configurable_models(),
        f"choose one of: {', '.join(models.configurable_models())}",
    )
    _check(cfg, "dataset.name", lambda v: v in DATASETS, f"choose one of: {', '.join(DATASETS)}")
    _check(
        cfg, "partition.name", lambda v: v in PARTITIONS, f"choose one of: {', '.join(PARTITIONS)}"
    )
    _check_known_keys(cfg)
    _check(
        cfg,
        "strategy.name",
        lambda v: v in strategies.available_algorithms(),
        f"choose one of: {', '.join(strategies.available_algorithms())}",
    )
    model = _model_for_images(cfg.model.name, cfg.dataset.name)
    if cfg.bn_policy == "local" and not batchnorm_keys(model):
        log.warning(
            "bn_policy=local changes nothing: model=%s has no BatchNorm layer", cfg.model.name
        )
    if cfg.local_steps is not None and cfg.local_epochs != 1:
        log.warning(
            "local_epochs=%s changes nothing: local_steps=%s sets the optimizer steps per round",
            cfg.local_epochs,
            cfg.local_steps,
        )


def _check_partition(cfg: DictConfig) -> None:
    """The partition's own keys."""
    if cfg.partition.name in ("dirichlet", "dirichlet_draw"):
        _check(cfg, "partition.alpha", lambda v: _is_number(v) and v > 0, "must be a number > 0")
    if cfg.partition.name == "dirichlet":
        _check(
            cfg, "partition.min_size", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"
        )
    if cfg.partition.name == "dirichlet_draw":
        _check(
            cfg,
            "partition.samples_per_client",
            lambda v: _is_int(v) and v >= 1,
            "must be an integer >= 1",
        )
    _check(
        cfg,
        "partition.local_test",
        lambda v: v in LOCAL_TESTS,
        f"choose one of: {', '.join(LOCAL_TESTS)}",
    )
    _check(
        cfg,
        "partition.local_test_size",
        lambda v: _is_int(v) and v >= 1,
        "must be an integer >= 1",
    )
    if cfg.partition.name == "pathological":
        _check(
            cfg,
            "partition.classes_per_client",
            lambda v: _is_int(v) and v >= 1,
            "must be an integer >= 1",
        )


def _check_engine(cfg: DictConfig) -> None:
    """The simulation engine and the GPU."""
    _check(cfg, "engine.client_cpus", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
    _check(
        cfg,
        "engine.client_gpus",
        lambda v: _is_number(v) and 0 <= v <= 1,
        "must be a GPU fraction in [0, 1], e.g. 0.25 lets four clients share one GPU",
    )
    _check(
        cfg,
        "engine.clients_per_node",
        lambda v: v == AUTO or (_is_int(v) and v >= 1),
        f"must be an integer >= 1 or {AUTO!r}",
    )
    if "reduce_cohorts" in cfg.engine:
        _check(cfg, "engine.reduce_cohorts", lambda v: isinstance(v, bool), "must be true or false")
    _check(
        cfg,
        "engine.ray_address",
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        "must be null (a private local Ray) or a cluster address such as 127.0.0.1:6379",
    )
    _check(
        cfg,
        "engine.client_state_dir",
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        f"must be null (state in Flower's context), {AUTO!r}, or a folder path",
    )
    if cfg.engine.client_gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(
            f"invalid config: engine.client_gpus={cfg.engine.client_gpus!r}: torch sees no GPU on "
            "this machine; set engine.client_gpus=0"
        )
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "invalid config: device='cuda': torch sees no GPU; use device=auto or cpu"
        )


OWN_KEY_CHECKS = ("strategy", "hydra")  # the strategy names its unknown parameters itself


def _paths(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, DictConfig):
            yield from _paths(value, f"{path}.")


@cache
def _known_keys(partition: str) -> frozenset[str]:
    """Every key conf/ defines with this partition (the one group whose options differ in keys;
    the strategy group checks its own)."""
    return frozenset(_paths(compose_config([f"partition={partition}"])))


def _check_known_keys(cfg: DictConfig) -> None:
    """A key conf/ does not define (``+num_round=5``, ``+partition.alpha`` under iid) would be
    silently ignored: name it, with the nearest known keys."""
    known = _known_keys(str(cfg.partition.name))
    for path in _paths(cfg):
        if path in known or path.split(".")[0] in OWN_KEY_CHECKS:
            continue
        near = difflib.get_close_matches(path, sorted(known), n=3)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        where = f" of partition={cfg.partition.name}" if path.startswith("partition.") else ""
        raise ConfigError(
            f"invalid config: unknown key {path}{where}; {hint}`fedsparse --cfg job` prints "
            "every key"
        )


def check_data(cfg: DictConfig) -> None:
    """Load the data set and split it among the clients as the run will (both are cached), so
    missing data (``DataNotFoundError``) or a split that cannot be made fails before Ray
    starts, not in every client."""
    spec = client_job(cfg).data_spec()
    dataset_info(spec)
    try:
        client_partition(spec)
    except ValueError as err:
        raise ConfigError(
            f"invalid config: partition={cfg.partition.name} of dataset={cfg.dataset.name} "
            f"cannot be made: {err}"
        ) from None


def _build_error(model: str, input_shape: tuple[int, int, int]) -> str | None:
    """Why ``model`` cannot be built for ``input_shape`` (None if it can). Built on the meta
    device, which allocates nothing and takes milliseconds."""
    try:
        with torch.device("meta"):
            models.build_model(model, input_shape, num_classes=10)
    except ValueError as err:
        return str(err)
    return None


def _model_for_images(model: str, dataset: str) -> torch.nn.Module:
    """``model`` built on the meta device for the data set's images; one too deep for them is
    a ConfigError here, before Ray starts."""
    shape = INPUT_SHAPES[dataset]
    try:
        with torch.device("meta"):
            return models.build_model(model, shape, num_classes=10)
    except ValueError as err:
        fitting = [m for m in models.configurable_models() if _build_error(m, shape) is None]
        raise ConfigError(
            f"invalid config: model={model} cannot take dataset={dataset} images "
            f"({'×'.join(map(str, shape))}): {err}; choose a model that can "
            f"({', '.join(fitting)}) or a data set with larger images"
        ) from None


def strategy_params(cfg: DictConfig) -> dict[str, Any]:
    """The strategy group's parameters (everything but its name)."""
    params = OmegaConf.to_container(cfg.strategy, resolve=True)
    params.pop("name")
    return params


def client_job(cfg: DictConfig) -> ClientJob:
    """The job every sampled client receives (round and client ids are set per message)."""
    cfg = with_clients_per_node(cfg, actors=None)
    partition = cfg.partition
    job = ClientJob(
        algorithm=cfg.strategy.name,
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        partition=partition.name,
        num_clients=cfg.num_clients,
        seed=cfg.seed,
        alpha=float(partition.get("alpha", 0.5)),
        min_size=int(partition.get("min_size", 10)),
        classes_per_client=int(partition.get("classes_per_client", 2)),
        samples_per_client=int(partition.get("samples_per_client", 100)),
        # without federated evaluation nothing reads a local test split: train on all the data
        local_test_fraction=float(cfg.local_test_fraction) if cfg.federated_eval else 0.0,
        local_test=str(partition.local_test),
        local_test_size=int(partition.local_test_size),
        dataset_root=cfg.dataset.root or "",
        download=bool(cfg.dataset.download),
        local_epochs=cfg.local_epochs,
        local_steps=cfg.local_steps,
        batch_size=cfg.batch_size,
        lr=float(cfg.lr),
        momentum=float(cfg.momentum),
        weight_decay=float(cfg.weight_decay),
        device=cfg.device,
        bn_policy=cfg.bn_policy,
        fault_error_rate=float(cfg.faults.error_rate),
        fault_corrupt_rate=float(cfg.faults.corrupt_rate),
        fault_corrupt_kind=cfg.faults.corrupt_kind,
        fault_slow_rate=float(cfg.faults.slow_rate),
        fault_slow_s=float(cfg.faults.slow_s),
        threads=cfg.engine.client_cpus,
        clients_per_node=cfg.engine.clients_per_node,
        reduce_cohorts=bool(cfg.engine.get("reduce_cohorts", False)),
        state_dir=client_state_dir(cfg),
        params={k: v for k, v in strategy_params(cfg).items() if v is not None},
    )
    node_sum = strategies.get_algorithm(cfg.strategy.name).cohort_sum
    job = replace(job, reduce_cohorts=reduces_cohorts(job, cfg.max_client_weight, node_sum))
    return job.described() if cfg.engine.get("describe_data", False) else job


def _cohort_job(cfg: DictConfig) -> ClientJob:
    """``cfg``'s client job on a node hosting two clients, as asked to reduce or not."""
    return replace(
        client_job(cfg),
        clients_per_node=2,
        reduce_cohorts=bool(cfg.engine.get("reduce_cohorts", False)),
    )


def cohorts_reduce(cfg: DictConfig) -> bool:
    """Whether nodes hosting more than one client reduce their cohorts under ``cfg``."""
    node_sum = strategies.get_algorithm(cfg.strategy.name).cohort_sum
    return reduces_cohorts(_cohort_job(cfg), cfg.max_client_weight, node_sum)


def cohorts_unreduced_because(cfg: DictConfig) -> str:
    """Why nodes hosting several clients send every update under ``cfg`` ("" when they
    reduce)."""
    server = strategies.get_algorithm(cfg.strategy.name).server
    return unreduced_because(_cohort_job(cfg), cfg.max_client_weight, server) or ""


def client_state_dir(cfg: DictConfig) -> str:
    """The folder clients keep array state in ("" = Flower's context.state); ``auto`` is "" here,
    the simulation launcher resolves it first (see ``server_app.engine.client_state_folder``)."""
    value = cfg.engine.get("client_state_dir")
    return "" if value in (None, AUTO) else str(value)


def build_strategy(cfg: DictConfig, directory: ClientDirectory) -> FedSparseStrategy:
    """Instantiate the configured strategy; unknown parameters become a ConfigError."""
    algorithm = strategies.get_algorithm(cfg.strategy.name)
    try:
        return algorithm.server(
            job=client_job(cfg),
            directory=directory,
            clients_per_round=cfg.clients_per_round,
            num_rounds=cfg.num_rounds,
            min_replies=cfg.min_replies,
            max_client_weight=cfg.max_client_weight,
            **strategy_params(cfg),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid config for strategy={cfg.strategy.name}: {err}") from err


def compose_config(overrides: str | list[str]) -> DictConfig:
    """Compose conf/ with Hydra overrides (a list, or one shell-quoted string)."""
    items = shlex.split(overrides) if isinstance(overrides, str) else list(overrides)
    if GlobalHydra.instance().is_initialized():  # inside the `fedsparse` Hydra app: conf/ is set
        return compose(config_name="config", overrides=items)
    with initialize_config_module(config_module="conf", version_base=None):
        return compose(config_name="config", overrides=items)
