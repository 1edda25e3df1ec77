"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates correct each client's drift.

The server keeps a control variate c, each client i its own cᵢ (in its client state). A
client starts from the global model x, adds c − cᵢ to every gradient before each step, and
after K steps of learning rate η sets cᵢ⁺ = cᵢ − c + (x − yᵢ)/(K·η) (the paper's option II);
it sends its trained weights yᵢ and Δcᵢ = cᵢ⁺ − cᵢ. The server averages the weights as FedAvg
does (global step 1) and sets c ← c + (1/N)·Σᵢ Δcᵢ over the replies, N being every client.

The server mirrors each client's cᵢ (as cᵢ + Δcᵢ, the same float32 sum the client keeps) so
that a checkpoint holds them: a resumed run, whose clients start with empty state, sends each
client its cᵢ once, as it does after a reply of that client was lost. Every other round a
client gets only the round its cᵢ is from, and trains with the one it kept.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
from torch import nn

from strategies.api import (
    ARRAYS,
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
from strategies.core.registry import parameter_shapes
from strategies.core.validation import arrays_like, require_record
from strategies.core.wire import Record
from strategies.numeric.arrays import l2_norm
from strategies.numeric.weighted_sum import WeightedSum, cast_like

CONTROL = "scaffold-c"  # downlink, shared: the server's c
CLIENT_CONTROL = "scaffold-ci"  # downlink to one client when it must resync; its client state
CONTROL_ROUND = "scaffold-ci-round"  # downlink per client and client state: cᵢ's round (-1: 0)
CONTROL_DELTA = "scaffold-dc"  # uplink: Δcᵢ


class Scaffold(FedSparseStrategy):
    """FedAvg's weighted mean of the trained weights, plus the server's control variate."""

    name = "scaffold"
    unreduced_reason = "the server keeps every client's control variate from its own reply"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
        self.client_controls: dict[int, tuple[int, dict[str, np.ndarray]]] = {}
        self.unsynced: set[int] = set()  # clients whose cᵢ the server must send
        self._asked: set[int] = set()
        self._mean_delta: dict[str, np.ndarray] | None = None

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return parameter_shapes(self.job)

    def node_content(
        self, server_round: int, arrays: ArrayRecord, cohort: list[int], message_type: str
    ) -> RecordDict:
        content = super().node_content(server_round, arrays, cohort, message_type)
        if message_type == MessageType.TRAIN:
            content[CONTROL] = self._control_record
        return content

    def configure_train(self, server_round, arrays, config, grid):
        self._control_record = to_array_record(self.control)
        self._base, self._asked = to_numpy_dict(arrays), set()
        return super().configure_train(server_round, arrays, config, grid)

    def client_records(self, server_round: int, client_id: int) -> dict[str, Record]:
        self._asked.add(client_id)
        held_round, held = self.client_controls.get(client_id, (-1, None))
        records: dict[str, Record] = {CONTROL_ROUND: ConfigRecord({"round": held_round})}
        if held is not None and client_id in self.unsynced:
            records[CLIENT_CONTROL] = to_array_record(held)
        return records

    def decode(self, update: ClientUpdate) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        arrays = arrays_like(
            require_record(update.records, ARRAYS, ArrayRecord), self.global_arrays
        )
        delta = require_record(update.records, CONTROL_DELTA, ArrayRecord)
        return arrays, arrays_like(delta, self._control_record)

    def delta_norms(self, payload: tuple[dict[str, np.ndarray], Any]) -> dict[str, float]:
        """‖yᵢ − x‖ per float array, for the layer monitor."""
        base = self._base
        return {n: l2_norm(y - base[n]) for n, y in payload[0].items() if y.dtype.kind == "f"}

    def begin_aggregation(self, server_round: int) -> None:
        self.server_round = server_round
        self.weights, self.deltas = WeightedSum(), WeightedSum()

    def fold(self, update: ClientUpdate) -> None:
        arrays, delta = update.payload
        self.weights.add(arrays, update.num_examples)
        self.deltas.add(delta, 1)
        _, held = self.client_controls.get(update.client_id, (-1, None))
        kept = delta if held is None else {n: held[n] + delta[n] for n in delta}
        self.client_controls[update.client_id] = (self.server_round, kept)
        self.unsynced.discard(update.client_id)
        update.release()

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        replied = {u.client_id for u in updates}
        self.unsynced |= (self._asked - replied) & set(self.client_controls)
        total = self.deltas.partial()
        scale = 1.0 / self.num_clients
        self.control = {
            n: (c + scale * total[n]).astype(np.float32) for n, c in self.control.items()
        }
        means, base = self.weights.mean(), self._base
        self._mean_delta = {n: m - base[n] for n, m in means.items() if base[n].dtype.kind == "f"}
        return to_array_record(cast_like(means, base))

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"c/{n}": v for n, v in self.control.items()}
        for client_id, (held_round, held) in self.client_controls.items():
            state[f"ci-round/{client_id}"] = np.array(held_round)
            state.update({f"ci/{client_id}/{n}": v for n, v in held.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.control = {n: np.asarray(state[f"c/{n}"]) for n in self.shapes}
        rounds = {
            int(k.split("/")[1]): int(v) for k, v in state.items() if k.startswith("ci-round/")
        }
        self.client_controls = {
            c: (r, {n: np.asarray(state[f"ci/{c}/{n}"]) for n in self.shapes})
            for c, r in rounds.items()
        }
        self.unsynced = set(self.client_controls)  # their nodes lost the state a resume drops


class ScaffoldClient(ClientAlgorithm):
    """Trains with every gradient corrected by c − cᵢ, then sends yᵢ and Δcᵢ."""

    def prepare(self, ctx: ClientContext, model: nn.Module, data: TensorData) -> None:
        self.control = to_numpy_dict(ctx.content[CONTROL])
        self.own = held_control(ctx, self.control)
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
        ctx.state.set(CONTROL_ROUND, ConfigRecord({"round": ctx.job.server_round}))
        records = super().reply(ctx, model, trained)
        records[CONTROL_DELTA] = to_array_record(delta)
        return records


def held_control(ctx: ClientContext, control: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This client's cᵢ: the one the server sent, the one it kept (when the server holds the
    same round's), or zeros before its first accepted reply."""
    sent = ctx.records.get(CLIENT_CONTROL)
    if isinstance(sent, ArrayRecord):
        return to_numpy_dict(sent)
    expected = int(require_record(ctx.records, CONTROL_ROUND, ConfigRecord)["round"])
    if expected < 0:
        return {n: np.zeros_like(v) for n, v in control.items()}
    kept = ctx.state.get(CONTROL_ROUND)
    if not isinstance(kept, ConfigRecord) or int(kept["round"]) != expected:
        raise RuntimeError(
            f"client {ctx.client_id}: the server holds its control variate of round {expected}, "
            f"the client {'none' if kept is None else 'that of round ' + str(kept['round'])}"
        )
    return ctx.state.get_arrays(CLIENT_CONTROL)


register_algorithm(Algorithm("scaffold", Scaffold, ScaffoldClient))
