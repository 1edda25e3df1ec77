"""Every strategy's numbers for a short fixed-seed run, recorded to check a refactor against.

    python benchmarks/reference_runs.py --write      # record (before a refactor)
    python benchmarks/reference_runs.py              # check: the same numbers, or the differences

Each registered strategy, and the variants in ``VARIANTS``, runs 3 rounds in process
(digits, 6 clients, 4 a round, Dirichlet, federated evaluation on, cohorts of 2) from seed 0;
every metric of every round except the wall-clock ones is kept, floats as their exact repr.
Same machine and library versions as the recording: the check asks for identity, not closeness
(another CPU may round differently).
Writes or reads ``benchmarks/results/reference_metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import strategies  # noqa: E402
from server_app.experiment import run_experiment  # noqa: E402
from server_app.inprocess import InProcessGrid  # noqa: E402
from server_app.results import read_metrics, without_wall_clock  # noqa: E402
from server_app.settings import compose_config, validate  # noqa: E402

RUN = [
    "dataset=digits",
    "num_clients=6",
    "clients_per_round=4",
    "num_rounds=3",
    "partition.min_size=20",
    "engine.clients_per_node=2",
    "plots=false",
    "seed=0",
]
VARIANTS = {  # settings that take other code paths than a strategy's defaults
    "fedpm+klms": ["strategy=fedpm", "strategy.uplink_coding=klms"],
    "fedpm+plain": [
        "strategy=fedpm",
        "strategy.downlink_coding=plain",
        "strategy.uplink_coding=packed",
    ],
    "lbgm+topk": ["strategy=lbgm", "strategy.compressor=topk", "strategy.delta=0.9"],
    "lbgm+model": ["strategy=lbgm", "strategy.granularity=model", "strategy.delta=0.9"],
    "lips+period2": ["strategy=lips", "strategy.period=2", "bn_policy=local"],
    "fedavg+weightcap": ["strategy=fedavg", "max_client_weight=5", "engine.reduce_cohorts=false"],
    "topk+momentum": ["strategy=topk", "strategy.server_momentum=0.9", "local_steps=2"],
}
REFERENCE = REPO / "benchmarks" / "results" / "reference_metrics.json"


def numbers(overrides: list[str]) -> list[dict]:
    """The metrics rows of a short run with ``overrides``, wall-clock fields dropped."""
    cfg = compose_config([*overrides, *RUN])
    validate(cfg)
    with tempfile.TemporaryDirectory() as folder:
        nodes = -(-cfg.num_clients // cfg.engine.clients_per_node)
        run_experiment(InProcessGrid(nodes), cfg, Path(folder) / "run")
        rows = read_metrics(Path(folder) / "run")
    return [without_wall_clock(row) for row in rows]


def differences(expected: object, found: object, path: str = "") -> list[str]:
    """Where two metric trees differ, as ``path: expected -> found``."""
    if isinstance(expected, dict) and isinstance(found, dict):
        keys = sorted(expected.keys() | found.keys())
        return [d for k in keys for d in differences(expected.get(k), found.get(k), f"{path}.{k}")]
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        return [
            d
            for i, (a, b) in enumerate(zip(expected, found, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if expected == found else [f"{path}: {expected!r} -> {found!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record instead of checking")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {name: [f"strategy={name}"] for name in strategies.available_algorithms()}
    found = {name: numbers(overrides) for name, overrides in {**runs, **VARIANTS}.items()}
    if args.write:
        REFERENCE.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(found)} strategies in {REFERENCE}")
        return
    expected = json.loads(REFERENCE.read_text())
    problems = differences(expected, json.loads(json.dumps(found)))
    for line in problems[:40]:
        print(line)
    print(f"{len(problems)} differences over {len(found)} runs")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
