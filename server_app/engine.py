"""The simulation engine's Ray side: which cluster, how many actors, how many clients per node.

A local Ray instance is private to the run (``address="local"``: never an unrelated cluster that
happens to run on the machine); ``engine.ray_address`` attaches to an existing cluster instead,
so a study that outgrows one box adds Ray workers rather than changing code.
``engine.clients_per_node=auto`` sizes cohorts from the actor pool: every actor gets a few
messages per round (enough to balance uneven clients), and no more (each message costs), as
long as one message's client updates stay within ``MESSAGE_BUDGET_BYTES``.
``engine.client_state_dir=auto`` keeps the clients' array state in the run directory on a local
Ray, so Flower does not ship it to the actors and back with every message.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

AUTO = "auto"
MESSAGES_PER_ACTOR = 4
MESSAGE_BUDGET_BYTES = 256 << 20  # dense client updates one cohort reply may carry under auto
CONNECT_TIMEOUT_S = 5.0
CLIENT_STATE_DIR = "client-state"
WORKER_NICENESS = "0"  # Ray's own default is 15; see start_ray
# A private Ray starts no idle workers ahead of the actors: Ray prestarts one per CPU, each
# importing Ray and then waiting unused (1.4 CPU-s of a 2-core box's start, measured)
LOCAL_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def start_ray(ray_address: str | None) -> None:
    """Start a private local Ray instance, or connect to the cluster at ``ray_address``.

    Actors import fedsparse from this interpreter's ``sys.path`` (as Flower's own start does).
    A private local Ray starts its workers at nice 0 instead of Ray's default 15: the actors do
    all the clients' work, so at nice 15 a run on a shared box yields to every other process
    (``RAY_worker_niceness`` in the environment still wins; a cluster keeps its own setting),
    and with no idle workers started ahead of the actors (:data:`LOCAL_RAY_CONFIG`).
    """
    import ray

    if ray_address:
        _check_reachable(ray_address)
    else:
        os.environ.setdefault("RAY_worker_niceness", WORKER_NICENESS)
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(
        address=ray_address or "local",
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        **({} if ray_address else {"_system_config": LOCAL_RAY_CONFIG}),
    )


def _check_reachable(ray_address: str) -> None:
    """Fail in seconds, with what to do, when nothing listens at a ``host:port`` address
    (Ray itself retries for minutes). Other forms (``auto``, ``ray://…``) go to Ray as given."""
    host, sep, port = ray_address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectionError(
            f"engine.ray_address={ray_address!r}: no Ray cluster answers there ({err}); start "
            "one with `ray start --head --port=6379` or drop engine.ray_address for a local run"
        ) from None


def actor_pool_size(client_cpus: int, client_gpus: float) -> int:
    """Actors Flower will start on the connected cluster for these per-client resources."""
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    return pool_size_from_resources({"num_cpus": client_cpus, "num_gpus": client_gpus})


def server_threads(actors: int, client_cpus: int, cores: int | None = None) -> int:
    """Torch threads for the server process on a private local Ray: the cores its actors leave
    free, at least one. The central evaluation runs while the actors train; a second thread on
    a core an actor holds only spins (on the 2-core box a 2-thread evaluation spent 2.6x the
    CPU-seconds of a 1-thread one beside busy processes, and took longer)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores - actors * client_cpus)


def auto_clients_per_node(num_clients: int, actors: int, model_bytes: int = 0) -> int:
    """Cohort size giving each of ``actors`` about ``MESSAGES_PER_ACTOR`` messages per round
    when every client is sampled, capped so that a reply of dense updates of ``model_bytes``
    each stays within ``MESSAGE_BUDGET_BYTES``."""
    size = math.ceil(num_clients / (max(actors, 1) * MESSAGES_PER_ACTOR))
    if model_bytes > 0:
        size = min(size, MESSAGE_BUDGET_BYTES // model_bytes)
    return max(1, size)


def with_clients_per_node(cfg: DictConfig, actors: int | None, model_bytes: int = 0) -> DictConfig:
    """``cfg`` with ``engine.clients_per_node`` resolved to an integer.

    ``auto`` becomes :func:`auto_clients_per_node` for ``actors`` Ray actors and a model of
    ``model_bytes``, or 1 when there is no actor pool (deployment: one SuperNode per client).
    """
    if cfg.engine.clients_per_node != AUTO:
        return cfg
    resolved = 1 if actors is None else auto_clients_per_node(cfg.num_clients, actors, model_bytes)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.engine.clients_per_node = resolved
    if actors is not None:
        log.info(
            "engine.clients_per_node=auto: %d client(s) per node (%d actors x %d messages)",
            resolved,
            actors,
            MESSAGES_PER_ACTOR,
        )
    return cfg


def auto_state_folder(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The folder ``engine.client_state_dir=auto`` keeps client state in for a Ray simulation
    (None: the setting is not ``auto``, or the state stays in Flower's context)."""
    if cfg.engine.get("client_state_dir") != AUTO or cfg.engine.ray_address:
        return None
    return run_dir / CLIENT_STATE_DIR


@contextmanager
def client_state_folder(cfg: DictConfig, run_dir: Path) -> Iterator[DictConfig]:
    """``cfg`` with ``engine.client_state_dir=auto`` resolved for a Ray simulation.

    On a private local Ray every actor shares this machine's disk: ``<run_dir>/client-state``,
    emptied when a run starts afresh, kept when the run stops early (an interrupt, a crash: a
    resumed run's clients continue from the state its checkpoint names, see
    ``strategies.core.client_state``) and removed when the run ends normally, so finished runs
    leave no client-sized files behind. On a Ray cluster workers on other machines would not
    see it, so client state stays in Flower's context (null). Any other value is used as given.
    """
    if cfg.engine.get("client_state_dir") != AUTO:
        yield cfg
        return
    folder = auto_state_folder(cfg, run_dir)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    resolved.engine.client_state_dir = None if folder is None else str(folder)
    log.info("engine.client_state_dir=auto: client state in %s", folder or "Flower's context")
    if folder is None:
        yield resolved
        return
    if not cfg.resume:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    yield resolved
    shutil.rmtree(folder, ignore_errors=True)  # not reached when the run raised or was stopped
