"""pfl-research's CIFAR-10 benchmark, set up as its own ``benchmarks/image_classification``
does, on the data ``benchmarks/peers.py`` writes; run by that harness with pfl's own Python.

    /work/pfl-venv/bin/python benchmarks/peers_pfl.py --data DATA.npz --rounds 30 \\
        --run-dir RUN [--eval-every 10] [--eval-batch 128] [--device cpu]

What pfl's ``train.py --args_config image_classification/configs/baseline.yaml`` builds, with
the harness's data instead of the CIFAR-10 pickles: users are fixed slices of the data (its
``make_iid_federated_dataset``: 50 images each, NHWC float32 normalised per channel), sampled by
``get_user_sampler('random')`` into cohorts; its ``simple_cnn`` (NHWC input permuted by a
``Transpose2D`` layer); ``FederatedAveraging`` in a ``SimulatedBackend`` with
``WeightByUser``; local SGD (``local_learning_rate``), central SGD at lr 1.0 (the FedAvg step);
callbacks ``StopwatchCallback``, ``CentralEvaluationCallback`` (every ``--eval-every``
iterations, before training too, as pfl does), ``AggregateMetricsToDisk`` and
``TrackBestOverallMetrics``, plus a timer of ours, last, that prints one line per central
iteration with its wall seconds (the eval of that iteration included). One process, torch's
default threads (``--threads`` sets them), as pfl runs without Horovod.

One departure, for the same work as fedsparse (which trains without evaluating its clients):
pfl evaluates every trained user on its own data before and after local training in each
iteration its algorithm evaluates (``evaluation_frequency``); here only in the first, unless
``--user-eval`` asks for pfl's own cadence.

This file imports only numpy, torch and pfl: it runs in pfl's own environment (Python < 3.13),
never fedsparse's.
"""

from __future__ import annotations

import argparse
import os
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
CENTRAL_LR = 1.0  # pfl's baseline.yaml learning_rate: the server applies the mean update as is
ACCURACY = "Central val | accuracy"


class Transpose2D(nn.Module):
    """NHWC images to the NCHW layout convolutions take (pfl's layer of this name)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.permute((0, 3, 1, 2))


def simple_cnn(input_shape: tuple[int, int, int], num_outputs: int) -> nn.Sequential:
    """pfl-research's ``simple_cnn`` for (H, W, C) images, Glorot-uniform weights."""
    height, width, channels = input_shape
    flat = ((height - 4) // 2) * ((width - 4) // 2) * 64
    model = nn.Sequential(
        Transpose2D(),
        nn.Conv2d(channels, 32, kernel_size=(3, 3)),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=(3, 3)),
        nn.ReLU(),
        nn.MaxPool2d((2, 2)),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, num_outputs),
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
    return model


def _loss(self: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, eval: bool = False):
    """pfl's ``image_classification_loss``: mean cross-entropy, train or eval mode."""
    self.eval() if eval else self.train()
    return nn.functional.cross_entropy(self(inputs), targets.long())


@torch.no_grad()
def _metrics(self: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, eval: bool = True):
    """pfl's ``image_classification_metrics``: summed loss and correct count, weighted."""
    from pfl.metrics import Weighted

    self.eval() if eval else self.train()
    logits = self(inputs)
    correct = (logits.argmax(-1) == targets.long()).float().sum().item()
    loss = nn.functional.cross_entropy(logits, targets.long(), reduction="sum").item()
    return {"loss": Weighted(loss, len(inputs)), "accuracy": Weighted(correct, len(inputs))}


