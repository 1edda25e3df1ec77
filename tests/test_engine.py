"""Cohort sizing and engine settings: ``clients_per_node=auto`` and results independent of K."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server_app.engine import (
    MESSAGE_BUDGET_BYTES,
    MESSAGES_PER_ACTOR,
    WORKER_NICENESS,
    auto_clients_per_node,
    server_threads,
    start_ray,
    with_clients_per_node,
)
from server_app.experiment import run_experiment, starting_point
from server_app.inprocess import InProcessGrid
from server_app.settings import ConfigError, client_job, compose_config, validate
from strategies.core.cohort import expected_nodes
from tests.runs import run_and_read

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("num_clients", "actors", "expected"),
    [(1000, 2, 125), (100, 2, 13), (10, 2, 2), (3, 2, 1), (1000, 16, 16), (5, 0, 2)],
)
def test_auto_gives_each_actor_a_few_messages(num_clients: int, actors: int, expected: int) -> None:
    k = auto_clients_per_node(num_clients, actors)
    assert k == expected
    assert expected_nodes(num_clients, k) <= max(actors, 1) * MESSAGES_PER_ACTOR


def test_auto_resolves_to_an_integer_and_one_without_actor_pool() -> None:
    cfg = compose_config(["num_clients=100", "engine.clients_per_node=auto"])
    validate(cfg)
    assert with_clients_per_node(cfg, actors=2).engine.clients_per_node == 13
    assert with_clients_per_node(cfg, actors=None).engine.clients_per_node == 1
    assert cfg.engine.clients_per_node == "auto"  # the caller's config is left as it was
    assert client_job(cfg).clients_per_node == 1


def test_auto_keeps_a_cohort_reply_within_the_message_budget() -> None:
    model_bytes = 45 << 20  # a ResNet-18's dense update
    k = auto_clients_per_node(1000, 2, model_bytes)
    assert k == MESSAGE_BUDGET_BYTES // model_bytes == 5
    assert auto_clients_per_node(1000, 2, 1 << 30) == 1  # a model over budget: one per node
    assert auto_clients_per_node(1000, 2, 1_700_000) == 125  # the small CNN is not capped


def test_explicit_clients_per_node_is_kept() -> None:
    cfg = compose_config(["engine.clients_per_node=7"])
    assert with_clients_per_node(cfg, actors=2) is cfg


def _ray_init_environment(monkeypatch: pytest.MonkeyPatch, ray_address: str | None) -> dict:
    """The environment ``start_ray`` hands to ``ray.init`` (which is not called for real)."""
    import ray

    seen: dict = {}
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # start_ray extends it
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(os.environ, init=kwargs))
    monkeypatch.setattr("server_app.engine._check_reachable", lambda address: None)
    start_ray(ray_address)
    return seen


def test_a_private_ray_starts_its_workers_at_nice_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    seen = _ray_init_environment(monkeypatch, None)
    assert seen["RAY_worker_niceness"] == WORKER_NICENESS == "0"
    assert seen["init"]["_system_config"]["enable_worker_prestart"] is False


def test_an_explicit_niceness_and_a_cluster_keep_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_worker_niceness", "15")
    assert _ray_init_environment(monkeypatch, None)["RAY_worker_niceness"] == "15"
    monkeypatch.delenv("RAY_worker_niceness")
    cluster = _ray_init_environment(monkeypatch, "127.0.0.1:6379")
    assert "RAY_worker_niceness" not in cluster
    assert "_system_config" not in cluster["init"]  # Ray refuses it when connecting


@pytest.mark.parametrize(
    ("actors", "client_cpus", "cores", "expected"), [(2, 1, 2, 1), (4, 1, 16, 12), (8, 2, 16, 1)]
)
def test_the_server_takes_the_cores_its_actors_leave(
    actors: int, client_cpus: int, cores: int, expected: int
) -> None:
    assert server_threads(actors, client_cpus, cores) == expected


def _without_wall_times(rows: list[dict]) -> list[dict]:
    """Metric rows without wall times (every key ending in ``_s``)."""
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in rows]


STRATEGIES = sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cohorts_of_four_give_the_same_metrics_as_one_client_per_node(
    tmp_path: Path, strategy: str
) -> None:
    """Every strategy: hosting 4 clients per node changes the messages, not a single number."""
    runs = {}
    for k in (1, 4):
        rows = run_and_read(
            [
                f"strategy={strategy}",
                "dataset=digits",
                "partition=iid",
                "num_clients=8",
                "clients_per_round=6",
                "num_rounds=2",
                "plots=false",
                f"engine.clients_per_node={k}",
            ],
            tmp_path / f"k{k}",
        )
        runs[k] = _without_wall_times(rows)
    assert [r["accuracy"] for r in runs[4]] == [r["accuracy"] for r in runs[1]]
    assert runs[4] == runs[1]


def test_resume_may_change_the_engine_but_not_the_experiment(tmp_path: Path) -> None:
    base = ["dataset=digits", "num_clients=4", "clients_per_round=4", "num_rounds=1", "plots=false"]
    run_experiment(InProcessGrid(4), compose_config(base), tmp_path)
    moved = compose_config(
        [*base, "resume=true", "engine.clients_per_node=2", "engine.client_cpus=2"]
    )
    assert starting_point(tmp_path, moved).round == 1
    with pytest.raises(ConfigError, match=r"\['lr'\]"):
        starting_point(tmp_path, compose_config([*base, "resume=true", "lr=0.2"]))


def test_a_lips_schedule_over_num_rounds_cannot_be_stretched_on_resume(tmp_path: Path) -> None:
    """With horizon=null LIPS's densities end at num_rounds: extending the run would switch
    schedules mid-run (round 3 got 0.467 instead of a fresh 6-round run's 0.333). A fixed
    horizon, or FedAvg, may be extended."""
    base = ["dataset=digits", "num_clients=2", "num_rounds=1", "plots=false"]
    lips = [*base, "strategy=lips", "strategy.period=1"]
    run_experiment(InProcessGrid(2), compose_config(lips), tmp_path / "lips")
    with pytest.raises(ConfigError, match=r"num_rounds=6, but strategy=lips.*num_rounds=1"):
        starting_point(tmp_path / "lips", compose_config([*lips, "resume=true", "num_rounds=6"]))
    assert starting_point(tmp_path / "lips", compose_config([*lips, "resume=true"])).round == 1
    fixed = [*lips, "strategy.horizon=6"]
    run_experiment(InProcessGrid(2), compose_config(fixed), tmp_path / "fixed")
    resumed = compose_config([*fixed, "resume=true", "num_rounds=6"])
    assert starting_point(tmp_path / "fixed", resumed).round == 1
    run_experiment(InProcessGrid(2), compose_config(base), tmp_path / "fedavg")
    extended = compose_config([*base, "resume=true", "num_rounds=6"])
    assert starting_point(tmp_path / "fedavg", extended).round == 1
