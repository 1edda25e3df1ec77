"""What a user writes with Flower alone: a ClientApp and the stock ``FedAvg`` of
``flwr.serverapp.strategy`` on the Ray simulation engine, one SuperNode per client.

    python -m benchmarks.scale.plain_flower --clients 100 --rounds 3

Same data, model and local work as fedsparse (see ``work.py``; the options after ``--rounds``
change it, for ``benchmarks/peers.py``). Prints one line per round from the central evaluation
(``evaluate_fn``, which evaluates every ``--eval-every`` rounds); the benchmark times the gaps
between those lines.
"""

from __future__ import annotations

import argparse

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from benchmarks.scale import work


def make_apps(
    setup: work.Work, num_rounds: int, per_round: int | None = None, eval_every: int = 1
) -> tuple[ServerApp, ClientApp]:
    """The apps of ``num_rounds`` rounds of ``setup``, ``per_round`` clients a round (default:
    all), evaluating centrally every ``eval_every`` rounds (and before the first)."""
    num_clients = setup.num_clients
    per_round = per_round or num_clients
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        client_id = int(context.node_config["partition-id"])
        model = setup.new_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        server_round = int(msg.content["config"]["server-round"])
        examples = setup.train_client(model, client_id, server_round)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": examples}),
            }
        )
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        model = setup.new_model()

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round % eval_every:
                print(f"[plain-flower] round {server_round}", flush=True)
                return None
            model.load_state_dict(arrays.to_torch_state_dict())
            accuracy = setup.central_accuracy(model)
            print(f"[plain-flower] round {server_round} acc {accuracy:.4f}", flush=True)
            return MetricRecord({"accuracy": accuracy})

        strategy = FedAvg(
            fraction_train=per_round / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=num_clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=num_rounds,
            evaluate_fn=central_eval,
        )

    return server_app, client_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients-per-round", type=int, default=None, help="default: all")
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--model", default=work.MODEL)
    parser.add_argument("--dataset", default=work.DATASET)
    parser.add_argument("--batch-size", type=int, default=work.BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=work.LR)
    parser.add_argument("--momentum", type=float, default=work.MOMENTUM)
    parser.add_argument("--local-test-fraction", type=float, default=work.Work.local_test_fraction)
    args = parser.parse_args()
    setup = work.Work(
        args.clients,
        args.model,
        args.dataset,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        local_test_fraction=args.local_test_fraction,
    )
    server_app, client_app = make_apps(setup, args.rounds, args.clients_per_round, args.eval_every)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


if __name__ == "__main__":
    main()
