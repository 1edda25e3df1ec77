"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates correct each client's drift.

The server keeps a control variate c, each client i its own cᵢ (in its kept state). A client
starts from the global model x, adds c − cᵢ to every gradient before each step, and after K
steps of learning rate η sets cᵢ⁺ = cᵢ − c + (x − yᵢ)/(K·η) (the paper's option II); it sends
its trained weights yᵢ and Δcᵢ = cᵢ⁺ − cᵢ. The server averages the weights as FedAvg does
(global step 1) and sets c ← c + (1/N)·Σᵢ Δcᵢ over the replies, N being every client.

Both are sums over clients, so nodes hosting several clients add their replies up before they
travel. cᵢ lives only on the client: the engine keeps it consistent with c (a dropped reply
or a resume rolls it back to the round the server's c last added, see
``strategies.core.client_state``), and the server holds nothing per client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MessageType, RecordDict
from torch import nn

from strategies.api import (
    Algorithm,
    ClientAlgorithm,
    ClientContext,
    ClientUpdate,
    FedSparseStrategy,
    TensorData,
    TrainResult,
    register_algorithm,
    to_array_record,
    to_numpy_dict,
)
from strategies.core.job import ClientJob
from strategies.core.registry import parameter_shapes
from strategies.core.validation import arrays_like, require_record
from strategies.core.wire import Record
from strategies.fedavg import Decoded, WeightedArrays
from strategies.numeric.weighted_sum import WeightedSum, cast_like

CONTROL = "scaffold-c"  # downlink, shared: the server's c
CLIENT_CONTROL = "scaffold-ci"  # kept state: the client's cᵢ
CONTROL_DELTA = "scaffold-dc"  # uplink: Δcᵢ
WEIGHTS, DELTAS = "y:", "dc:"  # the two sums of a reduced cohort's partial


@dataclass
class Controlled:
    """One client's reply decoded: its trained arrays and its Δcᵢ."""

    arrays: Decoded
    delta: dict[str, np.ndarray]


class ControlledSums(WeightedArrays):
    """FedAvg's Σ n_c·y_c, and Σ Δc_c (each client once), each Δc_c checked to hold one finite
    float32 array per parameter, shaped like it."""

    def __init__(self, job: ClientJob, downlink: ArrayRecord) -> None:
        super().__init__(job, downlink)
        self.shapes = parameter_shapes(job)
        self.control_template = to_array_record(
            {name: np.zeros(shape, np.float32) for name, shape in self.shapes.items()}
        )
        self.deltas = WeightedSum()

    def decode(self, update: ClientUpdate) -> Controlled:
        received = require_record(update.records, CONTROL_DELTA, ArrayRecord)
        return Controlled(super().decode(update), arrays_like(received, self.control_template))

    def delta_norms(self, payload: Controlled) -> dict[str, float]:
        return super().delta_norms(payload.arrays)

    def add(self, update: ClientUpdate) -> None:
        payload: Controlled = update.payload
        self.deltas.add(payload.delta, 1)
        update.payload = payload.arrays
        super().add(update)

    def partial(self) -> dict[str, np.ndarray]:
        return {
            **{WEIGHTS + n: v for n, v in super().partial().items()},
            **{DELTAS + n: v for n, v in self.deltas.partial().items()},
        }

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        float64 = np.dtype(np.float64)
        return {
            **{WEIGHTS + n: layout for n, layout in super().layout().items()},
            **{DELTAS + n: (shape, float64) for n, shape in self.shapes.items()},
        }

    def merge(self, partial: Mapping[str, np.ndarray], weight: int) -> None:
        super().merge(_part(partial, WEIGHTS), weight)
        self.deltas.merge(_part(partial, DELTAS), 0)  # a sum over clients: no weight to divide

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The weighted mean of the trained arrays and the sum of the Δcᵢ, in float64."""
        return super().result(), self.deltas.partial()


def _part(partial: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in partial.items() if k.startswith(prefix)}


class Scaffold(FedSparseStrategy):
    """FedAvg's weighted mean of the trained weights, plus the server's control variate."""

    name = "scaffold"
    cohort_sum_type = ControlledSums

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = {n: np.zeros(s, np.float32) for n, s in parameter_shapes(self.job).items()}
        self._mean_delta: dict[str, np.ndarray] | None = None

    def node_content(
        self, server_round: int, arrays: ArrayRecord, cohort: list[int], message_type: str
    ) -> RecordDict:
        content = super().node_content(server_round, arrays, cohort, message_type)
        if message_type == MessageType.TRAIN:
            content[CONTROL] = self._control_record
        return content

    def configure_train(self, server_round, arrays, config, grid):
        self._control_record = to_array_record(self.control)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        means, total = self.running.result()
        scale = 1.0 / self.num_clients
        self.control = {
            n: (c + scale * total[n]).astype(np.float32) for n, c in self.control.items()
        }
        base = to_numpy_dict(self.global_arrays)
        self._mean_delta = {n: m - base[n] for n, m in means.items() if base[n].dtype.kind == "f"}
        return to_array_record(cast_like(means, base))

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"c/{n}": v for n, v in self.control.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.control = {n: np.asarray(state[f"c/{n}"]) for n in self.control}


class ScaffoldClient(ClientAlgorithm):
    """Trains with every gradient corrected by c − cᵢ, then sends yᵢ and Δcᵢ."""

    keeps_state = True  # cᵢ

    def prepare(self, ctx: ClientContext, model: nn.Module, data: TensorData) -> None:
        self.control = to_numpy_dict(ctx.content[CONTROL])
        kept = ctx.state.get_arrays(CLIENT_CONTROL)  # None until a reply of it was accepted
        zeros = {n: np.zeros_like(v) for n, v in self.control.items()}
        self.own = zeros if kept is None else kept
        self.start = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
        self.correction = {
            n: torch.from_numpy(self.control[n] - self.own[n]).to(ctx.device) for n in self.control
        }

    def before_step(self, ctx: ClientContext, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.grad is not None:
                p.grad.add_(self.correction[name])

    def reply(
        self, ctx: ClientContext, model: nn.Module, trained: TrainResult
    ) -> dict[str, Record]:
        scale = 1.0 / (max(trained.steps, 1) * ctx.job.lr)
        trained_params = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
        delta = {  # cᵢ⁺ − cᵢ = −c + (x − yᵢ)/(K·η)
            n: ((self.start[n] - y) * scale - self.control[n]).astype(np.float32)
            for n, y in trained_params.items()
        }
        ctx.state.set_arrays(CLIENT_CONTROL, {n: self.own[n] + delta[n] for n in delta})
        records = super().reply(ctx, model, trained)
        records[CONTROL_DELTA] = to_array_record(delta)
        return records


register_algorithm(Algorithm("scaffold", Scaffold, ScaffoldClient))
