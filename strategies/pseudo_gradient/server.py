"""The pseudo-gradient family's server: clients send g = θ_start − θ_end, compressed per layer
(top-k: values + int32 indices; scaled sign: packed bits + one scale) with error feedback, or
dense; the server averages them weighted by ``num-examples`` and steps
θ ← θ − server_lr·v with v ← server_momentum·v + ḡ (server_lr=1, momentum 0 is FedAvg).
LBGM (``lbgm.py``) builds on this."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from strategies.core.job import ClientJob, ConfigScalar
from strategies.core.params import (
    Params,
    check_flag,
    check_number,
)
from strategies.core.reduction import CohortSum
from strategies.core.registry import parameter_shapes
from strategies.core.strategy import ARRAYS, ClientUpdate, FedSparseStrategy
from strategies.core.update import REPLY_SLACK_BYTES
from strategies.core.validation import (
    ReplyError,
    all_finite,
    require_record,
)
from strategies.numeric.arrays import l2_norm, to_array_record, to_numpy, to_numpy_dict
from strategies.numeric.weighted_sum import WeightedSum, cast_like
from strategies.pseudo_gradient.compression import Codec, CodecError, make_codec

log = logging.getLogger(__name__)

TOPK_BREAK_EVEN = 0.5  # float32 value + int32 index per kept entry: 8 bytes against 4 dense


@dataclass(frozen=True)
class Scaled:
    """A reused layer's pseudo-gradient ρ·LBG, rebuilt slice by slice where it is summed.

    A round where most clients reuse would otherwise hold a rebuilt model per client until the
    aggregation; this holds ρ and a view of the stored LBG. Each slice is computed exactly as
    the whole product would be (elementwise, in the LBG's float32), so sums are bit for bit the
    same.
    """

    rho: float
    lbg: np.ndarray  # the layer's part of the stored LBG, in the layer's shape (read-only)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lbg.shape

    @property
    def size(self) -> int:
        return self.lbg.size

    def reshape(self, *shape: int) -> Scaled:
        return Scaled(self.rho, self.lbg.reshape(*shape))

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.lbg[part] * self.rho

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self.lbg * self.rho
        return values if dtype is None else values.astype(dtype, copy=False)


@dataclass
class Decoded:
    """One client's reply decoded: pseudo-gradient per layer, buffers, and LBGM bookkeeping."""

    grads: dict[str, np.ndarray | Scaled]
    buffers: dict[str, np.ndarray]
    units: int = 0
    ages: list[int] = field(default_factory=list)


GRAD, BUFFER = "grad:", "buffer:"  # the two sums of a reduced cohort's partial


class PseudoGradients(CohortSum):
    """Σ_c n_c·g_c over the clients' decoded pseudo-gradients and Σ_c n_c·b_c over their
    buffers, each reply checked to be exactly the buffers plus every layer's codec arrays."""

    def __init__(self, job: ClientJob, downlink: ArrayRecord) -> None:
        self.template = downlink
        self.limit = 2 * downlink.count_bytes() + REPLY_SLACK_BYTES
        self.layers = parameter_shapes(job)
        self.codec = job_codec(job)
        self.grads, self.buffers = WeightedSum(), WeightedSum()

    @property
    def weight(self) -> int:
        return self.grads.weight

    def reply_limit(self) -> int:
        """Twice the dense model plus slack."""
        return self.limit

    def wire(self, update: ClientUpdate, full_layers: list[str]) -> dict[str, np.ndarray]:
        """The reply's arrays, checked to be exactly the buffers plus the full layers' codec keys,
        with finite values and buffers shaped like the global ones."""
        received = require_record(update.records, ARRAYS, ArrayRecord)
        buffers = [name for name in self.template if name not in self.layers]
        expected = set(buffers) | {k for name in full_layers for k in self.codec.keys(name)}
        if set(received.keys()) != expected:
            missing = sorted(expected - set(received.keys()))
            extra = sorted(set(received.keys()) - expected)
            raise ReplyError("names", f"array names differ (missing {missing}, unexpected {extra})")
        wire = to_numpy_dict(received)
        for name, values in wire.items():
            if values.dtype.kind == "f" and not all_finite(values):
                raise ReplyError("non-finite", f"{name} holds NaN or Inf")
        for name in buffers:
            template = self.template[name]
            if wire[name].shape != tuple(template.shape) or wire[name].dtype != template.dtype:
                raise ReplyError(
                    "shape",
                    f"{name}: {wire[name].dtype} {wire[name].shape}, expected {template.dtype} "
                    f"{tuple(template.shape)}",
                )
        return wire

    def layer(self, wire: dict[str, np.ndarray], name: str) -> np.ndarray:
        """One full layer's pseudo-gradient from its codec arrays."""
        template = self.template[name]
        try:
            return self.codec.decode(name, wire, tuple(template.shape), np.dtype(template.dtype))
        except CodecError as err:
            raise ReplyError("codec", str(err)) from None

    def buffer_values(self, wire: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reply's buffers (every array that is not a parameter)."""
        return {name: wire[name] for name in self.template if name not in self.layers}

    def decode(self, update: ClientUpdate) -> Decoded:
        wire = self.wire(update, list(self.layers))
        grads = {name: self.layer(wire, name) for name in self.layers}
        return Decoded(grads, self.buffer_values(wire), units=len(grads))

    def delta_norms(self, payload: Decoded) -> dict[str, float]:
        return {name: l2_norm(np.asarray(g)) for name, g in payload.grads.items()}  # ‖Δ_c‖ = ‖g_c‖

    def add(self, update: ClientUpdate) -> None:
        self.grads.add(update.payload.grads, update.num_examples)
        self.buffers.add(update.payload.buffers, update.num_examples)
        update.release(keep=replace(update.payload, grads={}, buffers={}))  # units, ages stay

    def partial(self) -> dict[str, np.ndarray]:
        return {
            **{GRAD + name: v for name, v in self.grads.partial().items()},
            **{BUFFER + name: v for name, v in self.buffers.partial().items()},
        }

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        float64 = np.dtype(np.float64)
        return {
            **{GRAD + name: (shape, float64) for name, shape in self.layers.items()},
            **{
                BUFFER + name: (tuple(a.shape), float64)
                for name, a in self.template.items()
                if name not in self.layers
            },
        }

    def merge(self, partial: Mapping[str, np.ndarray], weight: int) -> None:
        for prefix, total in ((GRAD, self.grads), (BUFFER, self.buffers)):
            part = {k[len(prefix) :]: v for k, v in partial.items() if k.startswith(prefix)}
            total.merge(part, weight)

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The weighted means of the pseudo-gradients and of the buffers, in float64."""
        return self.grads.mean(), self.buffers.mean()


@dataclass(frozen=True)
class ServerStepParams(Params):
    """The server's step on the mean pseudo-gradient, and the compressor's error feedback."""

    error_feedback: bool = True
    server_lr: float = 1.0
    server_momentum: float = 0.0

    def check(self) -> None:
        check_flag("error_feedback", self.error_feedback)
        check_number("server_lr", self.server_lr, lambda v: v > 0, "must be a number > 0")
        check_number(
            "server_momentum", self.server_momentum, lambda v: 0 <= v < 1, "must be in [0, 1)"
        )


@dataclass(frozen=True)
class TopKParams(ServerStepParams):
    """Top-k's kept share per layer, beside the server step."""

    topk_ratio: float = 0.1

    def check(self) -> None:
        super().check()
        check_number("topk_ratio", self.topk_ratio, lambda v: 0 < v <= 1, "must be in (0, 1]")

    def warnings(self) -> list[str]:
        if self.topk_ratio < TOPK_BREAK_EVEN:
            return []
        return [
            f"strategy.topk_ratio={self.topk_ratio}: every kept value travels with its int32 "
            f"index, so from {TOPK_BREAK_EVEN} on top-k sends at least the dense layer's bytes; "
            "lower it, or send dense"
        ]


def job_codec(job: ClientJob) -> Codec:
    """The round's compressor as the train job names it: both ends build the same one."""
    ratio = job.params.get("topk_ratio", TopKParams.topk_ratio)
    return make_codec(str(job.params["compressor"]), float(ratio))


class PseudoGradient(FedSparseStrategy):
    """Clients send compressed pseudo-gradients; the server averages them and takes a step."""

    name = "pseudo-gradient"
    params_type = ServerStepParams
    compressor = "none"
    """The compressor the clients apply (each round's job names it; LBGM's is configured)."""
    uses_lbgm = False
    cohort_sum_type = PseudoGradients
    _mean_delta: dict[str, np.ndarray] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_lr = float(self.params.server_lr)
        self.server_momentum = float(self.params.server_momentum)
        self.velocity: dict[str, np.ndarray] = {}
        self.server_round = 0

    @cached_property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """Parameter tensors (pseudo-gradient layers); every other array is a buffer."""
        return parameter_shapes(self.job)

    def round_params(self, server_round: int) -> dict[str, ConfigScalar]:
        return {"compressor": self.compressor, "lbgm": self.uses_lbgm}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.server_round = server_round  # the version of the LBGs sent in this round
        return super().configure_train(server_round, arrays, config, grid)

    # --------------------------------------------------------------- aggregation
    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        means, buffer_means = self.running.result()
        buffers = cast_like(buffer_means, to_numpy_dict(self.global_arrays))
        self._mean_delta = {name: -mean for name, mean in means.items()}  # Δ_c = −g_c
        new: dict[str, np.ndarray] = {}
        for name, array in self.global_arrays.items():
            if name not in self.layers:
                new[name] = buffers[name]
                continue
            mean = means[name]
            if self.server_momentum:
                mean += self.server_momentum * self.velocity.get(name, 0.0)
                self.velocity[name] = mean
            theta = to_numpy(array)
            new[name] = (theta - self.server_lr * mean).astype(theta.dtype)
        return to_array_record(new)

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity/{name}": v for name, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = {
            k.removeprefix("velocity/"): np.asarray(v)
            for k, v in state.items()
            if k.startswith("velocity/")
        }


class TopK(PseudoGradient):
    """Top-k sparsified pseudo-gradients with error feedback (baseline)."""

    name = "topk"
    params_type = TopKParams
    compressor = "topk"


class SignSGD(PseudoGradient):
    """Scaled-sign pseudo-gradients (1 bit per entry + one scale per layer), error feedback."""

    name = "signsgd"
    compressor = "sign"
