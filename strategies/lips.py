"""LIPS: transient layer sparsity against layer-wise inertia (Xiao et al., arXiv 2506.00932).

The server runs plain FedAvg. On sparse rounds r ∈ {2, 2+F, 2+2F, …} every sampled client
prunes the *received* global model before local training: each middle conv/linear weight keeps
its top ⌊d_r·numel⌋ entries by score, with d_r = min(d0 + (1−d0)(r−2)/T, 1). Training is then
dense, so pruned weights regrow at once: the sparsity lives only in that round's starting point.

Deviations from the public code (see the project's LIPS spec): the sensitivity score uses the
gradient of the received model on one local batch at round start (no stale, clipped state);
first and last layers are chosen by position, not kernel size; aggregation is over the sampled
clients only, so partial participation is safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import MetricRecord
from torch import nn

from models.training import TensorData, TrainResult
from strategies.core.client import ClientAlgorithm, ClientContext
from strategies.core.job import ConfigScalar
from strategies.core.params import Params, check_choice, check_count, check_flag, check_number
from strategies.core.registry import Algorithm, register_algorithm
from strategies.core.update import METRICS
from strategies.core.wire import Record
from strategies.fedavg import FedAvg

SCORES = ("sensitivity", "magnitude", "random")
PRUNED_PREFIX = "lips-pruned."
SCORE_STREAM = 0x5C0E  # keeps the scoring draws apart from the batch-order stream


def sparse_round(server_round: int, period: int) -> bool:
    """Rounds 2, 2+F, 2+2F, … start from a pruned model (1-indexed rounds)."""
    return server_round >= 2 and (server_round - 2) % period == 0


def lips_density(server_round: int, period: int, d0: float, horizon: int) -> float:
    """Density d_r of the pruned start on sparse rounds; 1.0 on dense rounds."""
    if not sparse_round(server_round, period):
        return 1.0
    return min(d0 + (1.0 - d0) * (server_round - 2) / horizon, 1.0)


def prunable_layers(model: nn.Module, include_shortcuts: bool) -> list[str]:
    """Weights of every conv and linear layer except the first and the last, by position.

    1×1 convolutions (residual shortcuts) are pruned only with ``include_shortcuts``.
    """
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    middle = layers[1:-1]
    return [
        f"{name}.weight"
        for name, module in middle
        if include_shortcuts
        or not (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1))
    ]


def layer_scores(
    model: nn.Module,
    layers: Sequence[str],
    mode: str,
    batch: TensorData,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Importance of every entry of ``layers``: |g ⊙ W|, |W| or uniform noise."""
    params = dict(model.named_parameters())
    if mode == "magnitude":
        return {name: params[name].detach().abs() for name in layers}
    if mode == "random":
        return {
            name: torch.rand(params[name].shape, generator=generator).to(params[name].device)
            for name in layers
        }
    if mode != "sensitivity":
        raise ValueError(f"unknown LIPS score {mode!r}; choose one of: {', '.join(SCORES)}")
    was_training = model.training
    model.eval()  # BatchNorm running statistics must not move while scoring
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(batch.x), batch.y).backward()
    scores = {name: (params[name].grad * params[name].detach()).abs() for name in layers}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def prune_top(
    model: nn.Module, scores: dict[str, torch.Tensor], density: float
) -> dict[str, float]:
    """Zero all but the top ⌊density·numel⌋ scored entries per layer; return the pruned share."""
    params = dict(model.named_parameters())
    pruned = {}
    with torch.no_grad():
        for name, score in scores.items():
            weight = params[name]
            keep = math.floor(density * weight.numel())
            mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
            mask[torch.topk(score.flatten(), keep, sorted=False).indices] = True
            weight.mul_(mask.view_as(weight))
            pruned[name] = 1.0 - keep / weight.numel()
    return pruned


@dataclass(frozen=True)
class LipsParams(Params):
    """LIPS's schedule and scoring (conf/strategy/lips.yaml explains each)."""

    period: int = 5
    d0: float = 0.5
    horizon: int | None = None
    score: str = "sensitivity"
    include_shortcuts: bool = True

    def check(self) -> None:
        check_count("period", self.period)
        check_number("d0", self.d0, lambda v: 0 < v <= 1, "must be in (0, 1]")
        check_count("horizon", self.horizon, optional="= num_rounds")
        check_choice("score", self.score, SCORES)
        check_flag("include_shortcuts", self.include_shortcuts)


class Lips(FedAvg):
    """FedAvg whose clients start sparse rounds from a transiently pruned global model."""

    name = "lips"
    params_type = LipsParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.horizon = self.params.horizon or self.num_rounds

    def density(self, server_round: int) -> float:
        return lips_density(server_round, self.params.period, self.params.d0, self.horizon)

    @classmethod
    def schedule_spans_num_rounds(cls, params: Mapping[str, Any]) -> bool:
        """With ``horizon: null`` the density schedule ends at ``num_rounds``."""
        return params.get("horizon") is None

    def round_params(self, server_round: int) -> dict[str, ConfigScalar]:
        return {"density": self.density(server_round)}

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        pruned: dict[str, list[float]] = {}
        for update in self.last_updates:
            for key, value in update.metrics.items():
                if key.startswith(PRUNED_PREFIX):
                    pruned.setdefault(key[len(PRUNED_PREFIX) :], []).append(float(value))
        return {
            "lips_sparse": self.density(server_round) < 1.0,
            "lips_density": self.density(server_round),
            "lips_pruned": {layer: float(np.mean(v)) for layer, v in pruned.items()},
        }


class LipsClient(ClientAlgorithm):
    """Prunes the received model on sparse rounds, then trains densely like FedAvg."""

    def __init__(self) -> None:
        self.pruned: dict[str, float] = {}

    def prepare(self, ctx: ClientContext, model: nn.Module, data: TensorData) -> None:
        density = float(ctx.job.params.get("density", 1.0))
        if density >= 1.0:
            return
        generator = torch.Generator().manual_seed(ctx.seed ^ SCORE_STREAM)
        batch_index = torch.randperm(len(data), generator=generator)[: ctx.job.batch_for(len(data))]
        batch = TensorData(
            data.x[batch_index.to(data.x.device)], data.y[batch_index.to(data.y.device)]
        )
        layers = prunable_layers(model, ctx.params.include_shortcuts)
        scores = layer_scores(model, layers, ctx.params.score, batch, generator)
        self.pruned = prune_top(model, scores, density)

    def reply(
        self, ctx: ClientContext, model: nn.Module, trained: TrainResult
    ) -> dict[str, Record]:
        records = super().reply(ctx, model, trained)
        if self.pruned:
            records[METRICS] = MetricRecord(
                {PRUNED_PREFIX + name: share for name, share in self.pruned.items()}
            )
        return records


register_algorithm(Algorithm("lips", Lips, LipsClient))
