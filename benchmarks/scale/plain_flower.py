"""What a user writes with Flower alone: a ClientApp and the stock ``FedAvg`` of
``flwr.serverapp.strategy`` on the Ray simulation engine, one SuperNode per client.

    python -m benchmarks.scale.plain_flower --clients 100 --rounds 3

Same data, model and local work as fedsparse (see ``work.py``). Prints one line per round from
the central evaluation (``evaluate_fn``); the benchmark times the gaps between those lines.
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


def make_apps(num_clients: int, num_rounds: int) -> tuple[ServerApp, ClientApp]:
    setup = work.Work(num_clients)
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

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            accuracy = setup.central_accuracy(model)
            print(f"[plain-flower] round {server_round} acc {accuracy:.4f}", flush=True)
            return MetricRecord({"accuracy": accuracy})

        strategy = FedAvg(
            fraction_evaluate=0.0,
            min_train_nodes=num_clients,
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
    args = parser.parse_args()
    server_app, client_app = make_apps(args.clients, args.rounds)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


if __name__ == "__main__":
    main()
