"""Small experiments the tests share: the override lists several files run, and one in-process
run that returns its metric rows (no Ray, no subprocess: the fast tier)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import strategies
from server_app.engine import AUTO
from server_app.experiment import run_experiment
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics
from server_app.settings import compose_config, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
SHIPPED_STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
"""Every algorithm the project ships (one yaml each), not those a test registers for itself."""
REDUCING_STRATEGIES = [s for s in SHIPPED_STRATEGIES if strategies.get_algorithm(s).cohort_sum]
"""The shipped algorithms whose nodes can reduce a cohort (a cohort sum they decode with)."""

# digits, 5 clients, all of them every round, 2 local epochs: test_end_to_end's CLI runs and
# test_faults' in-process runs
SMALL_RUN = [
    "dataset=digits",
    "num_clients=5",
    "clients_per_round=5",
    "local_epochs=2",
    "partition.min_size=20",
]
# digits, 4 clients, all of them every round, 1 local epoch, no federated evaluation: the toy
# runs of test_tracking, test_fedpm and test_fedpm_links (each adds its rounds and settings)
TOY_BASE = [
    "dataset=digits",
    "num_clients=4",
    "clients_per_round=4",
    "local_epochs=1",
    "federated_eval=false",
]
FEDPM_TOY_BASE = ["strategy=fedpm", *TOY_BASE, "plots=false"]


def run_and_read(overrides: Iterable[str], run_dir: Path) -> list[dict]:
    """Compose and validate ``overrides``, run the experiment in-process (an
    :class:`InProcessGrid` of ceil(num_clients / clients_per_node) nodes, one per client when
    ``engine.clients_per_node=auto``, as ``run_experiment`` resolves it) into ``run_dir``, and
    return its ``metrics.jsonl`` rows."""
    cfg = compose_config(list(overrides))
    validate(cfg)
    per_node = cfg.engine.clients_per_node
    nodes = math.ceil(cfg.num_clients / (1 if per_node == AUTO else int(per_node)))
    run_experiment(InProcessGrid(nodes), cfg, run_dir)
    return read_metrics(run_dir)
