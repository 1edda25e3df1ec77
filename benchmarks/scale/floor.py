"""The compute floor: a strategy's client work and server arithmetic in plain PyTorch.

    python -m benchmarks.scale.floor --clients 100 --rounds 3 --processes 2
    python -m benchmarks.scale.floor --clients 100 --rounds 3 --processes 2 --strategy fedpm
    python -m benchmarks.scale.floor --clients 300 --rounds 3 --processes 2 \\
        --model resnet18 --dataset cifar10_synthetic --local-steps 1
    python -m benchmarks.scale.floor --clients 1000 --rounds 3 --device cuda \\
        --model resnet18 --dataset cifar10_synthetic                      # the GPU floor

Each process runs one torch thread (as one Ray actor does) and trains a fixed share of the
clients (client c in process c mod N) one after another, so what a client keeps between rounds
(top-k's error feedback, LBGM's look-back gradients) stays in its process. The parent does the
server's arithmetic and evaluates the new global model centrally, like a fedsparse round. The
data, model and local round are ``work.py``'s (``--model``, ``--dataset``, ``--local-steps``
select others); a strategy's settings are the defaults of ``conf/strategy/<name>.yaml``.

``--strategy fedavg`` (the default): the processes sum their clients' example-weighted trained
states, the parent adds the sums and divides. The other strategies run the same client
algorithm as fedsparse, with the project's own functions (``strategy_floors.py``).

``--device cuda`` (or ``--resident`` on the CPU) runs the floor pfl-research's way instead: in
this one process, the model and every client's data resident on the device (``device_work.py``,
loaded before the first round), the clients trained one after another and their states summed
there in float64 before one division (FedPM: their masks coded, decoded and counted as above).
Each round line then carries its seconds, and a last line the median seconds per round after
the first, how busy the GPU was in those rounds (``gpu_busy.py``) and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import nn

from benchmarks.scale.device_work import DeviceWork
from benchmarks.scale.gpu_busy import SOURCE, BusySampler
from benchmarks.scale.work import DATASET, MODEL

CONF = Path(__file__).resolve().parents[2] / "conf" / "strategy"
STRATEGIES = ("fedavg", "lips", "topk", "signsgd", "lbgm", "fedpm")
GPU_STRATEGIES = ("fedavg", "fedpm")  # floors that keep their tensors on a GPU
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Setup:
    """What a floor runs: the work, the strategy with its settings, and the number of rounds
    (LIPS's horizon when its ``horizon`` is null, as in fedsparse)."""

    work: DeviceWork
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


def run_resident(setup: Setup) -> None:
    """``setup.rounds`` rounds in this process on ``setup.work.device``, one line per round
    with its seconds, then the summary line."""
    work, device = setup.work, setup.work.device
    started = time.perf_counter()
    work.load_all()
    print(
        f"[floor {device}] data of {work.num_clients} clients on {device} in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    floor = floor_of(setup)
    clients = list(range(work.num_clients))
    sampler = BusySampler().start() if device == "cuda" else None
    stamps = [time.perf_counter()]
    for server_round in range(1, setup.rounds + 1):
        floor.fold(floor.share(setup, clients, floor.payload(), server_round))
        floor.step(server_round)
        accuracy = work.central_accuracy(floor.model)  # a host value: the round's work is done
        stamps.append(time.perf_counter())
        print(
            f"[floor {device}] round {server_round} acc {accuracy:.4f} "
            f"{stamps[-1] - stamps[-2]:.2f} s",
            flush=True,
        )
    if sampler is not None:
        sampler.stop()
    print(summary_line(device, stamps, sampler), flush=True)


def summary_line(device: str, stamps: list[float], sampler: BusySampler | None) -> str:
    """Median seconds per round after the first, the GPU's busy share over those rounds and
    its peak memory (torch's allocator: what this process reserved)."""
    timed = [b - a for a, b in itertools.pairwise(stamps[1:])]
    median = statistics.median(timed) if timed else math.nan
    line = f"[floor {device}] median {median:.2f} s/round over {len(timed)} rounds after the first"
    if sampler is not None and len(stamps) > 2:
        busy = sampler.share(stamps[1], stamps[-1])
        line += f", GPU busy {busy:.0%} ({SOURCE})"
    if device == "cuda":
        line += f", peak GPU memory {torch.cuda.max_memory_reserved() / 2**20:.0f} MB reserved"
    return line


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
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the floor in this one process on the GPU (implies --resident)",
    )
    parser.add_argument(
        "--resident",
        action="store_true",
        help="one process, model and data resident on --device (pfl's way), not --processes",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy setting other than conf/'s default, e.g. --set uplink_coding=klms",
    )
    args = parser.parse_args()
    resident = args.resident or args.device == "cuda"
    if args.device == "cuda" and args.strategy not in GPU_STRATEGIES:
        parser.error(f"--device cuda: only {', '.join(GPU_STRATEGIES)} keep their tensors there")
    _init_worker()
    work = DeviceWork(args.clients, args.model, args.dataset, args.local_steps, device=args.device)
    params = strategy_params(args.strategy)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in params:
            parser.error(f"--set {item}: {args.strategy} has no setting {key!r}")
        params[key] = yaml.safe_load(value)
    setup = Setup(work, args.strategy, args.rounds, params)
    if resident:
        run_resident(setup)
    else:
        run(setup, args.processes)


if __name__ == "__main__":
    main()
