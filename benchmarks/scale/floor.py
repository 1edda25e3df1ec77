"""The compute floor: a strategy's client work and server arithmetic in plain PyTorch.

    python -m benchmarks.scale.floor --clients 100 --rounds 3 --processes 2
    python -m benchmarks.scale.floor --clients 100 --rounds 3 --processes 2 --strategy fedpm
    python -m benchmarks.scale.floor --clients 300 --rounds 3 --processes 2 \\
        --model resnet18 --dataset cifar10_synthetic --local-steps 1

Each process runs one torch thread (as one Ray actor does) and trains a fixed share of the
clients (client c in process c mod N) one after another, so what a client keeps between rounds
(top-k's error feedback, LBGM's look-back gradients) stays in its process. The parent does the
server's arithmetic and evaluates the new global model centrally, like a fedsparse round. The
data, model and local round are ``work.py``'s (``--model``, ``--dataset``, ``--local-steps``
select others); a strategy's settings are the defaults of ``conf/strategy/<name>.yaml``.

``--strategy fedavg`` (the default): the processes sum their clients' example-weighted trained
states, the parent adds the sums and divides. The other strategies run the same client
algorithm as fedsparse, with the project's own functions (``strategy_floors.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import nn

from benchmarks.scale.work import DATASET, MODEL, Work

CONF = Path(__file__).resolve().parents[2] / "conf" / "strategy"
STRATEGIES = ("fedavg", "lips", "topk", "signsgd", "lbgm", "fedpm")
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Setup:
    """What a floor runs: the work, the strategy with its settings, and the number of rounds
    (LIPS's horizon when its ``horizon`` is null, as in fedsparse)."""

    work: Work
    strategy: str = "fedavg"
    rounds: int = 3
    params: dict[str, Any] = field(default_factory=dict)


def strategy_params(strategy: str) -> dict[str, Any]:
    """The strategy's settings as fedsparse's config defaults them."""
    params = yaml.safe_load((CONF / f"{strategy}.yaml").read_text())
    params.pop("name")
    return params


def _init_worker() -> None:
    torch.set_num_threads(1)


def train_share(
    setup: Setup,
    client_ids: list[int],
    state: State,
    server_round: int,
    prepare: Callable[[Setup, nn.Module, int, int], None] | None = None,
) -> tuple[State, int]:
    """Example-weighted sum of the trained states of ``client_ids``, and their example count;
    ``prepare(setup, model, client_id, server_round)`` changes each received model first."""
    model = setup.work.new_model()
    total: State = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
    examples = 0
    for client_id in client_ids:
        model.load_state_dict(state)
        if prepare is not None:
            prepare(setup, model, client_id, server_round)
        n = setup.work.train_client(model, client_id, server_round)
        for key, value in model.state_dict().items():
            total[key] += value.double() * n
        examples += n
    return total, examples


class Floor(Protocol):
    """A strategy's round: ``share`` (a module-level function, so it pickles) runs in the worker
    processes on ``payload()``; the parent ``fold``s each share's result in, then ``step``s."""

    model: nn.Module

    @staticmethod
    def share(setup: Setup, client_ids: list[int], payload: Any, server_round: int) -> Any: ...

    def payload(self) -> Any:
        """What the server sends every client this round."""

    def fold(self, result: Any) -> None:
        """Take in one share's result."""

    def step(self, server_round: int) -> None:
        """The new global model from the results folded in."""


class FedAvgFloor:
    """FedAvg: the processes' weighted sums added up and divided by the examples."""

    share = staticmethod(train_share)

    def __init__(self, setup: Setup) -> None:
        self.model = setup.work.new_model()
        self.results: list[tuple[State, int]] = []

    def payload(self) -> State:
        return self.model.state_dict()

    def fold(self, result: tuple[State, int]) -> None:
        self.results.append(result)

    def step(self, server_round: int) -> None:
        examples = sum(n for _, n in self.results)
        self.model.load_state_dict(
            {
                key: (sum(t[key] for t, _ in self.results) / examples).to(value.dtype)
                for key, value in self.model.state_dict().items()
            }
        )
        self.results = []


def floor_of(setup: Setup) -> Floor:
    """The parent's half of the strategy's floor."""
    if setup.strategy == "fedavg":
        return FedAvgFloor(setup)
    # Imported only here: the strategies' modules import Flower, the FedAvg floor stays without.
    from benchmarks.scale import strategy_floors

    return strategy_floors.FLOORS[setup.strategy](setup)


def run(setup: Setup, processes: int) -> None:
    """``setup.rounds`` rounds over ``processes`` worker processes, one line per round."""
    floor = floor_of(setup)
    clients = list(range(setup.work.num_clients))
    shares = [clients[p::processes] for p in range(processes)]
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        # One single-process pool per share: a client always trains in the same process.
        pools = [stack.enter_context(context.Pool(1, _init_worker)) for _ in shares]
        for server_round in range(1, setup.rounds + 1):
            payload = floor.payload()
            pending = [
                pool.apply_async(floor.share, (setup, share, payload, server_round))
                for pool, share in zip(pools, shares, strict=True)
            ]
            for result in pending:
                floor.fold(result.get())
            floor.step(server_round)
            accuracy = setup.work.central_accuracy(floor.model)
            print(f"[floor x{processes}] round {server_round} acc {accuracy:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--strategy", choices=STRATEGIES, default="fedavg")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--dataset", default=DATASET)
    parser.add_argument(
        "--local-steps", type=int, default=None, help="optimizer steps per round (default: 1 epoch)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy setting other than conf/'s default, e.g. --set uplink_coding=klms",
    )
    args = parser.parse_args()
    _init_worker()
    work = Work(args.clients, args.model, args.dataset, args.local_steps)
    params = strategy_params(args.strategy)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in params:
            parser.error(f"--set {item}: {args.strategy} has no setting {key!r}")
        params[key] = yaml.safe_load(value)
    run(Setup(work, args.strategy, args.rounds, params), args.processes)


if __name__ == "__main__":
    main()
