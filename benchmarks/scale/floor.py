"""The compute floor: the same local training and averaging in plain PyTorch, no FL framework.

    python -m benchmarks.scale.floor --clients 100 --rounds 3 --processes 2

Each process runs one torch thread (as one Ray actor does) and trains its share of the clients
one after another; the parent averages the weights and evaluates centrally, like a FedAvg round.
"""

from __future__ import annotations

import argparse
import multiprocessing

import torch

from benchmarks.scale import work

State = dict[str, torch.Tensor]


def _init_worker() -> None:
    torch.set_num_threads(1)


def train_share(
    num_clients: int, client_ids: list[int], state: State, server_round: int
) -> tuple[State, int]:
    """Example-weighted sum of the trained states of ``client_ids``, and their example count."""
    model = work.new_model(num_clients)
    total: State = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
    examples = 0
    for client_id in client_ids:
        model.load_state_dict(state)
        n = work.train_client(model, num_clients, client_id, server_round)
        for key, value in model.state_dict().items():
            total[key] += value.double() * n
        examples += n
    return total, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    _init_worker()
    model = work.new_model(args.clients)
    shares = [list(range(args.clients))[p :: args.processes] for p in range(args.processes)]
    pool = multiprocessing.get_context("spawn").Pool(args.processes, initializer=_init_worker)
    with pool:
        for server_round in range(1, args.rounds + 1):
            state = model.state_dict()
            jobs = [(args.clients, share, state, server_round) for share in shares]
            results = pool.starmap(train_share, jobs)
            examples = sum(n for _, n in results)
            model.load_state_dict(
                {
                    key: (sum(t[key] for t, _ in results) / examples).to(value.dtype)
                    for key, value in state.items()
                }
            )
            accuracy = work.central_accuracy(model, args.clients)
            print(f"[floor x{args.processes}] round {server_round} acc {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