def load_data(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """The harness's clients (each an (x, y) in NHWC float32) and central test set, normalised
    as fedsparse normalises them: (x / 255 − mean) / std per channel."""
    data = np.load(path)
    shape = (1, -1, 1, 1)
    mean = data["mean"].astype(np.float32).reshape(shape)
    std = data["std"].astype(np.float32).reshape(shape)

    def normalised(x: np.ndarray) -> np.ndarray:
        x = (x.astype(np.float32) / np.float32(255.0) - mean) / std
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    x, y = normalised(data["x"]), data["y"].astype(np.int64)
    ends = np.cumsum(data["sizes"])
    clients = [(x[a:b], y[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    return clients, normalised(data["test_x"]), data["test_y"].astype(np.int64)


def round_timer(eval_every: int):
    """A pfl callback printing each central iteration's wall seconds (and the central accuracy
    when that iteration evaluated); built here so pfl is imported only when running."""
    from pfl.callback.base import TrainingProcessCallback
    from pfl.metrics import Metrics

    class RoundTimer(TrainingProcessCallback):
        def on_train_begin(self, *, model) -> Metrics:
            self._start = time.perf_counter()
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            now = time.perf_counter()
            line = f"[pfl] round {central_iteration + 1} {now - self._start:.4f} s"
            if central_iteration and central_iteration % eval_every == 0:
                accuracy = dict((str(k), v) for k, v in aggregate_metrics)[ACCURACY]
                line += f" acc {accuracy.overall_value:.4f}"
            print(line, flush=True)
            self._start = now
            return False, Metrics()

    return RoundTimer()


def run(args: argparse.Namespace) -> None:
    os.environ["PFL_PYTORCH_DEVICE"] = args.device  # read by pfl when it picks its device
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByUser
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.aggregate_metrics_to_disk import AggregateMetricsToDisk
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.callback.stopwatch import StopwatchCallback
    from pfl.callback.track_best_overall_metrics import TrackBestOverallMetrics
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.pytorch_ops import get_default_device, to_tensor
    from pfl.model.pytorch import PyTorchModel
    from pfl.privacy import CentrallyAppliedPrivacyMechanism, NoPrivacy

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.random.manual_seed(SEED)
    np.random.seed(SEED)
    clients, test_x, test_y = load_data(args.data)
    users = {i: (to_tensor(x), to_tensor(y)) for i, (x, y) in enumerate(clients)}
    training = FederatedDataset.from_slices(users, get_user_sampler("random", range(len(users))))
    central = Dataset(raw_data=[to_tensor(test_x), to_tensor(test_y)])

    network = simple_cnn(test_x.shape[1:], int(test_y.max()) + 1)
    network.loss = types.MethodType(_loss, network)
    network.metrics = types.MethodType(_metrics, network)
    network = network.to(get_default_device())
    params = [p for p in network.parameters() if p.requires_grad]
    print(
        f"[pfl] {len(users)} users, cohort {args.cohort}, {sum(p.numel() for p in params)} "
        f"parameters, device {get_default_device()}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    model = PyTorchModel(
        model=network,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(params, CENTRAL_LR),
    )
    backend = SimulatedBackend(
        training_data=training,
        val_data=None,
        postprocessors=[WeightByUser(), NoPrivacy(), CentrallyAppliedPrivacyMechanism(NoPrivacy())],
    )
    eval_params = NNEvalHyperParams(local_batch_size=args.eval_batch)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        StopwatchCallback(),
        CentralEvaluationCallback(central, eval_params, frequency=args.eval_every),
        AggregateMetricsToDisk(str(args.run_dir / "metrics.csv")),
        TrackBestOverallMetrics(higher_is_better_metric_names=[ACCURACY]),
        round_timer(args.eval_every),
    ]
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            # pfl also evaluates every trained user on its own data before and after training in
            # the iterations where this divides (the first always); fedsparse's runs do not
            evaluation_frequency=args.eval_every if args.user_eval else args.rounds + 1,
            train_cohort_size=args.cohort,
            val_cohort_size=0,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=args.lr, local_num_epochs=1, local_batch_size=args.batch_size
        ),
        model_eval_params=eval_params,
        callbacks=callbacks,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the harness's .npz")
    parser.add_argument("--run-dir", type=Path, required=True, help="where metrics.csv goes")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cohort", type=int, default=50, help="users per central iteration")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1, help="local learning rate")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-batch", type=int, default=10_000, help="pfl's default: 10,000")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch's threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--user-eval",
        action="store_true",
        help="evaluate each trained user before and after training every --eval-every "
        "iterations, as pfl's benchmark does (default: only in the first iteration)",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
