"""The override lists several test files share, and the shipped strategies; the in-process run
that returns its metric rows is ``server_app.testing.run_and_read`` (re-exported here)."""

from __future__ import annotations

from pathlib import Path

import strategies
from server_app.testing import run_and_read

__all__ = [
    "CONF",
    "FEDPM_TOY_BASE",
    "REDUCING_STRATEGIES",
    "SHIPPED_STRATEGIES",
    "SMALL_RUN",
    "TOY_BASE",
    "run_and_read",
]

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
